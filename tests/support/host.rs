//! The host the suite runs on: whether it runs as root (the sandbox only switches users then), what
//! `id` says, and the `sleep` processes a run may leave behind (`Strays`), killed on drop so a failing
//! test leaves nothing running.

use std::fs;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::run::{checked, path_var};
use super::wait::wait_until;

/// Whether this test process runs with effective uid 0 (the `Uid:` line of `/proc/self/status`: real,
/// effective, saved, filesystem). The sandbox only switches users when the dispatcher is root.
pub fn running_as_root() -> bool {
    let status = fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .is_some_and(|euid| euid == "0")
}

/// For a test that means nothing unless the dispatcher runs as root: true when it may go on; otherwise
/// says why it stops and returns false. (`sandbox_tests_ran_as_root_in_ci` keeps such skips out of CI.)
#[must_use]
pub fn root_or_skip(test: &str) -> bool {
    let root = running_as_root();
    if !root {
        eprintln!(
            "skipped `{test}`: it needs root (the dispatcher only switches handlers to another user when it \
             runs as root); run the suite as root to exercise it"
        );
    }
    root
}

/// The trimmed output of `id ARGS...` (e.g. `["-u", "nobody"]`), to compare with what a handler prints.
pub fn id(args: &[&str]) -> String {
    let mut cmd = Command::new("id");
    cmd.env_clear().env("PATH", path_var()).args(args);
    checked(cmd)
}

/// `sleep` processes a run may leave behind, told apart by their argument: a whole number of seconds
/// (hours: never done by the time a test looks) with this test process's pid as the fraction, so
/// neither parallel tests nor another test run on the same host share it. Only live processes count
/// (zombies are dead). Dropping it SIGKILLs them, so a failing test does not leave them on the host.
pub struct Strays {
    /// `sleep SECONDS.PID`, as a handler script writes it.
    pub command: String,
    /// The same as `/proc/PID/cmdline` shows it.
    cmdline: Vec<u8>,
}

impl Strays {
    /// A `sleep` of `seconds` (and a fraction) whose command line is this instance's alone: tests
    /// run in parallel in one process, and must not find each other's strays.
    pub fn sleeping(seconds: u32) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let arg = format!("{seconds}.{}{n:04}", std::process::id());
        Self {
            command: format!("sleep {arg}"),
            cmdline: format!("sleep\0{arg}\0").into_bytes(),
        }
    }

    pub fn pids(&self) -> Vec<i32> {
        let Ok(procs) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        procs
            .flatten()
            .filter_map(|entry| {
                let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
                let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
                // `pid (comm) state ...`: the last `)` ends comm.
                let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
                let alive = state != "Z" && state != "X";
                (alive && fs::read(entry.path().join("cmdline")).ok()? == self.cmdline)
                    .then_some(pid)
            })
            .collect()
    }

    /// Panics if one is still alive. The run has ended, so anything killed was killed before: SIGKILL
    /// is delivered at once, but a loaded machine may take a moment to schedule the exit, so half a
    /// second is allowed (against a sleep of hours).
    #[track_caller]
    pub fn assert_gone(&self, what: &str) {
        let mut left = Vec::new();
        let gone = wait_until(Duration::from_millis(500), || {
            left = self.pids();
            left.is_empty()
        });
        assert!(
            gone,
            "{what}: `{}` still runs after the dispatcher exited (pids {left:?})",
            self.command
        );
    }
}

impl Drop for Strays {
    fn drop(&mut self) {
        for pid in self.pids() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
