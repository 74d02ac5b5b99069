//! Hermetic Git: every `git` the harness runs has a cleared environment (no user or system config, a
//! private `HOME`, fixed identities, commit dates from `EPOCH`), and `GitDaemon` serves a world's
//! remote through a real server (`git daemon --enable=receive-pack` on 127.0.0.1), killed with its
//! process group on drop.

use std::fs;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::run::path_var;
use super::wait::{free_port, wait_until};
use super::world::World;

/// Commit time of the seed commit (2023-11-14T22:13:20Z). Every commit the harness makes is one minute
/// after the previous one, so arrival order is the order of `submit` calls.
pub const EPOCH: i64 = 1_700_000_000;

/// A `git` command with a hermetic environment: no user or system config, a private `HOME`, fixed
/// identities and a fixed date (commits override the date to advance the clock).
pub fn git_command(home: &Path, cwd: &Path) -> Command {
    let mut cmd = Command::new("git");
    let date = format!("{EPOCH} +0000");
    cmd.current_dir(cwd)
        .env_clear()
        .env("PATH", path_var())
        .env("HOME", home)
        .env("LC_ALL", "C")
        .env("TZ", "UTC")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_SYSTEM", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", "Sam Submitter")
        .env("GIT_AUTHOR_EMAIL", "sam@example.test")
        .env("GIT_AUTHOR_DATE", &date)
        .env("GIT_COMMITTER_NAME", "Sam Submitter")
        .env("GIT_COMMITTER_EMAIL", "sam@example.test")
        .env("GIT_COMMITTER_DATE", &date);
    cmd
}

/// `git daemon` serving the world's root on 127.0.0.1 with `receive-pack` enabled, so pushes go through a
/// real server (its atomic ref update rejects a non-fast-forward). Killed on drop.
pub struct GitDaemon {
    child: Child,
    port: u16,
}

impl GitDaemon {
    pub fn serve(world: &World) -> GitDaemon {
        // The port may be taken between `free_port` and the daemon's bind: try a few.
        for attempt in 1..=5 {
            let port = free_port();
            let log = fs::File::create(world.root.join(format!("daemon-{attempt}.log")))
                .expect("create daemon log");
            let mut cmd = git_command(&world.home, &world.root);
            cmd.arg("daemon")
                .args(["--reuseaddr", "--export-all", "--enable=receive-pack"])
                .arg("--informative-errors")
                .arg(format!("--base-path={}", world.root.display()))
                .arg("--listen=127.0.0.1")
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                // `git daemon` starts the real `git-daemon` as a child: a group of their own lets
                // drop kill both, so no daemon outlives its test.
                .process_group(0);
            let mut child = cmd.spawn().expect("spawn git daemon");
            let mut exited = false;
            let ready = wait_until(Duration::from_secs(10), || {
                exited = child.try_wait().expect("try_wait").is_some();
                exited || TcpStream::connect(("127.0.0.1", port)).is_ok()
            });
            if ready && !exited {
                return GitDaemon { child, port };
            }
            kill_group(&mut child);
        }
        panic!(
            "git daemon did not start; see {}/daemon-*.log",
            world.root.display()
        );
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `git://127.0.0.1:<port>/remote.git`
    pub fn url(&self) -> String {
        format!("git://127.0.0.1:{}/remote.git", self.port)
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

/// SIGKILL to the process group `child` leads, then reap it.
pub(super) fn kill_group(child: &mut Child) {
    let pgid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pids fit in i32"));
    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
}

/// A pre-receive hook that refuses every update of a branch ("pushes are frozen for maintenance")
/// and lets the dispatchers' claims and heartbeats under `refs/dispatch/` through: a push of
/// outcomes is refused while requests can still be claimed and run.
pub const BRANCH_FROZEN_HOOK: &str = "#!/bin/sh\nwhile read old new ref; do\n  case \"$ref\" in refs/heads/*) echo 'pushes are frozen for maintenance' >&2; exit 1;; esac\ndone\nexit 0\n";

/// A pre-receive hook that refuses every push, claims included.
pub const ALL_FROZEN_HOOK: &str =
    "#!/bin/sh\necho 'pushes are frozen for maintenance' >&2\nexit 1\n";
