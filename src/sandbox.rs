//! Runs one handler: its own process group, a cleared environment, a fresh working directory, resource
//! limits, `no_new_privs`, death with the dispatcher, an unprivileged user where the dispatcher is
//! root, and a timeout that sends SIGTERM to the whole group and SIGKILL after a grace period.
//!
//! Standard output and error share one pipe, so the log interleaves them in the order they were
//! written. When the handler exits, whatever is left of its process group is killed before the
//! outcome is recorded.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::resource::{Resource, setrlimit};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Gid, Pid, Uid};
use thiserror::Error;

use crate::capture::{CappedLog, LogSummary};
use crate::secrets::{RedactStream, Redactor};

/// How long the output pipe is drained after the handler's group is gone, in case an escaped
/// descendant still holds it open.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(1);

#[derive(Debug, Error)]
pub(crate) enum SandboxError {
    #[error("could not start handler `{program}`: {source}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("log `{path}`: {source}")]
    Log {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The user a handler runs as.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub uid: Uid,
    pub gid: Gid,
    pub groups: Vec<Gid>,
}

/// Resource limits applied in the child before it executes the handler.
#[derive(Debug, Clone, Default)]
pub(crate) struct Limits {
    /// `RLIMIT_AS`, bytes.
    pub address_space: Option<u64>,
    /// `RLIMIT_NPROC`: processes of the handler's user.
    pub processes: Option<u64>,
    /// `RLIMIT_NOFILE`.
    pub open_files: Option<u64>,
    /// `RLIMIT_FSIZE`, bytes.
    pub file_size: Option<u64>,
}

/// The handler process of a run while it lives, and since when: what the daemon's watchdog looks at.
#[derive(Debug, Default)]
pub(crate) struct InFlight(std::sync::Mutex<Option<(u32, Instant)>>);

impl InFlight {
    pub(crate) fn set(&self, value: Option<(u32, Instant)>) {
        *self.0.lock().expect("no thread panics holding it") = value;
    }

    /// The handler's pid and when it started, while one runs.
    pub(crate) fn get(&self) -> Option<(u32, Instant)> {
        *self.0.lock().expect("no thread panics holding it")
    }
}

/// Everything one run needs.
pub(crate) struct Job<'a> {
    pub program: &'a Path,
    pub args: Vec<OsString>,
    pub stdin: Vec<u8>,
    pub env: Vec<(String, String)>,
    pub cwd: &'a Path,
    pub timeout: Duration,
    pub grace: Duration,
    pub limits: Limits,
    /// `None`: run as the dispatcher's own user.
    pub user: Option<Identity>,
    pub log_path: &'a Path,
    pub log_limit: u64,
    /// Applied to the output before any byte of it is written.
    pub redactor: Redactor,
    /// A `NAME=value` of the handler's environment unique to this run (`DISPATCH_ID`): it marks the
    /// descendants that escape the process group (and are re-parented to the dispatcher, a child
    /// subreaper), so they can be found and killed.
    pub marker: (String, String),
    /// Told the handler's pid when it starts (the runner clears it while it waits to retry).
    pub in_flight: &'a InFlight,
}

/// How the handler's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Termination {
    Exited(i32),
    Signaled(i32),
}

/// The result of one run.
#[derive(Debug, Clone)]
pub(crate) struct Finished {
    pub termination: Termination,
    pub timed_out: bool,
    pub log: LogSummary,
    pub started: SystemTime,
    pub duration: Duration,
}

/// Runs `job` to its end. An error means the handler never ran (or its log could not be written).
pub(crate) fn run(job: Job<'_>) -> Result<Finished, SandboxError> {
    let log_err = |source| SandboxError::Log {
        path: job.log_path.to_owned(),
        source,
    };
    let mut log = CappedLog::create(job.log_path, job.log_limit).map_err(log_err)?;
    let (reader, writer) = io::pipe().map_err(log_err)?;
    let mut command = Command::new(job.program);
    command
        .args(&job.args)
        .env_clear()
        .envs(job.env.iter().map(|(k, v)| (k, v)))
        .current_dir(job.cwd)
        .stdin(Stdio::piped())
        .stdout(writer.try_clone().map_err(log_err)?)
        .stderr(writer)
        .process_group(0);
    let limits = job.limits.clone();
    let user = job.user.clone();
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe system calls
    // (setrlimit, setgroups, setgid, setuid, prctl, getppid); everything it reads was allocated before
    // the fork.
    unsafe {
        command.pre_exec(move || confine(&limits, user.as_ref(), parent));
    }
    let started = SystemTime::now();
    let clock = Instant::now();
    let spawned = command.spawn();
    // The write ends must be closed here, or the pipe never reaches end-of-file.
    drop(command);
    let mut child = spawned.map_err(|source| SandboxError::Spawn {
        program: job.program.to_owned(),
        source,
    })?;
    let pgid = Pid::from_raw(i32::try_from(child.id()).expect("pids fit in i32"));
    job.in_flight.set(Some((child.id(), clock)));
    crate::failpoint::hit("running");

    let stdin = child.stdin.take();
    let input = job.stdin;
    let feeder = thread::spawn(move || {
        if let Some(mut stdin) = stdin {
            // A handler that does not read its input closes the pipe early: not an error.
            let _ = stdin.write_all(&input);
        }
    });
    let (drain_tx, drain_rx) = mpsc::channel::<Instant>();
    let redactor = job.redactor;
    let drainer = thread::spawn(move || {
        drain(reader, &mut log, &redactor, &drain_rx).and_then(|()| log.finish())
    });
    let (exit_tx, exit_rx) = mpsc::channel();
    let waiter = thread::spawn(move || {
        let status = child.wait();
        let _ = exit_tx.send(status);
    });

    let mut timed_out = false;
    let status = match exit_rx.recv_timeout(job.timeout) {
        Ok(status) => status,
        Err(_) => {
            timed_out = true;
            let _ = killpg(pgid, Signal::SIGTERM);
            match exit_rx.recv_timeout(job.grace) {
                Ok(status) => status,
                Err(_) => {
                    let _ = killpg(pgid, Signal::SIGKILL);
                    exit_rx.recv().expect("the waiter thread always sends")
                }
            }
        }
    };
    let duration = clock.elapsed();
    // Whatever the handler left behind goes with it: its group, and descendants that left the group
    // but were re-parented to the dispatcher (a child subreaper).
    let _ = killpg(pgid, Signal::SIGKILL);
    kill_escapees(&job.marker);
    let _ = drain_tx.send(Instant::now() + DRAIN_AFTER_EXIT);
    let _ = waiter.join();
    let _ = feeder.join();
    let summary = drainer
        .join()
        .expect("the drain thread does not panic")
        .map_err(log_err)?;
    let status = status.map_err(log_err)?;
    let termination = match (status.code(), status.signal()) {
        (Some(code), _) => Termination::Exited(code),
        (None, Some(signal)) => Termination::Signaled(signal),
        (None, None) => Termination::Exited(-1),
    };
    Ok(Finished {
        termination,
        timed_out,
        log: summary,
        started,
        duration,
    })
}

/// Copies the pipe into the log until end-of-file, or until the deadline sent on `stop` passes.
/// Secrets are redacted before anything reaches the log.
fn drain(
    mut reader: io::PipeReader,
    log: &mut CappedLog,
    redactor: &Redactor,
    stop: &mpsc::Receiver<Instant>,
) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut redacted = Vec::with_capacity(buf.len());
    let mut stream = redactor.stream();
    let mut deadline: Option<Instant> = None;
    loop {
        if deadline.is_none() {
            deadline = stop.try_recv().ok();
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return flush(&mut stream, &mut redacted, log);
        }
        let ready = {
            let mut fds = [PollFd::new(reader.as_fd(), PollFlags::POLLIN)];
            poll(&mut fds, PollTimeout::from(100u16)).map_err(io::Error::from)?
        };
        if ready == 0 {
            continue;
        }
        match reader.read(&mut buf) {
            Ok(0) => return flush(&mut stream, &mut redacted, log),
            Ok(n) => {
                redacted.clear();
                stream.feed(&buf[..n], &mut redacted);
                log.write(&redacted)?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Writes what the redactor held back; `scratch` is emptied first (it holds the previous chunk).
fn flush(
    stream: &mut RedactStream<'_>,
    scratch: &mut Vec<u8>,
    log: &mut CappedLog,
) -> io::Result<()> {
    scratch.clear();
    stream.finish(scratch);
    log.write(scratch)
}

/// In the child, between fork and exec.
fn confine(limits: &Limits, user: Option<&Identity>, parent: Pid) -> io::Result<()> {
    let set = |resource, value: Option<u64>| match value {
        Some(v) => setrlimit(resource, v, v).map_err(io::Error::from),
        None => Ok(()),
    };
    set(Resource::RLIMIT_CORE, Some(0))?;
    set(Resource::RLIMIT_AS, limits.address_space)?;
    set(Resource::RLIMIT_NPROC, limits.processes)?;
    set(Resource::RLIMIT_NOFILE, limits.open_files)?;
    set(Resource::RLIMIT_FSIZE, limits.file_size)?;
    if let Some(user) = user {
        nix::unistd::setgroups(&user.groups)?;
        nix::unistd::setgid(user.gid)?;
        nix::unistd::setuid(user.uid)?;
    }
    nix::sys::prctl::set_no_new_privs()?;
    // Set after the user change, which clears it. If the dispatcher died before this point, the signal
    // would never come: leave at once instead.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
    if nix::unistd::getppid() != parent {
        return Err(io::Error::other("the dispatcher exited"));
    }
    Ok(())
}

/// Kills the processes re-parented to the dispatcher whose environment carries `marker`, and reaps them.
/// Only the dispatcher's own children are looked at (`/proc/self/task/*/children`), not every process.
/// Killing one re-parents its own children to the dispatcher, so the search repeats until a pass
/// finds nothing (a bounded number of times: a chain deeper than that is left to the process group
/// kill and PR_SET_PDEATHSIG).
fn kill_escapees(marker: &(String, String)) {
    let needle = format!("\0{}={}\0", marker.0, marker.1).into_bytes();
    for _ in 0..16 {
        let mut killed = 0;
        for pid in dispatcher_children() {
            let mut environ = vec![0u8];
            environ.extend(std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default());
            if environ
                .windows(needle.len())
                .any(|w| w == needle.as_slice())
            {
                let pid = Pid::from_raw(pid);
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(pid, None);
                killed += 1;
            }
        }
        if killed == 0 {
            return;
        }
    }
}

/// The children of every thread of the dispatcher.
fn dispatcher_children() -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|pid| pid.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}
