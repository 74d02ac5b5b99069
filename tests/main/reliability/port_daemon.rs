//! `PortDaemon`: `git daemon` on a port it can be started on again, so a test can take the remote away
//! and bring it back at the same URL. Killed on drop.

use std::fs;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::{World, free_port, git_command, wait_until};

/// `git daemon --enable=receive-pack` serving the world's root on 127.0.0.1, on a port it can be started
/// on again after it was stopped. It runs the `git-daemon` program itself rather than `git daemon` (a
/// wrapper that leaves the real daemon running when it is killed), so killing it closes the port.
/// Killed on drop.
pub(super) struct PortDaemon {
    child: Child,
    pub(super) port: u16,
}

impl PortDaemon {
    /// Serves on a free port (a few tries, as the port may be taken before the daemon binds it).
    pub(super) fn serve(world: &World) -> PortDaemon {
        (1..=5)
            .find_map(|attempt| PortDaemon::start(world, free_port(), &format!("serve-{attempt}")))
            .expect("git daemon did not start")
    }

    /// Serves on 127.0.0.1:`port`; `None` if it is not listening within 10 s.
    pub(super) fn start(world: &World, port: u16, label: &str) -> Option<PortDaemon> {
        let exec_path = {
            let mut cmd = git_command(&world.home, &world.root);
            cmd.arg("--exec-path");
            let out = cmd.output().expect("spawn git --exec-path");
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        let log = fs::File::create(world.root.join(format!("daemon-{port}-{label}.log")))
            .expect("create daemon log");
        // The hermetic environment of `git_command`, for the program itself.
        let hermetic = git_command(&world.home, &world.root);
        let mut cmd = Command::new(Path::new(&exec_path).join("git-daemon"));
        cmd.current_dir(&world.root).env_clear().envs(
            hermetic
                .get_envs()
                .filter_map(|(key, value)| Some((key, value?))),
        );
        cmd.args(["--reuseaddr", "--export-all", "--enable=receive-pack"])
            .arg("--informative-errors")
            .arg(format!("--base-path={}", world.root.display()))
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let mut child = cmd.spawn().expect("spawn git-daemon");
        let mut exited = false;
        let ready = wait_until(Duration::from_secs(10), || {
            exited = child.try_wait().expect("try_wait").is_some();
            exited || TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        if ready && !exited {
            return Some(PortDaemon { child, port });
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// `git://127.0.0.1:<port>/remote.git`
    pub(super) fn url(&self) -> String {
        format!("git://127.0.0.1:{}/remote.git", self.port)
    }
}

impl Drop for PortDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
