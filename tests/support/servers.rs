//! Real servers for the remote, on 127.0.0.1, each started by the test that needs it with a config,
//! keys and logs of its own under the world's root, and killed (with its process group) on drop:
//! OpenSSH's `sshd` serving the world's repositories to `root` by public key, and `lighttpd` running
//! `git http-backend` (smart HTTP) behind basic auth.
//!
//! A test that needs a server the host lacks is skipped with a printed reason (`.ci/run` installs
//! both, `openssh-server` and `lighttpd`); any other failure to start one fails the test.

use std::fs;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::git::{git_command, kill_group};
use super::wait::{free_port, wait_until};
use super::world::World;

const SSHD: &str = "/usr/sbin/sshd";
const LIGHTTPD: &str = "/usr/sbin/lighttpd";

/// Starts a server on a free port (a few ports are tried, as one may be taken meanwhile); `None`
/// when none came up within the deadline, with its log named in the panic of the caller.
fn start(mut make: impl FnMut(u16) -> Command) -> Option<(Child, u16)> {
    for _ in 0..5 {
        let port = free_port();
        let mut cmd = make(port);
        cmd.stdin(Stdio::null()).process_group(0);
        let mut child = cmd.spawn().expect("spawn the server");
        let mut exited = false;
        let ready = wait_until(Duration::from_secs(10), || {
            exited = child.try_wait().expect("try_wait").is_some();
            exited || TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        if ready && !exited {
            return Some((child, port));
        }
        kill_group(&mut child);
    }
    None
}

/// Whether `program` is installed; prints why the test is skipped when it is not.
fn installed(program: &str, package: &str, test: &str) -> bool {
    if Path::new(program).exists() {
        return true;
    }
    eprintln!("skipping {test}: `{program}` is not installed (Debian package `{package}`)");
    false
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A key pair made with `ssh-keygen` (no passphrase) at `path` and `path.pub`.
pub fn ssh_keygen(path: &Path) {
    run(Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "git-dispatch-test",
            "-f",
        ])
        .arg(path));
}

/// OpenSSH's `sshd` on 127.0.0.1, letting in `root` with [`Sshd::key`] only, its own host key.
pub struct Sshd {
    child: Child,
    pub port: u16,
    /// The client's private key that `authorized_keys` lists.
    pub key: PathBuf,
    /// Another private key, not authorized.
    pub wrong_key: PathBuf,
    /// The `known_hosts` line of the server's host key (`[127.0.0.1]:PORT ssh-ed25519 ...`).
    pub known_host: String,
    dir: PathBuf,
}

impl Sshd {
    /// `None` (with a printed reason) when `sshd` is not installed.
    pub fn serve(world: &World, test: &str) -> Option<Sshd> {
        if !installed(SSHD, "openssh-server", test) {
            return None;
        }
        let dir = world.root.join("sshd");
        fs::create_dir_all(&dir).expect("create the sshd folder");
        // sshd checks that its privilege separation folder exists.
        fs::create_dir_all("/run/sshd").expect("create /run/sshd");
        let host_key = dir.join("host_key");
        let key = dir.join("client_key");
        let wrong_key = dir.join("wrong_key");
        for k in [&host_key, &key, &wrong_key] {
            ssh_keygen(k);
        }
        fs::copy(key.with_extension("pub"), dir.join("authorized_keys"))
            .expect("write authorized_keys");
        let host_pub = fs::read_to_string(host_key.with_extension("pub")).expect("host key");
        let host_pub: Vec<&str> = host_pub.split_whitespace().take(2).collect();
        let log = dir.join("sshd.log");
        let config = dir.join("sshd_config");
        let (child, port) = start(|port| {
            fs::write(
                &config,
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
                     PidFile none\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n\
                     PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                     PubkeyAuthentication yes\nLogLevel VERBOSE\n\
                     SetEnv PATH=/usr/local/bin:/usr/bin:/bin\n",
                    host_key.display(),
                    dir.join("authorized_keys").display()
                ),
            )
            .expect("write sshd_config");
            let mut cmd = Command::new(SSHD);
            cmd.arg("-D")
                .arg("-f")
                .arg(&config)
                .arg("-E")
                .arg(&log)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            cmd
        })
        .unwrap_or_else(|| panic!("sshd did not start; see {}", log.display()));
        let known_host = format!("[127.0.0.1]:{port} {} {}\n", host_pub[0], host_pub[1]);
        Some(Sshd {
            child,
            port,
            key,
            wrong_key,
            known_host,
            dir,
        })
    }

    /// `ssh://root@127.0.0.1:PORT/<world root>/remote.git`
    pub fn url(&self, world: &World) -> String {
        format!(
            "ssh://root@127.0.0.1:{}{}",
            self.port,
            world.remote.display()
        )
    }

    /// Writes `HOME/.ssh/known_hosts` (the world's `HOME`) with this server's host key: where
    /// libgit2 looks (OpenSSH reads the account's home instead).
    pub fn trust(&self, world: &World) {
        let ssh = world.home.join(".ssh");
        fs::create_dir_all(&ssh).expect("create HOME/.ssh");
        fs::write(ssh.join("known_hosts"), &self.known_host).expect("write known_hosts");
    }

    /// A `known_hosts` file of this server alone, outside any home, for OpenSSH's `-o
    /// UserKnownHostsFile`.
    pub fn known_hosts_file(&self) -> PathBuf {
        let path = self.dir.join("known_hosts");
        fs::write(&path, &self.known_host).expect("write known_hosts");
        path
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

/// `lighttpd` serving the world's root over smart HTTP (`git http-backend` as CGI), every URL
/// behind basic auth for [`Http::USER`] / [`Http::PASSWORD`]; pushes are allowed (http-backend
/// takes them from an authenticated user).
pub struct Http {
    child: Option<Child>,
    pub port: u16,
}

impl Http {
    pub const USER: &str = "alice";
    pub const PASSWORD: &str = "s3cret-Pa55word";

    /// `None` (with a printed reason) when `lighttpd` is not installed.
    pub fn serve(world: &World, test: &str) -> Option<Http> {
        if !installed(LIGHTTPD, "lighttpd", test) {
            return None;
        }
        let dir = world.root.join("http");
        fs::create_dir_all(&dir).expect("create the http folder");
        let users = dir.join("users");
        fs::write(&users, format!("{}:{}\n", Self::USER, Self::PASSWORD)).expect("write users");
        let mut exec_path = git_command(&world.home, &world.root);
        exec_path.arg("--exec-path");
        let exec_path = String::from_utf8(exec_path.output().expect("git --exec-path").stdout)
            .expect("utf-8 exec path");
        let backend = format!("{}/git-http-backend", exec_path.trim());
        let log = dir.join("error.log");
        let config = dir.join("lighttpd.conf");
        let (child, port) = start(|port| {
            fs::write(
                &config,
                format!(
                    r#"server.modules = ("mod_alias", "mod_auth", "mod_authn_file", "mod_setenv", "mod_cgi")
server.document-root = "{root}"
server.bind = "127.0.0.1"
server.port = {port}
server.errorlog = "{log}"
alias.url = ("/" => "{backend}/")
cgi.assign = ("" => "")
setenv.add-environment = (
  "GIT_PROJECT_ROOT" => "{root}",
  "GIT_HTTP_EXPORT_ALL" => "1",
  "GIT_CONFIG_NOSYSTEM" => "1",
  "HOME" => "{home}",
  "PATH" => "{path}"
)
auth.backend = "plain"
auth.backend.plain.userfile = "{users}"
auth.require = ("/" => ("method" => "basic", "realm" => "git", "require" => "valid-user"))
"#,
                    root = world.root.display(),
                    log = log.display(),
                    home = world.home.display(),
                    path = std::env::var("PATH").unwrap_or_default(),
                    users = users.display(),
                ),
            )
            .expect("write lighttpd.conf");
            let mut cmd = Command::new(LIGHTTPD);
            cmd.arg("-D")
                .arg("-f")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(fs::File::create(dir.join("stderr.log")).expect("create log"));
            cmd
        })
        .unwrap_or_else(|| panic!("lighttpd did not start; see {}", dir.display()));
        Some(Http {
            child: Some(child),
            port,
        })
    }

    /// `http://127.0.0.1:PORT/remote.git`, with `userinfo` (`user:password@`) when given.
    pub fn url(&self, userinfo: &str) -> String {
        format!("http://{userinfo}127.0.0.1:{}/remote.git", self.port)
    }

    /// The URL with the right user name and password in it.
    pub fn url_with_password(&self) -> String {
        self.url(&format!("{}:{}@", Self::USER, Self::PASSWORD))
    }

    /// Stops the server: the remote becomes unreachable.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(&mut child);
        }
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        self.stop();
    }
}
