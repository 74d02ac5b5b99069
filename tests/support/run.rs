//! Running processes: the binary under test (`BIN`), the environment every child gets, a command run to
//! completion (`checked`), and a dispatcher started in the background (`Background`) until it ends as a
//! `RunOutput` (exit code, signal, stdout, stderr, time). A background process never outlives its test:
//! it is killed on drop, and waiting for it has a deadline.

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::wait::wait_until;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_git-dispatch");

/// How long one `run --until-empty` may take before the test gives up and kills it.
pub const RUN_DEADLINE: Duration = Duration::from_secs(40);

/// The `PATH` every child gets: the test runner's own.
pub(super) fn path_var() -> OsString {
    std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into())
}

/// Runs a command to completion and returns its trimmed stdout; panics with its stderr on failure.
pub(super) fn checked(mut cmd: Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
}

/// What a finished dispatcher process left: exit code (`None` if killed by a signal), output, time.
pub struct RunOutput {
    pub code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl RunOutput {
    /// Panics, showing the output, unless the process exited with `code`.
    #[track_caller]
    pub fn assert_exit(&self, code: i32) -> &Self {
        assert_eq!(self.code, Some(code), "unexpected exit status\n{self}");
        self
    }

    /// stdout and stderr together, for messages that may go to either.
    pub fn all_output(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl fmt::Display for RunOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit code: {:?}, signal: {:?}, after {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.signal, self.elapsed, self.stdout, self.stderr
        )
    }
}

/// A process started by `World::spawn`; killed (SIGKILL) on drop if the test did not reap it.
pub struct Background {
    /// `None` once reaped.
    child: Option<Child>,
    command: String,
    stdout: PathBuf,
    stderr: PathBuf,
    started: Instant,
}

impl Background {
    /// Starts `cmd` with no stdin, its stdout and stderr going to the files `stdout` and `stderr`.
    pub(super) fn start(mut cmd: Command, stdout: PathBuf, stderr: PathBuf) -> Self {
        cmd.stdin(Stdio::null())
            .stdout(fs::File::create(&stdout).expect("create stdout file"))
            .stderr(fs::File::create(&stderr).expect("create stderr file"));
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        Background {
            child: Some(child),
            command: format!("{cmd:?}"),
            stdout,
            stderr,
            started: Instant::now(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("not yet reaped").id()
    }

    /// Sends SIGTERM (through `kill -TERM`, as an operator would).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .env_clear()
            .env("PATH", path_var())
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("spawn kill");
        assert!(status.success(), "kill -TERM {} failed", self.pid());
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        let child = self.child.as_mut().expect("not yet reaped");
        child.try_wait().expect("try_wait").is_none()
    }

    /// Waits until its output holds `needle`; `false` when it exited or `timeout` passed first.
    pub fn wait_for_output(&mut self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || {
            self.output_so_far().contains(needle) || !self.running()
        }) && self.running()
            && self.output_so_far().contains(needle)
    }

    /// Its output so far, for failure messages.
    pub fn output_so_far(&self) -> String {
        format!(
            "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command,
            fs::read_to_string(&self.stdout).unwrap_or_default(),
            fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }

    /// Waits for exit within `timeout`; on timeout kills it and panics with its output.
    pub fn wait(mut self, timeout: Duration) -> RunOutput {
        let mut child = self.child.take().expect("not yet reaped");
        let mut status = None;
        let exited = wait_until(timeout, || {
            status = child.try_wait().expect("try_wait");
            status.is_some()
        });
        if !exited {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "still running after {timeout:?}, killed: {}",
                self.output_so_far()
            );
        }
        let status = status.expect("exited");
        RunOutput {
            code: status.code(),
            signal: std::os::unix::process::ExitStatusExt::signal(&status),
            stdout: fs::read_to_string(&self.stdout).unwrap_or_default(),
            stderr: fs::read_to_string(&self.stderr).unwrap_or_default(),
            elapsed: self.started.elapsed(),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
