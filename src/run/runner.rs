//! One request's run, on a worker thread: take one of the `--jobs` slots ([`crate::run::slots`])
//! and the resource lock, then for each attempt journal it, run the handler in the sandbox in a
//! fresh working directory, and retry a `failed` or `timed_out` attempt with exponential backoff
//! while the kind has retries left.
//! The report goes back to the daemon, which alone records outcomes. The first attempt's files (the
//! journal entry's, synced, the log's, the working directory) are made before the slot is waited
//! for, and so is the handler's process: made, confined, it waits at a gate while another thread
//! waits for the slot and the lock and marks the attempt started, and executes the handler only
//! then (see `sandbox::Job::admit`). Between two handlers, only the handover, the lock, the start
//! mark and the `execve` remain.
//!
//! The slot and the lock are given up as soon as the last attempt's handler is gone (reaped, with
//! every process it left), before its output is drained to the end, its cgroup's usage read, the
//! working directory removed and the report sent: a run the daemon started ahead, waiting for a
//! slot (see `Daemon::take`), starts its handler meanwhile. The run that gave the slot up waits for
//! that start (a few milliseconds at most) before it goes on: its clean-up, and the work its report
//! sets off on the main thread (the outcome commit, the next request taken ahead, made ready), would
//! otherwise compete for the processors with the process being started, in the one moment no handler
//! runs. On the 1000-request benchmark's two cores, the time from the gate's opening to the
//! handler's execution was 346 µs (median) while they competed.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use git2::Oid;
use thiserror::Error;

use crate::clock::rfc3339;
use crate::inbox::request::Request;
use crate::inbox::snapshot::HandlersDir;
use crate::run::cgroup::CgroupLimits;
use crate::run::isolate::{self, Isolation};
use crate::run::journal::{self, Journal};
use crate::run::lock::{LockError, ResourceLock};
use crate::run::sandbox::{self, Finished, InFlight, Job, SandboxError, Termination};
use crate::run::slots::Slot;
use crate::run::spawn::{Identity, Limits};
use crate::secrets::Redactor;

/// The daemon's name for the [`Slots`](crate::run::slots::Slots): it makes them, hands out their
/// tickets, gives a stuck run's slot back and, above all, requests the stop through them.
pub(crate) use crate::run::slots::Slots as Stop;

/// How long a run that gave its slot up waits for the next run's handler to start.
const NEXT_START_BOUND: Duration = Duration::from_millis(5);

/// Everything a run needs, owned so it can move to the worker thread.
pub(crate) struct Plan {
    pub key: String,
    pub request: Request,
    pub request_path: String,
    pub request_blob: Oid,
    pub request_bytes: Vec<u8>,
    /// Keeps the handler on disk while it runs.
    pub handlers: Arc<HandlersDir>,
    /// Where the run's files go, side by side with other runs' (no folder of its own, which would be
    /// one more inode made and freed per request): `ID.request.yml`, the request's read-only copy,
    /// and `ID.work.N`, the working directory of attempt N.
    pub runs_dir: PathBuf,
    /// 1, or the attempt after one a crash interrupted.
    pub first_attempt: u32,
    /// Secrets and fixed variables (`replay`), added to the handler's environment.
    pub extra_env: Vec<(String, String)>,
    pub lock_dir: PathBuf,
    pub log_limit: u64,
    pub user: Option<Identity>,
    pub redactor: Redactor,
    pub journal: Arc<Journal>,
    pub stop: Arc<Stop>,
    /// This run's place in the queue for slots ([`Stop::ticket`]).
    pub ticket: u64,
    /// The handler process while one runs, for the daemon's watchdog.
    pub in_flight: Arc<InFlight>,
    /// What this host can isolate handlers with.
    pub isolation: Arc<Isolation>,
}

/// One attempt's result and where its log was captured.
pub(crate) struct Attempt {
    pub number: u32,
    pub result: Result<Finished, SandboxError>,
    pub log_file: PathBuf,
}

impl Attempt {
    /// Whether another attempt may help.
    fn failed(&self) -> bool {
        match &self.result {
            Ok(finished) => failed(finished.termination, finished.timed_out),
            Err(_) => false,
        }
    }
}

/// Whether a handler that ended so did not succeed.
fn failed(termination: Termination, timed_out: bool) -> bool {
    timed_out || termination != Termination::Exited(0)
}

/// A failure of the dispatcher itself, not of the request: the run cannot go on.
#[derive(Debug, Error)]
pub(crate) enum RunnerError {
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("journal or run directory `{path}`: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub(crate) struct Report {
    pub key: String,
    pub attempts: Vec<Attempt>,
    /// Set when the dispatcher could not carry the run; the request stays in the inbox.
    pub fatal: Option<RunnerError>,
    /// The run never started a handler: the dispatcher began to stop first, or withheld it (see
    /// [`InFlight::withhold`](crate::run::in_flight::InFlight::withhold)). Nothing of it was
    /// journaled.
    pub cancelled: bool,
}

impl Plan {
    fn request_copy(&self) -> PathBuf {
        self.runs_dir.join(format!("{}.request.yml", self.key))
    }
}

/// Starts the run on a thread of its own, named `run`; `done` receives the report.
pub(crate) fn spawn(plan: Plan, done: impl FnOnce(Report) + Send + 'static) {
    let job = move || {
        let mut attempts = Vec::new();
        let result = run(&plan, &mut attempts);
        done(report(plan, attempts, result));
    };
    std::thread::Builder::new()
        .name("run".to_owned())
        .spawn(job)
        .expect("failed to spawn thread");
}

/// The run's report, once its request's copy is removed: how its attempts ended, or why there
/// were none.
fn report(plan: Plan, attempts: Vec<Attempt>, result: Result<bool, RunnerError>) -> Report {
    let (cancelled, fatal) = match result {
        Ok(ran) => (!ran, None),
        Err(e) => (false, Some(e)),
    };
    let _ = fs::remove_file(plan.request_copy());
    Report {
        key: plan.key,
        attempts,
        fatal,
        cancelled,
    }
}

/// Runs the attempts; false when the run never took a slot. A run that fails here (the journal
/// or the working folder cannot be written) stops the dispatcher: it asks for the stop before it
/// gives its slot back, so the run waiting for the slot does not start a handler the dispatcher,
/// which exits on that error, would leave behind.
fn run(plan: &Plan, attempts: &mut Vec<Attempt>) -> Result<bool, RunnerError> {
    let held = Mutex::new(Held::default());
    let result = run_holding(plan, attempts, &held);
    if result.is_err() {
        plan.stop.request();
    }
    drop(held);
    result
}

/// What a run holds while its handler may run. The lock is dropped first, so that it is free
/// before the slot is: the next run takes the slot, then the lock.
#[derive(Default)]
struct Held<'p> {
    /// The resource's lock, from the slot's taking until the last handler is gone.
    lock: Option<ResourceLock>,
    /// The `--jobs` slot, from its taking until the last handler is gone; its handshake is told
    /// when the first handler starts.
    slot: Option<Slot<'p>>,
}

/// [`run`], with the slot and the resource lock kept in `held`, which the caller drops: the
/// attempts, each followed by the retry decision, until one is the last.
fn run_holding<'p>(
    plan: &'p Plan,
    attempts: &mut Vec<Attempt>,
    held: &Mutex<Held<'p>>,
) -> Result<bool, RunnerError> {
    let request_copy = plan.request_copy();
    // The first attempt is made ready (its journal entry synced) before the run waits for its
    // slot, so that the handler starts as soon as the slot is given.
    let first = write_read_only(&request_copy, &plan.request_bytes)
        .map_err(io(&request_copy))
        .and_then(|()| Ready::new(plan, plan.first_attempt));
    let mut ready = match first {
        Ok(ready) => ready,
        Err(e) => {
            // The slot is asked for even so: the runs started after this one wait for this
            // one's turn to pass.
            return if take_slot(plan, held) {
                Err(e)
            } else {
                Ok(false)
            };
        }
    };
    crate::failpoint::hit("prepared");
    let mut number = plan.first_attempt;
    loop {
        let attempt = match attempt(plan, &mut ready, number, held) {
            Ok(attempt) => attempt,
            Err(NotAdmitted::Stopped) => return Ok(false),
            Err(NotAdmitted::Ended) => return Ok(true),
            Err(NotAdmitted::Failed(e)) => return Err(e),
        };
        let again = retry_due(plan, attempt.number, attempt.failed());
        if !again {
            // When the handler ended, unless the run failed before or its log could not be written.
            hand_over(plan, held);
        }
        // Clean-up: the attempt's working folder goes, once the next run may have started.
        drop(ready);
        attempts.push(attempt);
        if !again || !back_off(plan, number) {
            return Ok(true);
        }
        number += 1;
        ready = Ready::new(plan, number)?;
    }
}

/// Why an attempt's handler was not let start.
enum NotAdmitted {
    /// A stop, a pause or a withdrawal came before the slot or the lock: nothing is marked started.
    Stopped,
    /// The watchdog recorded the run while its thread was stuck, or its claim was not renewed in
    /// time (another dispatcher may take it over): nothing more starts here.
    Ended,
    /// The lock or the journal could not be written: the dispatcher cannot go on.
    Failed(RunnerError),
}

/// Lets attempt `number` start, on the thread that does so while its handler's process is made:
/// for the first attempt, waits for the run's slot and its resource's lock (kept in `held`; a
/// next attempt holds them already), then marks the attempt started in the journal, `prepared`
/// for it when it is the first.
fn admit<'p>(
    plan: &'p Plan,
    number: u32,
    held: &Mutex<Held<'p>>,
    prepared: &Mutex<Option<journal::Prepared>>,
) -> Result<(), NotAdmitted> {
    let first = number == plan.first_attempt;
    if first {
        if !take_slot(plan, held) {
            return Err(NotAdmitted::Stopped);
        }
        let resource = ResourceLock::acquire(&plan.lock_dir, &plan.request.resource)
            .map_err(|e| NotAdmitted::Failed(e.into()))?;
        lock(held).lock = Some(resource);
        // A stop that came while the lock was waited for, or a pause or a withdrawal while the
        // slot was.
        if plan.stop.requested() || plan.in_flight.is_withheld() {
            return Err(NotAdmitted::Stopped);
        }
    }
    if plan.in_flight.is_abandoned() || plan.in_flight.fence_due(std::time::Instant::now()) {
        return Err(NotAdmitted::Ended);
    }
    if first {
        say_running(plan);
    }
    let mut entry = journal_entry(plan, number);
    entry.started_at = Some(rfc3339(SystemTime::now()));
    plan.journal
        .begin(&entry, lock(prepared).take())
        .map_err(|e| NotAdmitted::Failed(io(&plan.runs_dir)(e)))?;
    crate::failpoint::hit("taken");
    Ok(())
}

/// Waits for the run's turn for a slot and keeps the slot in `held`; false when a stop came first.
fn take_slot<'p>(plan: &'p Plan, held: &Mutex<Held<'p>>) -> bool {
    let slot = plan.stop.take(plan.ticket, &plan.in_flight);
    let taken = slot.is_some();
    lock(held).slot = slot;
    taken
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().expect("no thread panics holding it")
}

/// Says that the run's first handler starts.
fn say_running(plan: &Plan) {
    crate::log::event(
        "run",
        Some(&plan.key),
        &format!(
            "running `{}` (kind `{}`, resource `{}`{})",
            plan.request.route.handler_path,
            plan.request.kind,
            plan.request.resource,
            if plan.first_attempt > 1 {
                format!(", attempt {}", plan.first_attempt)
            } else {
                String::new()
            }
        ),
    );
}

/// Attempt `number`: runs the handler in `ready`'s working folder, once [`admit`] let it (which
/// it does while the handler's process is made). Once the handler is gone, the slot and the lock
/// are handed over unless the attempt is to be retried.
fn attempt<'p>(
    plan: &'p Plan,
    ready: &mut Ready<'p>,
    number: u32,
    held: &Mutex<Held<'p>>,
) -> Result<Attempt, NotAdmitted> {
    let spec = &plan.request.route.spec;
    let prepared = Mutex::new(ready.entry.take());
    let refused = Mutex::new(None);
    let admit = || match admit(plan, number, held, &prepared) {
        Ok(()) => true,
        Err(why) => {
            *lock(&refused) = Some(why);
            false
        }
    };
    let log_file = ready.log.clone();
    let mut env = handler_env(&plan.request, number);
    env.extend(plan.extra_env.iter().cloned());
    let request_copy = plan.request_copy();
    let result = sandbox::run(Job {
        view: (!spec.no_isolation).then(|| {
            let binds = isolate::run_binds(
                &plan.handlers.path,
                &request_copy,
                &ready.work,
                &spec.writable,
            );
            (&*plan.isolation, binds)
        }),
        program: &plan.handlers.path.join(&spec.handler),
        args: vec![request_copy.clone().into_os_string()],
        stdin: serde_json::to_vec(&plan.request.json).expect("JSON values serialise"),
        env,
        cwd: &ready.work,
        timeout: plan.request.timeout,
        grace: spec.grace,
        limits: Limits {
            address_space: spec.memory,
            processes: Some(spec.nproc),
            open_files: Some(spec.nofile),
            file_size: Some(spec.fsize),
            no_network: spec.no_network,
        },
        cgroup: CgroupLimits {
            memory: spec.memory,
            pids: spec.pids,
            cpu: spec.cpu,
        },
        user: plan.user.clone(),
        log_path: &log_file,
        log_limit: plan.log_limit,
        redactor: plan.redactor.clone(),
        marker: ("DISPATCH_ID".to_owned(), plan.key.clone()),
        in_flight: &plan.in_flight,
        admit: &admit,
        on_start: &|| lock(held).slot.as_ref().map_or((), Slot::started),
        on_exit: &|termination, timed_out| {
            if !retry_due(plan, number, failed(termination, timed_out)) {
                hand_over(plan, held);
            }
        },
    });
    if let Err(SandboxError::NotAdmitted) = result {
        ready.entry = prepared.into_inner().expect("no thread panics holding it");
        let why = refused.into_inner().expect("no thread panics holding it");
        return Err(why.unwrap_or(NotAdmitted::Stopped));
    }
    ready.started = true;
    crate::failpoint::hang("stuck");
    Ok(Attempt {
        number,
        result,
        log_file,
    })
}

/// Whether another attempt follows: attempt `number` failed or timed out, and the kind has
/// retries left.
fn retry_due(plan: &Plan, number: u32, failed: bool) -> bool {
    failed && number < 1 + plan.request.route.spec.retries
}

/// The last handler is gone: gives the lock and the slot up, so that a run waiting for them starts
/// its handler, and lets it start before this run cleans up (see the module's comment). Nothing
/// more happens once they are given up.
fn hand_over(plan: &Plan, held: &Mutex<Held<'_>>) {
    let given = std::mem::take(&mut *lock(held));
    if given.slot.is_none() && given.lock.is_none() {
        return;
    }
    drop(given);
    let _ = plan.stop.let_the_next_start(NEXT_START_BOUND);
}

/// Waits before the attempt after `number`, the kind's backoff doubled for each retry; false when
/// a stop ended the wait, and no attempt follows.
fn back_off(plan: &Plan, number: u32) -> bool {
    let delay = plan
        .request
        .route
        .spec
        .retry_backoff
        .saturating_mul(1 << (number - plan.first_attempt).min(16));
    crate::log::event(
        "retry",
        Some(&plan.key),
        &format!(
            "attempt {number} of {} did not succeed; next in {}",
            1 + plan.request.route.spec.retries,
            humantime::format_duration(delay)
        ),
    );
    // Waiting to retry is not a run in flight: nothing for the watchdog to judge.
    plan.in_flight.set(None);
    !plan.stop.wait(delay)
}

/// A journal or run directory error at `path`.
fn io(path: &Path) -> impl FnOnce(io::Error) -> RunnerError {
    let path = path.to_owned();
    move |source| RunnerError::Io { path, source }
}

/// What an attempt needs before its handler starts: its journal entry prepared (when the key has
/// none yet), its log file and its working folder. The working folder goes when this is dropped;
/// before the attempt is marked started (`started`), the entry and the log go back too.
struct Ready<'p> {
    plan: &'p Plan,
    entry: Option<journal::Prepared>,
    log: PathBuf,
    work: PathBuf,
    started: bool,
}

impl<'p> Ready<'p> {
    fn new(plan: &'p Plan, attempt: u32) -> Result<Self, RunnerError> {
        let mut ready = Ready {
            plan,
            entry: None,
            log: plan.journal.new_log(&plan.key, attempt),
            work: plan.runs_dir.join(format!("{}.work.{attempt}", plan.key)),
            started: false,
        };
        ready.entry = plan
            .journal
            .prepare(&journal_entry(plan, attempt))
            .map_err(io(&plan.runs_dir))?;
        fresh_dir(&ready.work, plan.user.as_ref()).map_err(io(&ready.work))?;
        Ok(ready)
    }
}

impl Drop for Ready<'_> {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.work);
        if !self.started {
            let journal = &self.plan.journal;
            let _ = match self.entry.take() {
                Some(entry) => journal.unprepare(entry, &self.plan.key),
                None => journal.recycle_log(&self.log),
            };
        }
    }
}

/// The journal's entry of attempt `number`, not yet started.
fn journal_entry(plan: &Plan, number: u32) -> journal::Entry {
    journal::Entry {
        key: plan.key.clone(),
        request_path: plan.request_path.clone(),
        request_blob: plan.request_blob.to_string(),
        attempt: number,
        started_at: None,
        boot_id: None,
        dispatcher_pid: std::process::id(),
        outcome: None,
    }
}

/// The handler's whole environment: the SPEC's variables, PATH, and the kind's `env` names.
fn handler_env(request: &Request, attempt: u32) -> Vec<(String, String)> {
    let mut env = vec![
        ("DISPATCH_ID".to_owned(), request.id.clone()),
        ("DISPATCH_KIND".to_owned(), request.kind.clone()),
        ("DISPATCH_ATTEMPT".to_owned(), attempt.to_string()),
        ("DISPATCH_RESOURCE".to_owned(), request.resource.clone()),
        (
            "DISPATCH_PARAMS".to_owned(),
            serde_json::to_string(&request.params).expect("JSON values serialise"),
        ),
        (
            "PATH".to_owned(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".to_owned()),
        ),
    ];
    for name in &request.route.spec.env {
        if let Ok(value) = std::env::var(name) {
            env.push((name.clone(), value));
        }
    }
    env
}

/// Writes the request's copy; one an earlier run of the key failed to remove (read-only, so not
/// writable in place) is replaced.
fn write_read_only(path: &Path, bytes: &[u8]) -> io::Result<()> {
    if fs::write(path, bytes).is_err() {
        fs::remove_file(path)?;
        fs::write(path, bytes)?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(0o444))
}

/// An empty folder owned by the handler's user; everything around it stays the dispatcher's.
fn fresh_dir(path: &Path, user: Option<&Identity>) -> io::Result<()> {
    if path.exists() {
        fs::remove_dir_all(path)?;
    }
    fs::create_dir_all(path)?;
    if let Some(user) = user {
        nix::unistd::chown(path, Some(user.uid), Some(user.gid))?;
    }
    Ok(())
}
