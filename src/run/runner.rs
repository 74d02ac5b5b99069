//! One request's run, on a worker thread: take one of the `--jobs` slots and the resource lock, then
//! for each attempt journal it, run the handler in the sandbox in a fresh working directory, and
//! retry a `failed` or `timed_out` attempt with exponential backoff while the kind has retries left.
//! The report goes back to the daemon, which alone records outcomes. The first attempt's files (the
//! journal entry's, the log's, the working directory) are made before the slot is waited for.
//!
//! The slot and the lock are given up as soon as the last attempt's handler is gone, before the
//! working directory is removed and the report sent: a run the daemon started ahead, waiting for a
//! slot (see `Daemon::take`), starts its handler meanwhile. The run that gave the slot up waits for
//! that start (a few milliseconds at most) before it goes on: its clean-up, and the work its report
//! sets off on the main thread (the outcome commit, the next request taken ahead, made ready), would
//! otherwise compete for the processors with the process being started, in the one moment no handler
//! runs. On the 1000-request benchmark's two cores, the time from the gate's opening to the
//! handler's execution was 346 µs (median) while they competed.

use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

use git2::Oid;
use thiserror::Error;

use crate::clock::rfc3339;
use crate::inbox::request::Request;
use crate::inbox::snapshot::HandlersDir;
use crate::run::journal::{self, Journal};
use crate::run::lock::{LockError, ResourceLock};
use crate::run::sandbox::{self, Finished, InFlight, Job, SandboxError, Termination};
use crate::run::spawn::{Identity, Limits};
use crate::secrets::Redactor;

/// The slots handlers run in (`--jobs`), and the stop: once shutdown begins, no run takes a slot,
/// no new attempt starts, a retry's backoff ends early. Slots go to runs in the order they were
/// started (by ticket), not in the order their threads happen to ask.
pub(crate) struct Stop {
    state: Mutex<SlotState>,
    changed: Condvar,
    /// How many slots there are (`--jobs`).
    slots: usize,
}

struct SlotState {
    requested: bool,
    free: usize,
    /// The next ticket to hand out, and the next one to be served.
    issued: u64,
    serving: u64,
    /// Runs waiting in [`Stop::take_slot`].
    waiting: usize,
    /// Slots held by runs whose handler has not started yet.
    unstarted: usize,
}

/// A slot a run holds; given back when dropped, unless the watchdog gave it back already.
struct Slot<'a> {
    stop: &'a Stop,
    in_flight: &'a InFlight,
    /// Whether the run's handler started (see [`Slot::started`]).
    started: std::cell::Cell<bool>,
}

impl Slot<'_> {
    /// Notes that the run's first handler started: the run that gave up this slot may go on.
    fn started(&self) {
        if !self.started.replace(true) {
            self.stop.lock().unstarted -= 1;
            self.stop.changed.notify_all();
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.started();
        if self.in_flight.give_back_slot() {
            self.stop.give_back();
        }
    }
}

impl Stop {
    pub(crate) fn new(slots: usize) -> Self {
        Self {
            state: Mutex::new(SlotState {
                requested: false,
                free: slots,
                issued: 0,
                serving: 0,
                waiting: 0,
                unstarted: 0,
            }),
            changed: Condvar::new(),
            slots,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().expect("no thread panics holding it")
    }

    pub(crate) fn request(&self) {
        self.lock().requested = true;
        self.changed.notify_all();
    }

    fn requested(&self) -> bool {
        self.lock().requested
    }

    /// Gives a slot back: a run's worker when its handler is gone, or the watchdog for a worker
    /// that is stuck (see [`InFlight::give_back_slot`]).
    pub(crate) fn give_back(&self) {
        self.lock().free += 1;
        self.changed.notify_all();
    }

    /// Waits up to `timeout`; true when stopping was requested.
    fn wait(&self, timeout: Duration) -> bool {
        let (state, _) = self
            .changed
            .wait_timeout_while(self.lock(), timeout, |s| !s.requested)
            .expect("no thread panics holding it");
        state.requested
    }

    /// A place in the queue for slots: one per run, taken in the order runs are started.
    pub(crate) fn ticket(&self) -> u64 {
        let mut state = self.lock();
        state.issued += 1;
        state.issued - 1
    }

    /// Waits for a free slot and for the runs started before to have theirs; `None` when stopping
    /// was requested first. Every ticket must come here once, or the runs after it wait forever.
    fn take_slot<'a>(&'a self, ticket: u64, in_flight: &'a InFlight) -> Option<Slot<'a>> {
        let mut state = self.lock();
        state.waiting += 1;
        let mut state = self
            .changed
            .wait_while(state, |s| {
                !s.requested && (s.free == 0 || s.serving != ticket)
            })
            .expect("no thread panics holding it");
        state.waiting -= 1;
        if state.requested {
            return None;
        }
        state.free -= 1;
        state.serving += 1;
        state.unstarted += 1;
        self.changed.notify_all();
        Some(Slot {
            stop: self,
            in_flight,
            started: std::cell::Cell::new(false),
        })
    }

    /// After a run gave its slot up, with one slot (`--jobs 1`): waits, at most `bound`, while the
    /// run that takes it over has not started its handler yet (see the module's comment). True
    /// when no run is left waiting to start, false when the bound ran out first. With more slots
    /// a run does not wait: the other runs' handlers keep the processors busy anyway, and one
    /// waiting for its resource lock would hold up every run that ends meanwhile.
    fn let_the_next_start(&self, bound: Duration) -> bool {
        if self.slots > 1 {
            return true;
        }
        let (state, waited) = self
            .changed
            .wait_timeout_while(self.lock(), bound, |s| {
                !s.requested && (s.unstarted > 0 || (s.waiting > 0 && s.free > 0))
            })
            .expect("no thread panics holding it");
        drop(state);
        !waited.timed_out()
    }
}

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
            Ok(finished) => finished.timed_out || finished.termination != Termination::Exited(0),
            Err(_) => false,
        }
    }
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
    /// The run never took a slot: the dispatcher began to stop first. Nothing of it was journaled.
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
        let (cancelled, fatal) = match run(&plan, &mut attempts) {
            Ok(ran) => (!ran, None),
            Err(e) => (false, Some(e)),
        };
        let _ = fs::remove_file(plan.request_copy());
        done(Report {
            key: plan.key,
            attempts,
            fatal,
            cancelled,
        });
    };
    std::thread::Builder::new()
        .name("run".to_owned())
        .spawn(job)
        .expect("failed to spawn thread");
}

/// Runs the attempts; false when the run never took a slot. A run that fails here (the journal
/// or the working folder cannot be written) stops the dispatcher: it asks for the stop before it
/// gives its slot back, so the run waiting for the slot does not start a handler the dispatcher,
/// which exits on that error, would leave behind.
fn run(plan: &Plan, attempts: &mut Vec<Attempt>) -> Result<bool, RunnerError> {
    let mut held = Held::default();
    let result = run_holding(plan, attempts, &mut held);
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
    lock: Option<ResourceLock>,
    slot: Option<Slot<'p>>,
}

/// [`run`], with the slot and the resource lock kept in `held`, which the caller drops.
fn run_holding<'p>(
    plan: &'p Plan,
    attempts: &mut Vec<Attempt>,
    held: &mut Held<'p>,
) -> Result<bool, RunnerError> {
    let spec = &plan.request.route.spec;
    let request_copy = plan.request_copy();
    // The first attempt is made ready while the run may still wait for its slot, so that the
    // handler starts as soon as the slot is given.
    let ready = write_read_only(&request_copy, &plan.request_bytes)
        .map_err(io(&request_copy))
        .and_then(|()| Ready::new(plan, plan.first_attempt));
    // The slot is asked for even when that failed: the runs started after this one wait for this
    // one's turn to pass.
    held.slot = plan.stop.take_slot(plan.ticket, &plan.in_flight);
    if held.slot.is_none() {
        return Ok(false);
    }
    let mut ready = Some(ready?);
    held.lock = Some(ResourceLock::acquire(
        &plan.lock_dir,
        &plan.request.resource,
    )?);
    // A stop that came while the lock was waited for: nothing is journaled yet, nothing runs.
    if plan.stop.requested() {
        return Ok(false);
    }
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
    let last = 1 + spec.retries;
    let mut number = plan.first_attempt;
    loop {
        if plan.in_flight.is_abandoned() {
            // The watchdog recorded the run while this thread was stuck: nothing more may run.
            return Ok(true);
        }
        let mut ready = match ready.take() {
            Some(ready) => ready,
            None => Ready::new(plan, number)?,
        };
        let syncing = plan
            .journal
            .begin(
                &journal::Entry {
                    key: plan.key.clone(),
                    request_path: plan.request_path.clone(),
                    request_blob: plan.request_blob.to_string(),
                    attempt: number,
                    started_at: rfc3339(SystemTime::now()),
                    dispatcher_pid: std::process::id(),
                    outcome: None,
                },
                ready.entry.take(),
            )
            .map_err(io(&plan.runs_dir))?;
        ready.started = true;
        crate::failpoint::hit("taken");
        let log_file = ready.log.clone();
        let mut env = handler_env(&plan.request, number);
        env.extend(plan.extra_env.iter().cloned());
        let result = sandbox::run(Job {
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
            },
            user: plan.user.clone(),
            log_path: &log_file,
            log_limit: plan.log_limit,
            redactor: plan.redactor.clone(),
            marker: ("DISPATCH_ID".to_owned(), plan.key.clone()),
            in_flight: &plan.in_flight,
            gate: syncing.as_ref().map(|s| s.gate.as_fd()),
            on_start: &|| held.slot.as_ref().map_or((), Slot::started),
        });
        // The handler started only once its entry was on disk. When that failed, it never started:
        // the entry goes (a restart runs the request), and the dispatcher cannot go on.
        if let Some(Err(e)) = syncing.map(journal::Syncing::wait) {
            let _ = plan.journal.discard(&plan.key);
            return Err(io(&plan.runs_dir)(e));
        }
        crate::failpoint::hang("stuck");
        let attempt = Attempt {
            number,
            result,
            log_file,
        };
        let again = attempt.failed() && number < last;
        if !again {
            // The handler is gone: a run waiting for the slot or the lock starts, and then this one
            // cleans up.
            *held = Held::default();
            let _ = plan.stop.let_the_next_start(NEXT_START_BOUND);
        }
        drop(ready);
        attempts.push(attempt);
        if !again {
            return Ok(true);
        }
        let delay = spec
            .retry_backoff
            .saturating_mul(1 << (number - plan.first_attempt).min(16));
        crate::log::event(
            "retry",
            Some(&plan.key),
            &format!(
                "attempt {number} of {last} did not succeed; next in {}",
                humantime::format_duration(delay)
            ),
        );
        // Waiting to retry is not a run in flight: nothing for the watchdog to judge.
        plan.in_flight.set(None);
        if plan.stop.wait(delay) {
            return Ok(true);
        }
        number += 1;
    }
}

/// A journal or run directory error at `path`.
fn io(path: &Path) -> impl FnOnce(io::Error) -> RunnerError {
    let path = path.to_owned();
    move |source| RunnerError::Io { path, source }
}

/// What an attempt needs before its handler starts: its journal entry's file in place (when the
/// key has none yet), its log file and its working folder. The working folder goes when this is
/// dropped; before the attempt is journaled (`started`), the entry and the log go back too.
struct Ready<'p> {
    plan: &'p Plan,
    entry: Option<journal::Reserved>,
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
            .reserve(&plan.key)
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
                Some(entry) => journal.unreserve(entry, &self.plan.key),
                None => journal.recycle_log(&self.log),
            };
        }
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

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::thread;

    use super::*;

    #[test]
    fn slots_go_in_ticket_order_whatever_order_threads_ask_in() {
        let stop = Arc::new(Stop::new(1));
        let (first, second) = (stop.ticket(), stop.ticket());
        let (sender, order) = mpsc::channel();
        // The second run's thread asks first: the slot is free, but it is not its turn.
        let late = {
            let (stop, sender) = (Arc::clone(&stop), sender.clone());
            thread::spawn(move || {
                let in_flight = InFlight::default();
                let _slot = stop.take_slot(second, &in_flight).expect("not stopped");
                sender.send(second).unwrap();
            })
        };
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while stop.lock().waiting == 0 && got.is_empty() {
            got.extend(order.try_recv());
            assert!(
                std::time::Instant::now() < deadline,
                "the second never asked"
            );
            thread::yield_now();
        }
        assert!(got.is_empty(), "the second ticket took the slot first");
        let in_flight = InFlight::default();
        let slot = stop.take_slot(first, &in_flight).expect("not stopped");
        sender.send(first).unwrap();
        drop(slot);
        late.join().unwrap();
        assert_eq!(order.iter().take(2).collect::<Vec<_>>(), [first, second]);
    }

    #[test]
    fn a_run_that_gave_its_slot_up_waits_for_the_next_handler_to_start_and_no_longer() {
        let stop = Stop::new(1);
        let (first, second) = (InFlight::default(), InFlight::default());
        // Nobody else: no wait.
        let slot = stop.take_slot(stop.ticket(), &first).expect("a free slot");
        slot.started();
        drop(slot);
        assert!(stop.let_the_next_start(Duration::from_secs(10)));
        // The next run took the slot and has not started its handler: the wait runs to its bound.
        let next = stop.take_slot(stop.ticket(), &second).expect("a free slot");
        let bound = Duration::from_millis(20);
        let clock = std::time::Instant::now();
        assert!(!stop.let_the_next_start(bound));
        assert!(clock.elapsed() >= bound);
        // It started: no wait; nor after a slot dropped unstarted.
        next.started();
        assert!(stop.let_the_next_start(Duration::from_secs(10)));
        drop(next);
        let unstarted = stop.take_slot(stop.ticket(), &first).expect("a free slot");
        drop(unstarted);
        assert!(stop.let_the_next_start(Duration::from_secs(10)));
        // With more slots than one, a run never waits.
        let many = Stop::new(2);
        let _held = many.take_slot(many.ticket(), &second).expect("a free slot");
        assert!(many.let_the_next_start(Duration::from_secs(10)));
    }

    #[test]
    fn a_slot_the_watchdog_gave_back_is_not_given_back_twice_and_a_stop_sends_waiters_away() {
        let stop = Stop::new(1);
        let stuck = InFlight::default();
        let slot = stop.take_slot(stop.ticket(), &stuck).expect("a free slot");
        // The watchdog gives the stuck run's slot back; the next run takes it.
        assert!(stuck.give_back_slot());
        stop.give_back();
        let next = InFlight::default();
        let held = stop
            .take_slot(stop.ticket(), &next)
            .expect("the slot given back");
        // The stuck worker ends after all: its slot is not given back a second time.
        drop(slot);
        assert_eq!(stop.lock().free, 0, "one slot, held by the next run");
        drop(held);
        assert_eq!(stop.lock().free, 1);
        // A run waiting for a slot is sent away by a stop.
        let waiting = InFlight::default();
        let _busy = stop
            .take_slot(stop.ticket(), &waiting)
            .expect("a free slot");
        let ticket = stop.ticket();
        thread::scope(|scope| {
            let asking = scope.spawn(|| stop.take_slot(ticket, &InFlight::default()).is_none());
            stop.request();
            assert!(asking.join().unwrap(), "a stopped run took a slot");
        });
    }
}
