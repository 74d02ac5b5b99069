//! Runs one handler: its own process group, a cleared environment, a fresh working directory, resource
//! limits, `no_new_privs`, death with the dispatcher, an unprivileged user where the dispatcher is
//! root, and a timeout that sends SIGTERM to the whole group and SIGKILL after a grace period.
//!
//! Standard output and error share one pipe, so the log interleaves them in the order they were
//! written. When the handler exits, whatever is left of its process group is killed before the
//! outcome is recorded.

use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;
use thiserror::Error;

use crate::run::capture::{CappedLog, LogSummary};
use crate::run::cgroup::{CgroupLimits, RunCgroup, Usage};
use crate::run::escapees::{HANDLERS, kill_escapees};
pub(crate) use crate::run::in_flight::InFlight;
use crate::run::isolate::{Bind, Isolation, Mounts};
use crate::run::spawn::{self, Identity, Limits, Spec};
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
    /// [`Job::admit`] said no: the handler never started.
    #[error("the run was not admitted")]
    NotAdmitted,
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
    /// `address_space` gives way to the cgroup's memory limit where there is one.
    pub limits: Limits,
    /// Applied where the run gets a cgroup (an isolated run on a host that has them).
    pub cgroup: CgroupLimits,
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
    /// Namespaces of its own, showing these paths of the host's (see [`crate::run::isolate`]);
    /// `None`: the host's.
    pub view: Option<(&'a Isolation, Vec<Bind<'a>>)>,
    /// Called on a thread of its own while the handler's process is made, confined, and waits to
    /// execute the handler: whether it may (the run has its slot, and is marked started). The
    /// handler executes only once this said yes; when it says no, it never does. Called exactly
    /// once, also when the run fails before its process is made: the run takes its turn for the
    /// slot either way, or the runs after it would wait for that turn.
    pub admit: &'a (dyn Fn() -> bool + Sync),
    /// Called once the handler has started.
    pub on_start: &'a dyn Fn(),
    /// Called once the handler and every process it left are gone, with how it ended and whether
    /// it timed out: before its output is drained to the end and its usage read, so that the run's
    /// slot may pass to the next run meanwhile.
    pub on_exit: &'a dyn Fn(Termination, bool),
}

impl Job<'_> {
    /// An I/O error of the run's log, named by its path.
    fn log_error(&self) -> impl Fn(io::Error) -> SandboxError + Copy + '_ {
        |source| SandboxError::Log {
            path: self.log_path.to_owned(),
            source,
        }
    }

    /// An error that kept the handler from starting, named by its program.
    fn spawn_error(&self) -> impl Fn(io::Error) -> SandboxError + Copy + '_ {
        |source| SandboxError::Spawn {
            program: self.program.to_owned(),
            source,
        }
    }
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
    /// What it used, where it ran in a cgroup of its own.
    pub usage: Option<Usage>,
}

/// Runs `job` to its end. An error means the handler never ran (or its log could not be written).
///
/// One thread does it all: it feeds standard input, copies the output into the log and watches the
/// handler's exit (a pidfd) and its deadlines in one `poll` loop.
pub(crate) fn run(job: Job<'_>) -> Result<Finished, SandboxError> {
    let (log_err, spawn_err) = (job.log_error(), job.spawn_error());
    let Setup {
        mut log,
        output: (reader, writer),
        input: (stdin_reader, stdin_writer),
        limits,
        mounts,
        cgroup,
        gate: (gate, mut opener),
    } = match set_up(&job) {
        Ok(setup) => setup,
        Err(e) => {
            return Err(if (job.admit)() {
                e
            } else {
                SandboxError::NotAdmitted
            });
        }
    };
    let args: Vec<&OsStr> = job.args.iter().map(OsString::as_os_str).collect();
    let procs = cgroup.as_ref().map(|c| c.procs()).unwrap_or_default();
    // This thread makes the handler's process, which waits at the gate (this thread with it: the
    // clone returns once it executed or exited) while the run is admitted on a thread of its own.
    let (spawned, admitted) = std::thread::scope(|scope| {
        // The gate's end moves to the thread: should `admit` panic, it is closed, and the child
        // reads no 1 and exits instead of waiting for good.
        let admitting = scope.spawn(move || {
            let admitted = (job.admit)();
            // A child that failed before the gate has closed its end: nothing to tell it then.
            let _ = opener.write_all(&[u8::from(admitted)]);
            admitted
        });
        let spawned = spawn::spawn(&Spec {
            program: job.program,
            args: &args,
            env: &job.env,
            cwd: job.cwd,
            stdin: stdin_reader.as_fd(),
            output: writer.as_fd(),
            limits: &limits,
            user: job.user.as_ref(),
            gate: Some(gate.as_fd()),
            mounts: mounts.as_ref(),
            cgroups: &procs,
        });
        (spawned, admitting.join().unwrap_or(false))
    });
    let started = SystemTime::now();
    let clock = Instant::now();
    // The child's ends must be closed here, or the pipes never reach end-of-file.
    drop((stdin_reader, writer));
    if !admitted {
        return Err(SandboxError::NotAdmitted);
    }
    let child = spawned.map_err(spawn_err)?;
    HANDLERS
        .lock()
        .expect("no thread panics holding it")
        .insert(child.pid.as_raw());
    // Whatever way this returns, the handler's group does not outlive the run.
    let mut child = Reaped {
        child,
        reaped: false,
    };
    let pid = u32::try_from(child.pid().as_raw()).expect("pids are positive");
    job.in_flight.set_isolated(mounts.is_some());
    job.in_flight.set(Some((pid, clock)));
    (job.on_start)();
    crate::failpoint::hit("running");

    let mut input = (!job.stdin.is_empty()).then_some((stdin_writer, 0));
    if let Some((writer, _)) = &input {
        set_nonblocking(writer.as_fd()).map_err(log_err)?;
    }
    let mut output = Some(Output {
        reader,
        stream: job.redactor.stream(),
        buf: vec![0u8; 64 * 1024],
        redacted: Vec::new(),
    });
    let mut log_error = None;
    let mut status = None;
    let mut duration = Duration::ZERO;
    let mut timed_out = false;
    // The next escalation while the handler runs: SIGTERM at the timeout, SIGKILL after the grace.
    let mut escalate_at = clock.checked_add(job.timeout);
    // Once the handler has exited: how long the pipe is still drained.
    let mut drain_until = None;
    // When the claim's deadline stopped the handler: its SIGKILL, once due.
    let mut fence_kill_at: Option<Instant> = None;
    let isolated = mounts.is_some();
    // Whether a SIGKILL stood in for a SIGTERM the handler would have died of (see `terminate`).
    let mut killed_for_term = false;
    loop {
        let now = Instant::now();
        if status.is_none() {
            match fence_kill_at {
                None if job.in_flight.fence_due(now) => {
                    killed_for_term |= terminate(child.pid(), isolated);
                    let kill_after = job.in_flight.deadline().map_or(job.grace, |(_, k)| k);
                    fence_kill_at = Some(now + kill_after.min(job.grace));
                }
                Some(at) if now >= at => {
                    let _ = killpg(child.pid(), Signal::SIGKILL);
                }
                _ => {}
            }
        }
        if let Some(at) = escalate_at.filter(|at| now >= *at) {
            if timed_out {
                let _ = killpg(child.pid(), Signal::SIGKILL);
                escalate_at = None;
            } else {
                timed_out = true;
                killed_for_term |= terminate(child.pid(), isolated);
                escalate_at = at.max(now).checked_add(job.grace);
            }
        }
        if drain_until.is_some_and(|until| output.is_none() || now >= until) {
            break;
        }
        let fence_at = match fence_kill_at {
            None => job.in_flight.deadline().map(|(at, _)| at),
            Some(at) => Some(at).filter(|at| now < *at),
        };
        let wake = drain_until.or_else(|| escalate_at.into_iter().chain(fence_at).min());
        let ready = wait_ready(
            status.is_none().then(|| child.child.pidfd.as_fd()),
            output.as_ref().map(|o| o.reader.as_fd()),
            input.as_ref().map(|(w, _)| w.as_fd()),
            wake.map(|at| at.saturating_duration_since(now)),
        )
        .map_err(log_err)?;
        if ready.exited {
            duration = clock.elapsed();
            // Whatever the handler left behind goes with it: its group (killed before the reap,
            // while the exited leader still holds the group's id), and descendants that left the
            // group but were re-parented to the dispatcher (a child subreaper).
            let _ = killpg(child.pid(), Signal::SIGKILL);
            let ended = termination(child.reap().map_err(log_err)?, killed_for_term);
            status = Some(ended);
            escalate_at = None;
            input = None;
            // An isolated handler is the init of its PID namespace: when it exits, the kernel kills
            // every process in the namespace, and none can leave it.
            if !isolated {
                kill_escapees(&job.marker);
            }
            (job.on_exit)(ended, timed_out);
            drain_until = Some(Instant::now() + DRAIN_AFTER_EXIT);
        }
        if let Some(out) = output.as_mut().filter(|_| ready.readable) {
            match out.copy(&mut log) {
                Ok(true) => {}
                Ok(false) => output = None,
                Err(e) => {
                    // Stop reading; the handler still runs to its end and is waited for.
                    log_error.get_or_insert(e);
                    output = None;
                }
            }
        }
        if let Some((writer, sent)) = input.as_mut().filter(|_| ready.writable) {
            match (&*writer).write(&job.stdin[*sent..]) {
                Ok(n) if *sent + n < job.stdin.len() => *sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // All of it written, or a handler that closed its input early: not an error.
                _ => input = None,
            }
        }
    }
    if let Some(out) = output.take() {
        out.finish(&mut log).map_err(log_err)?;
    }
    if let Some(e) = log_error {
        return Err(log_err(e));
    }
    let summary = log.finish().map_err(log_err)?;
    let usage = cgroup.as_ref().map(|c| c.usage());
    Ok(Finished {
        termination: status.expect("the loop ends only after the handler exited"),
        timed_out,
        log: summary,
        started,
        duration,
        usage,
    })
}

/// How the handler ended, from its wait status; a SIGKILL that stood in for a SIGTERM (see
/// [`terminate`]) counts as the SIGTERM.
fn termination(status: WaitStatus, killed_for_term: bool) -> Termination {
    match status {
        WaitStatus::Exited(_, code) => Termination::Exited(code),
        WaitStatus::Signaled(_, Signal::SIGKILL, _) if killed_for_term => {
            Termination::Signaled(Signal::SIGTERM as i32)
        }
        WaitStatus::Signaled(_, signal, _) => Termination::Signaled(signal as i32),
        _ => Termination::Exited(-1),
    }
}

/// What a run needs before its handler's process is made: the log, the output and input pipes,
/// the limits, the view and the cgroup, and the gate.
struct Setup<'j> {
    log: CappedLog,
    output: (io::PipeReader, io::PipeWriter),
    input: (io::PipeReader, io::PipeWriter),
    limits: Limits,
    mounts: Option<Mounts<'j>>,
    cgroup: Option<RunCgroup<'j>>,
    gate: (io::PipeReader, io::PipeWriter),
}

fn set_up<'j>(job: &'j Job<'_>) -> Result<Setup<'j>, SandboxError> {
    let (log_err, spawn_err) = (job.log_error(), job.spawn_error());
    let log = CappedLog::create(job.log_path, job.log_limit).map_err(log_err)?;
    let output = io::pipe().map_err(log_err)?;
    let input = io::pipe().map_err(log_err)?;
    let mut limits = job.limits.clone();
    let (mounts, cgroup) = match &job.view {
        Some((isolation, binds)) => (
            isolation.prepare(binds).map_err(spawn_err)?,
            match isolation.cgroups() {
                Ok(cgroups) => {
                    if cgroups.limits_memory() {
                        limits.address_space = None;
                    }
                    Some(cgroups.run(&job.cgroup).map_err(spawn_err)?)
                }
                Err(_) => None,
            },
        ),
        None => (None, None),
    };
    Ok(Setup {
        log,
        output,
        input,
        limits,
        mounts,
        cgroup,
        gate: io::pipe().map_err(spawn_err)?,
    })
}

/// Sends SIGTERM to the handler's process group. An isolated handler is the init of its PID
/// namespace, which the kernel gives only the signals it has a handler for: one that leaves SIGTERM
/// at its default action (to terminate) is killed with SIGKILL instead, which ends it as SIGTERM
/// would have (and with it its namespace); one that ignores SIGTERM is left to the grace's SIGKILL,
/// as it would be outside a namespace. Whether SIGKILL stood in for SIGTERM.
pub(crate) fn terminate(pid: Pid, isolated: bool) -> bool {
    let _ = killpg(pid, Signal::SIGTERM);
    if !isolated || term_handled(pid) {
        return false;
    }
    nix::sys::signal::kill(pid, Signal::SIGKILL).is_ok()
}

/// Whether `pid` catches or ignores SIGTERM (`SigCgt` and `SigIgn` of its status); `true` when
/// that cannot be read (it is gone).
fn term_handled(pid: Pid) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return true;
    };
    let bit = 1u64 << (Signal::SIGTERM as u32 - 1);
    let mask = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    (mask("SigCgt:") | mask("SigIgn:")) & bit != 0
}

/// The handler's output on its way to the log, redacted before any byte of it is written.
struct Output<'r> {
    reader: io::PipeReader,
    stream: RedactStream<'r>,
    buf: Vec<u8>,
    redacted: Vec<u8>,
}

impl Output<'_> {
    /// Copies what the pipe holds; `false` at end-of-file, once what the redactor held back is
    /// written.
    fn copy(&mut self, log: &mut CappedLog) -> io::Result<bool> {
        match self.reader.read(&mut self.buf) {
            Ok(0) => {
                self.flush(log)?;
                Ok(false)
            }
            Ok(n) => {
                self.redacted.clear();
                self.stream.feed(&self.buf[..n], &mut self.redacted);
                log.write(&self.redacted)?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Writes what the redactor held back, when the pipe is given up before its end.
    fn finish(mut self, log: &mut CappedLog) -> io::Result<()> {
        self.flush(log)
    }

    fn flush(&mut self, log: &mut CappedLog) -> io::Result<()> {
        self.redacted.clear();
        self.stream.finish(&mut self.redacted);
        log.write(&self.redacted)
    }
}

/// What `poll` found ready.
struct Ready {
    exited: bool,
    readable: bool,
    writable: bool,
}

/// Waits until the handler exits, output arrives, input can be written or `timeout` passes.
fn wait_ready(
    exit: Option<BorrowedFd<'_>>,
    output: Option<BorrowedFd<'_>>,
    input: Option<BorrowedFd<'_>>,
    timeout: Option<Duration>,
) -> io::Result<Ready> {
    let watched = [
        (exit, PollFlags::POLLIN),
        (output, PollFlags::POLLIN),
        (input, PollFlags::POLLOUT),
    ];
    let mut fds: Vec<PollFd<'_>> = watched
        .iter()
        .filter_map(|(fd, flags)| fd.map(|fd| PollFd::new(fd, *flags)))
        .collect();
    // Rounded up, so a wake-up is never early; bounded, as poll's timeout is.
    let timeout = timeout.map_or(PollTimeout::NONE, |t| {
        let millis = t.as_nanos().div_ceil(1_000_000).min(60_000);
        PollTimeout::from(u16::try_from(millis).expect("bounded above"))
    });
    match poll(&mut fds, timeout) {
        Ok(_) => {}
        Err(nix::errno::Errno::EINTR) => {
            return Ok(Ready {
                exited: false,
                readable: false,
                writable: false,
            });
        }
        Err(e) => return Err(e.into()),
    }
    let mut revents = fds.iter().map(|fd| fd.any().unwrap_or(false));
    let mut next = |present: bool| present && revents.next().unwrap_or(false);
    Ok(Ready {
        exited: next(exit.is_some()),
        readable: next(output.is_some()),
        writable: next(input.is_some()),
    })
}

/// The handler while it runs: killed with its group and reaped when dropped before it was reaped (a
/// run that returns early with an error).
struct Reaped {
    child: spawn::Child,
    reaped: bool,
}

impl Reaped {
    fn pid(&self) -> Pid {
        self.child.pid
    }

    /// Collects the exit status of the handler, which has exited. Its pid leaves [`HANDLERS`] in
    /// the same breath, so a new handler given the same pid is never taken for this one.
    fn reap(&mut self) -> io::Result<WaitStatus> {
        let mut handlers = HANDLERS.lock().expect("no thread panics holding it");
        loop {
            match waitpid(self.child.pid, None) {
                Err(nix::errno::Errno::EINTR) => {}
                other => {
                    self.reaped = true;
                    handlers.remove(&self.child.pid.as_raw());
                    return other.map_err(io::Error::from);
                }
            }
        }
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = killpg(self.child.pid, Signal::SIGKILL);
            // Dead before the reap, which holds the lock every run's start needs.
            while let Ok(None) = wait_exit(&self.child) {}
            let _ = self.reap();
        }
    }
}

/// Waits (at most a second) for the handler's exit; `Some` once it has exited.
fn wait_exit(child: &spawn::Child) -> io::Result<Option<()>> {
    let ready = wait_ready(
        Some(child.pidfd.as_fd()),
        None,
        None,
        Some(Duration::from_secs(1)),
    )?;
    Ok(ready.exited.then_some(()))
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}
