//! The loop: sync -> take -> validate -> route -> lock -> run -> record -> push.
//!
//! One thread owns the Git repository and makes every decision (the process's first thread); each
//! handler runs on a worker thread of its own and reports back on the event channel, as do the signal thread and the watcher of a
//! local remote. Outcomes are committed locally as soon as they are known and pushed in batches (at
//! most [`RunConfig::push_batch`] old while a backlog drains, at once when the queue is idle), so
//! draining a backlog does not cost one push per request.
//!
//! Shutdown is an event like any other: it stops the taking of new requests, never the recording of
//! one that ran.

pub(crate) mod metrics;

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use git2::Oid;
use notify::Watcher;
use thiserror::Error;

use crate::config::{Mode, RunConfig};
use crate::daemon::metrics::Metrics;
use crate::git::sync::{Sync, SyncError};
use crate::git::url::local_path;
use crate::inbox::queue::{Inbox, InboxEntry};
use crate::inbox::request::{self, Candidate, Rejection, Request, request_stem};
use crate::inbox::snapshot::Snapshot;
use crate::layout;
use crate::layout::is_valid_name;
use crate::log::{event, say};
use crate::outcome::{AttemptLog, Outcome, State, Written, free_key, sanitize};
use crate::run::journal::Journal;
use crate::run::runner::{self, Plan, Report, RunnerError, Stop};
use crate::run::sandbox::{InFlight, Termination};
use crate::run::scratch::Scratch;

/// Backoff for fetches and pushes: first retry after this, doubling, with jitter.
const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// How many waiting requests on busy resources `take` looks past for one it can start.
const LOOKAHEAD: usize = 64;
/// How long a held workdir lock is waited for, and how often it is tried meanwhile (see
/// [`lock_workdir`]).
const WORKDIR_LOCK_GRACE: Duration = Duration::from_secs(2);
const WORKDIR_LOCK_POLL: Duration = Duration::from_millis(20);
/// The scratch directory's folder of runs: each request's read-only copy and working directories.
const RUNS: &str = "runs";

#[derive(Debug, Error)]
pub(crate) enum DaemonError {
    /// The remote could not be reached or pushed to after all attempts (exit 3).
    #[error("{0}")]
    Remote(String),
    /// The dispatcher cannot do its job at all: configuration, workdir, lock directory (exit 2).
    #[error(transparent)]
    Sync(#[from] SyncError),
    #[error(transparent)]
    Runner(#[from] RunnerError),
    #[error(
        "workdir `{0}` is in use by another dispatcher; each dispatcher needs a workdir of its own"
    )]
    WorkdirInUse(PathBuf),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

/// `attempt 2; next in 1.2s`, or for the attempt after which the dispatcher gives up `attempt 6 of
/// 6, the last`: the last attempt announces no next one.
fn attempt_note(attempt: u32, attempts: u32, last: bool, delay: Duration) -> String {
    if last {
        format!("attempt {attempt} of {attempts}, the last")
    } else {
        format!("attempt {attempt}; next in {delay:.1?}")
    }
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> DaemonError {
    let context = context.into();
    move |source| DaemonError::Io { context, source }
}

enum Event {
    Finished(Box<Report>),
    RemoteChanged,
    Signal(i32),
}

/// A request that is running: what the outcome needs besides the run's report.
struct Running {
    /// Set when the handler's run ended; its outcome is not recorded yet.
    ended: bool,
    /// The handler process while one runs, for the watchdog.
    in_flight: Arc<InFlight>,
    entry: InboxEntry,
    request: Request,
    /// Logs of attempts before a crash, for a run resumed as a later attempt.
    prior_logs: Vec<AttemptLog>,
}

/// A run a crash interrupted, to be resumed as its next attempt (idempotent kinds with retries left).
struct Resume {
    next_attempt: u32,
    logs: Vec<AttemptLog>,
}

/// Counts of what a run recorded, for the closing line.
#[derive(Debug, Default)]
pub(crate) struct Summary {
    pub recorded: usize,
    pub by_state: std::collections::BTreeMap<String, usize>,
}

pub(crate) struct Daemon {
    cfg: RunConfig,
    sync: Sync,
    inbox: Inbox,
    snapshot: Option<Snapshot>,
    /// Keys of outcomes recorded in memory and not yet written out; their journal entries stay until
    /// they are (see [`Daemon::persist`]).
    staged: Vec<String>,
    /// Requests whose handler runs now, or ran and waits in `finished` to be recorded, by key. Their
    /// files are still in `requests/` at the tip.
    running: HashMap<String, Running>,
    /// Reports of runs that ended, recorded once the next requests are started.
    finished: Vec<Report>,
    /// Runs the watchdog recorded `abandoned`: a report that still comes is ignored.
    watchdogged: std::collections::HashSet<String>,
    /// Where handlers and their run folders live on disk; removed at exit.
    scratch: Scratch,
    events: Receiver<Event>,
    sender: Sender<Event>,
    journal: Arc<Journal>,
    /// Told to every run: stop retrying when shutdown begins.
    stop: Arc<Stop>,
    /// Runs interrupted by a crash that continue as a next attempt, by request path.
    resume: HashMap<String, Resume>,
    /// Whether the journal of a previous process was reconciled (after the first sync).
    recovered: bool,
    metrics: Arc<Metrics>,
    /// Requests waiting at the last look at the inbox (for the progress line).
    waiting: usize,
    /// When the last progress line was shown (`--until-empty` on a terminal).
    progress_shown: Option<Instant>,
    started: Instant,
    /// Held for its flock: one dispatcher per workdir.
    _workdir_lock: fs::File,
    /// Set by the first SIGTERM/SIGINT: take nothing new, finish, record, push, exit.
    shutting_down: bool,
    /// Why the dispatcher gave up on the remote while handlers ran: it shuts down as on SIGTERM,
    /// records their outcomes locally, and then fails with this (see [`Daemon::give_up`]).
    gave_up: Option<String>,
    /// Set once `--once` has taken its request.
    took_one: bool,
    next_sync: Instant,
    sync_failures: u32,
    /// Whether the remote was looked at since the inbox was last found empty (`--until-empty`).
    checked_when_empty: bool,
    /// When the oldest unpushed outcome was recorded; `None` when everything is pushed.
    unpushed_since: Option<Instant>,
    /// The state of each outcome this process counted in `summary` and has not pushed yet, by key:
    /// one a reconcile drops (the remote records the id already) is taken out of the count.
    unpushed_counted: HashMap<String, String>,
    next_push: Instant,
    push_failures: u32,
    summary: Summary,
}

impl Drop for Daemon {
    /// However the loop ends, a run still waiting for a slot (one taken ahead) must not start its
    /// handler after it.
    fn drop(&mut self) {
        self.stop.request();
    }
}

impl Daemon {
    pub(crate) fn open(cfg: RunConfig) -> Result<Self, DaemonError> {
        // libgit2 initialises meanwhile (see `configure_libgit2`); `Sync::open` waits for it.
        std::thread::spawn(crate::git::sync::configure_libgit2);
        // Created with explicit modes, whatever the umask: the workdir (the bare clone, the journal,
        // captured output) is the dispatcher's alone; the lock directory is readable by the admins
        // and cron jobs that take the same locks, writable by the dispatcher only.
        create_dir(&cfg.workdir, 0o700).map_err(io_err(format!(
            "workdir `{}` could not be created",
            cfg.workdir.display()
        )))?;
        create_dir(&cfg.lock_dir, 0o755).map_err(io_err(format!(
            "lock directory `{}` could not be created",
            cfg.lock_dir.display()
        )))?;
        let probe = cfg.lock_dir.join(".git-dispatch-write-test");
        fs::write(&probe, b"").map_err(io_err(format!(
            "lock directory `{}` is not writable",
            cfg.lock_dir.display()
        )))?;
        let _ = fs::remove_file(&probe);
        let workdir_lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(cfg.workdir.join("dispatcher.lock"))
            .map_err(io_err("workdir lock"))?;
        lock_workdir(&workdir_lock, &cfg.workdir)?;
        let journal = Journal::open(&cfg.workdir).map_err(io_err("journal"))?;
        // Holding the workdir lock, no other dispatcher can be writing here: a `.lock` file left in
        // the bare clone is the remains of a crash and would block every update of its ref.
        remove_stale_locks(&cfg.workdir.join("repo.git"));
        let sync = Sync::open(
            &cfg.workdir.join("repo.git"),
            &cfg.remote,
            &cfg.branch,
            &cfg.dispatcher_id,
            cfg.access.clone(),
        )?;
        let swept = Scratch::sweep();
        if swept > 0 {
            say(&format!(
                "removed {swept} scratch folder(s) left by dispatchers that were killed"
            ));
        }
        // Handlers may run as another user: they must be able to reach their files, not list them.
        let scratch =
            Scratch::create(0o711).map_err(io_err("could not create a scratch directory"))?;
        let runs = scratch.path().join(RUNS);
        fs::create_dir(&runs)
            .and_then(|()| fs::set_permissions(&runs, fs::Permissions::from_mode(0o711)))
            .map_err(io_err("scratch directory"))?;
        // Descendants that escape a handler's process group are re-parented to the dispatcher, where
        // they can be found and killed when their run ends.
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            say(&format!("warning: could not become a child subreaper: {e}"));
        }
        crate::secrets::install_global(cfg.redactor.clone());
        let (sender, events) = mpsc::channel();
        let jobs = cfg.jobs;
        let now = Instant::now();
        let cfg_poll = cfg.poll_interval;
        Ok(Self {
            cfg,
            sync,
            inbox: Inbox::default(),
            snapshot: None,
            staged: Vec::new(),
            running: HashMap::new(),
            finished: Vec::new(),
            watchdogged: std::collections::HashSet::new(),
            scratch,
            events,
            sender,
            journal: Arc::new(journal),
            stop: Arc::new(Stop::new(jobs)),
            resume: HashMap::new(),
            _workdir_lock: workdir_lock,
            metrics: Arc::new(Metrics::new(cfg_poll)),
            progress_shown: None,
            waiting: 0,
            started: now,
            recovered: false,
            shutting_down: false,
            gave_up: None,
            took_one: false,
            next_sync: now,
            sync_failures: 0,
            checked_when_empty: false,
            unpushed_since: None,
            unpushed_counted: HashMap::new(),
            next_push: now,
            push_failures: 0,
            summary: Summary::default(),
        })
    }

    /// Runs until the mode says to stop, or SIGTERM/SIGINT.
    pub(crate) fn serve(mut self) -> Result<Summary, DaemonError> {
        self.listen_for_signals();
        let _watcher = self.watch_remote();
        if let Some(addr) = self.cfg.metrics_addr {
            self.metrics
                .serve(addr)
                .map_err(io_err(format!("could not serve metrics on `{addr}`")))?;
            say(&format!(
                "metrics on http://{addr}/metrics, health on http://{addr}/healthz"
            ));
        }
        let watchdog = sd_notify::watchdog_enabled();
        let mut ready_sent = false;
        say(&format!(
            "serving `{}` (branch `{}`) from `{}`",
            self.cfg.remote,
            self.cfg.branch,
            self.cfg.workdir.display()
        ));
        if !self.sync.unpushed_commits()?.is_empty() {
            self.unpushed_since = Some(Instant::now());
        }
        loop {
            if watchdog.is_some() {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
            if !ready_sent && self.sync.tip().is_some() {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
                ready_sent = true;
            }
            self.handle_pending_events()?;
            if self.shutting_down && self.running.is_empty() {
                if let Some(why) = self.gave_up.take() {
                    self.persist()?;
                    return Err(DaemonError::Remote(format!(
                        "{why}{}",
                        self.unpushed_note()
                    )));
                }
                self.flush()?;
                return Ok(std::mem::take(&mut self.summary));
            }
            if !self.shutting_down && Instant::now() >= self.next_sync {
                self.sync_step()?;
            }
            if !self.recovered && self.sync.tip().is_some() {
                self.recover()?;
                self.recovered = true;
            }
            let backlog = if self.sync.tip().is_some() && !self.shutting_down {
                self.take()?
            } else {
                0
            };
            self.waiting = backlog;
            for report in std::mem::take(&mut self.finished) {
                self.finish(report)?;
            }
            self.watchdog()?;
            if self.push_due(backlog) {
                self.push_step()?;
            }
            if self.running.is_empty() && backlog == 0 && self.sync.tip().is_some() {
                let done = match self.cfg.mode {
                    Mode::Serve => false,
                    Mode::Once => true,
                    Mode::UntilEmpty => {
                        // Only a look at the remote that worked tells the inbox is empty: after a
                        // failed one, the sync's retries go on until they give up.
                        if self.checked_when_empty && self.sync_failures == 0 {
                            true
                        } else if self.checked_when_empty {
                            false
                        } else {
                            self.checked_when_empty = true;
                            self.next_sync = Instant::now();
                            continue;
                        }
                    }
                };
                if done {
                    self.flush()?;
                    return Ok(std::mem::take(&mut self.summary));
                }
            }
            self.wait(watchdog.map(|w| w / 2))?;
        }
    }

    /// Fetches, then validates and routes every waiting request and says what would happen to it, in
    /// the order it would be taken. Nothing runs, nothing is committed or pushed.
    pub(crate) fn dry_run(mut self) -> Result<Vec<String>, DaemonError> {
        self.sync.fetch().map_err(|e| match e {
            e if e.is_transient() => DaemonError::Remote(e.to_string()),
            e => e.into(),
        })?;
        self.sync.reconcile()?;
        let tip = self.sync.tip().expect("reconcile sets the local branch");
        self.refresh_snapshot(tip)?;
        let entries = self
            .inbox
            .list(&self.sync.repo, tip)
            .map_err(SyncError::from)?;
        let mut lines = Vec::new();
        for entry in entries.iter() {
            let checked = self
                .check(entry)
                .and_then(|request| self.secret_env(entry, &request).map(|_| request));
            lines.push(match checked {
                Ok(r) => format!(
                    "would run    {}  kind={} handler={} resource={} timeout={}",
                    r.id,
                    r.kind,
                    r.route.handler_path,
                    r.resource,
                    humantime::format_duration(r.timeout)
                ),
                Err(rejection) => format!(
                    "would reject {}  {}",
                    entry.path,
                    self.cfg.redactor.redact(&rejection.error)
                ),
            });
        }
        Ok(lines)
    }

    /// Blocks until an event or the next deadline.
    fn wait(&mut self, at_most: Option<Duration>) -> Result<(), DaemonError> {
        // Shutting down, nothing syncs: its time does not count (a past one would spin).
        let mut deadline = match self.shutting_down {
            true => Instant::now() + Duration::from_secs(3600),
            false => self.next_sync,
        };
        if let Some(limit) = at_most {
            deadline = deadline.min(Instant::now() + limit);
        }
        // Wake for the watchdog too: a stuck run sends no event. A run whose handler has not started
        // yet has no deadline, so look again within a second while anything runs.
        for run in self.running.values().filter(|r| !r.ended) {
            deadline = deadline.min(match run.in_flight.get() {
                Some((_, started)) => {
                    started
                        + run.request.timeout
                        + run.request.route.spec.grace * 2
                        + Duration::from_millis(50)
                }
                None => Instant::now() + Duration::from_secs(1),
            });
        }
        if let Some(since) = self.unpushed_since.filter(|_| self.gave_up.is_none()) {
            deadline = deadline.min((since + self.cfg.push_batch).max(self.next_push));
        }
        let timeout = deadline.saturating_duration_since(Instant::now());
        match self.events.recv_timeout(timeout) {
            Ok(event) => self.handle(event),
            Err(RecvTimeoutError::Timeout) => Ok(()),
            Err(RecvTimeoutError::Disconnected) => unreachable!("the daemon holds a sender"),
        }
    }

    fn handle_pending_events(&mut self) -> Result<(), DaemonError> {
        while let Ok(event) = self.events.try_recv() {
            self.handle(event)?;
        }
        Ok(())
    }

    fn handle(&mut self, event: Event) -> Result<(), DaemonError> {
        match event {
            Event::Finished(report) if self.watchdogged.remove(&report.key) => {
                crate::log::event(
                    "watchdog",
                    Some(&report.key),
                    "a run recorded abandoned by the watchdog reported after all; its report is ignored",
                );
                Ok(())
            }
            Event::Finished(report) => {
                // Recorded after the next request is started: its handler runs while this one's
                // outcome is committed.
                if let Some(run) = self.running.get_mut(&report.key) {
                    run.ended = true;
                }
                self.finished.push(*report);
                Ok(())
            }
            Event::RemoteChanged => {
                self.next_sync = Instant::now();
                Ok(())
            }
            Event::Signal(signal) => {
                if self.shutting_down && signal == signal_hook::consts::SIGINT {
                    say("second interrupt: exiting at once");
                    std::process::exit(130);
                }
                if !self.shutting_down {
                    say(&format!(
                        "signal {signal}: taking no new request; finishing {} running, then pushing",
                        self.running.len()
                    ));
                }
                self.shutting_down = true;
                self.stop.request();
                Ok(())
            }
        }
    }

    /// Reconciles the runs a previous process left in the journal: an outcome already committed is
    /// forgotten; a request still in the inbox is recorded `abandoned` with its partial log, or, for an
    /// idempotent kind with retries left, runs again as its next attempt.
    fn recover(&mut self) -> Result<(), DaemonError> {
        let tip = self.sync.tip().expect("recover runs after the first sync");
        self.refresh_snapshot(tip)?;
        let inbox = self
            .inbox
            .list(&self.sync.repo, tip)
            .map_err(SyncError::from)?;
        for item in self.journal.entries().map_err(io_err("journal"))? {
            let entry = match item {
                Ok(entry) => entry,
                Err((path, e)) => {
                    say(&format!(
                        "journal entry `{}` is unreadable ({e}); removing it",
                        path.display()
                    ));
                    let _ = fs::remove_file(&path);
                    continue;
                }
            };
            let waiting = inbox
                .iter()
                .find(|e| e.path == entry.request_path && e.oid.to_string() == entry.request_blob);
            let Some(waiting) = waiting.filter(|_| !self.is_taken(&entry.key)) else {
                // Recorded before the crash (or the request was withdrawn): nothing is in flight.
                self.journal.finish(&entry.key).map_err(io_err("journal"))?;
                continue;
            };
            if let (Some(recorded), Some(logs)) =
                (&entry.outcome, self.journal.recorded_logs(&entry))
            {
                event(
                    "recover",
                    Some(&entry.key),
                    &format!(
                        "{}: the outcome was committed in memory when the dispatcher stopped; committing it again",
                        recorded.state
                    ),
                );
                let written = crate::outcome::recommit(&self.sync, &entry, recorded, &logs)?;
                if self
                    .written(&entry.key, &entry.request_path, written)?
                    .is_some()
                {
                    self.staged(&entry.key, recorded.kind.as_deref(), &recorded.state, None)?;
                }
                continue;
            }
            let mut logs = Vec::new();
            for attempt in 1..=entry.attempt {
                let mut bytes =
                    fs::read(self.journal.log_path(&entry.key, attempt)).unwrap_or_default();
                if attempt == entry.attempt {
                    bytes.extend_from_slice(
                        format!(
                            "\n[git-dispatch: the dispatcher stopped while attempt {attempt} ran (started {}); \
                             the output ends here]\n",
                            entry.started_at
                        )
                        .as_bytes(),
                    );
                }
                logs.push(AttemptLog::from_bytes(bytes));
            }
            let checked = self.check(waiting);
            let retry = checked.as_ref().ok().filter(|r| {
                r.id == entry.key
                    && r.route.spec.idempotent
                    && entry.attempt < 1 + r.route.spec.retries
            });
            if retry.is_some() {
                event(
                    "recover",
                    Some(&entry.key),
                    &format!(
                        "attempt {} was interrupted by a crash; the kind is idempotent: running attempt {}",
                        entry.attempt,
                        entry.attempt + 1
                    ),
                );
                self.resume.insert(
                    entry.request_path.clone(),
                    Resume {
                        next_attempt: entry.attempt + 1,
                        logs,
                    },
                );
                continue;
            }
            let kind = checked.as_ref().ok().map(|r| r.kind.clone());
            let mut outcome = self.outcome(waiting, entry.key.clone(), kind, State::Abandoned);
            if let Ok(request) = &checked {
                outcome.handler = Some(request.route.handler_path.clone());
                outcome.handler_blob = request.route.handler_blob;
            }
            outcome.attempts = entry.attempt;
            outcome.started_at = humantime::parse_rfc3339(&entry.started_at).ok();
            outcome.error = Some(format!(
                "the dispatcher stopped while attempt {} ran (started {}); {}",
                entry.attempt,
                entry.started_at,
                match &checked {
                    Ok(r) if !r.route.spec.idempotent => format!(
                        "kind `{}` is not `idempotent: true`, so it is not run again",
                        r.kind
                    ),
                    Ok(_) => "no retries are left".to_owned(),
                    Err(_) => "the request no longer passes its checks".to_owned(),
                }
            ));
            outcome.logs = logs;
            crate::log::event_with(
                "recover",
                Some(&entry.key),
                &format!("abandoned: {}", outcome.error.as_deref().unwrap_or("")),
                outcome.log_fields(),
            );
            self.record(&outcome)?;
        }
        Ok(())
    }

    /// The stale-run watchdog: a run whose handler started longer ago than its timeout plus twice its
    /// grace, and whose process is gone, while its worker never reported, is recorded `abandoned`
    /// (with what its log holds and a line saying why). The sandbox kills every handler by then, so
    /// this only fires when a worker is stuck; the request does not stay in flight for ever.
    fn watchdog(&mut self) -> Result<(), DaemonError> {
        let stale: Vec<String> = self
            .running
            .iter()
            .filter(|(_, run)| !run.ended)
            .filter_map(|(key, run)| {
                let (pid, started) = run.in_flight.get()?;
                let limit = run.request.timeout + run.request.route.spec.grace * 2;
                let alive = Path::new(&format!("/proc/{pid}")).exists();
                (started.elapsed() > limit && !alive).then(|| key.clone())
            })
            .collect();
        for key in stale {
            let run = self.running.remove(&key).expect("listed from running");
            let attempt = self.journal_attempt(&key);
            let mut log = fs::read(self.journal.log_path(&key, attempt)).unwrap_or_default();
            let why = format!(
                "the run was in flight longer than its timeout plus grace ({}) with no live handler \
                 process; the stale-run watchdog recorded it abandoned",
                humantime::format_duration(run.request.timeout + run.request.route.spec.grace * 2)
            );
            log.extend_from_slice(format!("\n[git-dispatch: {why}]\n").as_bytes());
            let mut outcome = self.outcome(
                &run.entry,
                key.clone(),
                Some(run.request.kind.clone()),
                State::Abandoned,
            );
            outcome.handler = Some(run.request.route.handler_path.clone());
            outcome.handler_blob = run.request.route.handler_blob;
            outcome.attempts = attempt;
            outcome.logs = run.prior_logs;
            outcome.logs.push(AttemptLog::from_bytes(log));
            outcome.error = Some(why.clone());
            crate::log::event_with(
                "watchdog",
                Some(&key),
                &format!("abandoned: {why}"),
                outcome.log_fields(),
            );
            run.in_flight.abandon();
            // Its worker is stuck with the slot: the runs after it must not wait for it.
            if run.in_flight.give_back_slot() {
                self.stop.give_back();
            }
            self.watchdogged.insert(key);
            self.record(&outcome)?;
        }
        Ok(())
    }

    /// The attempt the journal says a run is at (1 when it cannot tell).
    fn journal_attempt(&self, key: &str) -> u32 {
        self.journal
            .entries()
            .ok()
            .into_iter()
            .flatten()
            .flatten()
            .find(|e| e.key == key)
            .map_or(1, |e| e.attempt)
    }

    /// Looks at the remote's head; fetches and reconciles only when it moved.
    fn sync_step(&mut self) -> Result<(), DaemonError> {
        // A reconcile may move the branch, which writes out what is in memory.
        self.persist()?;
        let seen = self.sync.remote_tip();
        let result = (|| {
            let head = self.sync.probe()?;
            if head.is_none() || head != self.sync.remote_tip() || self.sync.tip().is_none() {
                self.sync.fetch()?;
            }
            match self.sync.rewritten_since(seen)? {
                true => Ok::<_, SyncError>((true, self.sync.reconcile_rewritten()?)),
                false => Ok((false, self.sync.reconcile()?)),
            }
        })();
        match result {
            Ok((rewritten, reconciled)) => {
                if rewritten {
                    self.rewritten(seen, &reconciled);
                }
                for key in &reconciled.already_recorded {
                    event(
                        "sync",
                        Some(key),
                        "the remote already records an outcome; the local one is dropped",
                    );
                    self.metrics.already_recorded();
                    if let Some(state) = self.unpushed_counted.remove(key) {
                        self.summary.recorded -= 1;
                        if let Some(n) = self.summary.by_state.get_mut(&state) {
                            *n -= 1;
                        }
                        self.summary.by_state.retain(|_, n| *n > 0);
                    }
                }
                for (key, path) in &reconciled.changed {
                    self.changed_after_taken(key, path, "another version");
                }
                if reconciled.replayed > 0 {
                    say(&format!(
                        "the remote moved: re-created {} unpushed outcome(s) on its tip",
                        reconciled.replayed
                    ));
                    // Outcomes pushed before a rewrite of the remote are unpushed again.
                    self.unpushed_since.get_or_insert_with(Instant::now);
                }
                self.sync_failures = 0;
                self.metrics.synced();
                self.next_sync = Instant::now() + self.cfg.poll_interval;
                Ok(())
            }
            Err(e) if e.is_transient() => {
                self.sync_failures += 1;
                self.metrics.sync_failed(&e.to_string());
                let delay = backoff(self.sync_failures);
                let last =
                    self.cfg.mode != Mode::Serve && self.sync_failures >= self.cfg.push_attempts;
                say(&format!(
                    "{e} ({})",
                    attempt_note(self.sync_failures, self.cfg.push_attempts, last, delay)
                ));
                if last {
                    let drain = match self.cfg.mode {
                        Mode::UntilEmpty => {
                            "; the inbox could not be looked at, so it is not drained"
                        }
                        _ => "",
                    };
                    return self.give_up(format!(
                        "{e}: gave up after {} attempts{drain}",
                        self.sync_failures
                    ));
                }
                self.next_sync = Instant::now() + delay;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Says that the remote's head no longer descends from `seen`, the head last fetched or pushed:
    /// the branch was rewritten (reset, or force-pushed). The local branch follows the remote's, with
    /// the outcome commits it lacks re-created on it by [`Sync::reconcile_rewritten`] (skipping ids
    /// it records already): a request that ran is not run again because a rewrite put it back in the
    /// inbox.
    fn rewritten(&self, seen: Option<Oid>, reconciled: &crate::git::sync::Reconciled) {
        let short = |oid: Option<Oid>| oid.map(crate::git::view::short).unwrap_or_default();
        say(&format!(
            "the remote branch `{}` was rewritten: its head {} does not descend from {}, the head last \
             fetched or pushed; following it, {} outcome commit(s) it lacks are re-created on it and \
             will be pushed, {} other commit(s) it lacks are dropped",
            self.cfg.branch,
            short(self.sync.remote_tip()),
            short(seen),
            reconciled.replayed,
            reconciled.dropped
        ));
        self.metrics.remote_rewritten();
    }

    /// Takes requests in arrival order while there is room: records rejections at once, starts the
    /// rest. Returns how many requests wait (not counting running ones).
    ///
    /// With one job, the next request is taken while the current one runs: validated, its worker
    /// started and its request copy written, it waits for the slot, which the current run gives up
    /// as soon as its handler is gone (see [`crate::run::runner`]). Its journal entry is written only
    /// then, so a stop before leaves it in the inbox, untouched. That takes the work of taking a
    /// request off the time between two handlers.
    fn take(&mut self) -> Result<usize, DaemonError> {
        let tip = self.sync.tip().expect("take runs after the first sync");
        self.refresh_snapshot(tip)?;
        let entries = self
            .inbox
            .list(&self.sync.repo, tip)
            .map_err(SyncError::from)?;
        self.metrics.queue(entries.len());
        let mut waiting = 0;
        let mut skipped = 0;
        let mut busy: Vec<String> = self
            .running
            .values()
            .filter(|r| !r.ended)
            .map(|r| r.request.resource.clone())
            .collect();
        let ahead = usize::from(self.cfg.jobs == 1 && self.cfg.mode != Mode::Once);
        for (i, entry) in entries.iter().enumerate() {
            if self.running.values().any(|r| r.entry.path == entry.path) {
                continue;
            }
            if self.cfg.mode == Mode::Once && self.took_one {
                break;
            }
            if self.running.values().filter(|r| !r.ended).count() >= self.cfg.jobs + ahead {
                waiting += entries[i..].len();
                break;
            }
            let checked = self
                .check(entry)
                .and_then(|request| self.secret_env(entry, &request).map(|env| (request, env)));
            match checked {
                Err(rejection) => {
                    self.took_one = true;
                    self.reject(entry, rejection)?;
                }
                Ok((request, _)) if ahead == 0 && busy.contains(&request.resource) => {
                    // Its resource is taken: look further, but only so far, so that a long queue on
                    // one resource costs no more than a short one.
                    skipped += 1;
                    if skipped >= LOOKAHEAD {
                        waiting += entries[i..].len();
                        break;
                    }
                    waiting += 1;
                }
                Ok((request, secrets)) => {
                    self.took_one = true;
                    busy.push(request.resource.clone());
                    self.start(entry.clone(), request, secrets)?;
                }
            }
        }
        Ok(waiting)
    }

    fn check(&self, entry: &InboxEntry) -> Result<Request, Rejection> {
        let repo = &self.sync.repo;
        let size = repo
            .odb()
            .and_then(|odb| odb.read_header(entry.oid))
            .map(|(size, _)| size as u64)
            .unwrap_or(0);
        let candidate = Candidate {
            path: &entry.path,
            entry: entry.kind,
            size,
            max_size: self.cfg.max_request_size,
        };
        let catalog = &self
            .snapshot
            .as_ref()
            .expect("refresh_snapshot ran")
            .catalog;
        request::check(
            &candidate,
            || {
                repo.find_blob(entry.oid)
                    .map(|b| b.content().to_vec())
                    .map_err(io::Error::other)
            },
            catalog,
            &|id| self.is_taken(id),
        )
    }

    /// The kind's `secrets`, as environment variables; naming one the host lacks rejects the request.
    fn secret_env(
        &self,
        entry: &InboxEntry,
        request: &Request,
    ) -> Result<Vec<(String, String)>, Rejection> {
        request
            .route
            .spec
            .secrets
            .iter()
            .map(|name| match self.cfg.secrets.get(name) {
                Some(value) => Ok((name.clone(), value.to_owned())),
                None => Err(Rejection {
                    id: Some(request.id.clone()),
                    kind: Some(request.kind.clone()),
                    error: format!(
                        "request `{}`: kind `{}` needs the secret `{name}`, which {}",
                        entry.path,
                        request.kind,
                        if self.cfg.secrets.is_empty() {
                            "is not defined: the dispatcher has no --secrets-file".to_owned()
                        } else {
                            "the dispatcher's --secrets-file does not define".to_owned()
                        }
                    ),
                }),
            })
            .collect()
    }

    /// Whether `key` has an outcome at the tip or is running.
    fn is_taken(&self, key: &str) -> bool {
        if self.running.contains_key(key) {
            return true;
        }
        self.sync.tip().is_some_and(|tip| {
            let tree = self.sync.repo.find_commit(tip).and_then(|c| c.tree());
            tree.is_ok_and(|tree| layout::is_recorded(&tree, key))
        })
    }

    fn refresh_snapshot(&mut self, tip: Oid) -> Result<(), DaemonError> {
        let trees = Snapshot::trees_of(&self.sync.repo, tip).map_err(SyncError::from)?;
        if self.snapshot.as_ref().is_none_or(|s| s.trees != trees) {
            let snapshot = Snapshot::load(
                &self.sync.repo,
                tip,
                self.scratch.path(),
                self.cfg.handlers_dir.as_deref(),
            )
            .map_err(io_err("could not write out the handlers"))?;
            for problem in snapshot.catalog.problems() {
                say(&format!("configuration: {problem}"));
            }
            self.snapshot = Some(snapshot);
        }
        Ok(())
    }

    fn reject(&mut self, entry: &InboxEntry, rejection: Rejection) -> Result<(), DaemonError> {
        let key = match &rejection.id {
            Some(id) if !self.is_taken(id) => id.clone(),
            Some(id) => free_key(id, |k| self.is_taken(k)),
            // No id could be read: the default id, the file stem, where it is a valid unused one.
            None => match request_stem(&entry.name) {
                Some(stem) if is_valid_name(stem) && !self.is_taken(stem) => stem.to_owned(),
                stem => free_key(&sanitize(stem.unwrap_or(&entry.name)), |k| self.is_taken(k)),
            },
        };
        let error = self.cfg.redactor.redact(&rejection.error);
        let mut outcome = self.outcome(entry, key, rejection.kind, State::Rejected);
        outcome.logs.push(AttemptLog::text(&format!("{error}\n")));
        outcome.error = Some(error);
        crate::log::event_with(
            "reject",
            Some(&outcome.key),
            &format!("rejected: {}", outcome.error.as_deref().unwrap_or_default()),
            outcome.log_fields(),
        );
        self.record(&outcome)
    }

    fn outcome(
        &self,
        entry: &InboxEntry,
        key: String,
        kind: Option<String>,
        state: State,
    ) -> Outcome {
        Outcome {
            key,
            kind,
            state,
            error: None,
            exit_code: None,
            signal: None,
            attempts: 0,
            request_path: entry.path.clone(),
            request_blob: entry.oid,
            request_is_file: matches!(entry.kind, crate::git::view::EntryType::File { .. }),
            submitted_in: entry.arrival.commit,
            submitted_at: entry.arrival.time,
            started_at: None,
            finished_at: SystemTime::now(),
            duration: None,
            handler: None,
            handler_blob: None,
            dispatcher: self.cfg.dispatcher_id.clone(),
            logs: Vec::new(),
        }
    }

    fn start(
        &mut self,
        entry: InboxEntry,
        request: Request,
        secrets: Vec<(String, String)>,
    ) -> Result<(), DaemonError> {
        let key = request.id.clone();
        let handlers = self
            .snapshot
            .as_ref()
            .and_then(|s| s.handlers.clone())
            .expect("a routed handler exists in handlers/");
        let request_bytes = self
            .sync
            .repo
            .find_blob(entry.oid)
            .map_err(SyncError::from)?
            .content()
            .to_vec();
        let resumed = self.resume.remove(&entry.path);
        let (first_attempt, prior_logs) = match resumed {
            Some(r) => (r.next_attempt, r.logs),
            None => (1, Vec::new()),
        };
        let in_flight = Arc::new(InFlight::default());
        let plan = Plan {
            key: key.clone(),
            request_path: entry.path.clone(),
            request_blob: entry.oid,
            request_bytes,
            handlers,
            runs_dir: self.scratch.path().join(RUNS),
            first_attempt,
            extra_env: self.cfg.fixed_env.iter().cloned().chain(secrets).collect(),
            lock_dir: self.cfg.lock_dir.clone(),
            log_limit: request.route.spec.log_limit.unwrap_or(self.cfg.log_limit),
            user: self.cfg.run_as.clone(),
            redactor: self.cfg.redactor.clone(),
            journal: Arc::clone(&self.journal),
            stop: Arc::clone(&self.stop),
            ticket: self.stop.ticket(),
            in_flight: Arc::clone(&in_flight),
            request: request.clone(),
        };
        let sender = self.sender.clone();
        runner::spawn(plan, move |report| {
            let _ = sender.send(Event::Finished(Box::new(report)));
        });
        self.running.insert(
            key,
            Running {
                ended: false,
                in_flight,
                entry,
                request,
                prior_logs,
            },
        );
        Ok(())
    }

    /// Records the outcome of a run that ended.
    fn finish(&mut self, report: Report) -> Result<(), DaemonError> {
        let running = self
            .running
            .remove(&report.key)
            .expect("every finished run was started");
        if report.cancelled {
            event(
                "run",
                Some(&report.key),
                "not started: the dispatcher is stopping; the request stays in the inbox",
            );
            return Ok(());
        }
        if let Some(fatal) = report.fatal {
            // The dispatcher could not carry the run. Attempts that did run are in the journal, and
            // the request is still in the inbox: the next start records them.
            return Err(DaemonError::Runner(fatal));
        }
        let request = &running.request;
        let mut outcome = self.outcome(
            &running.entry,
            report.key.clone(),
            Some(request.kind.clone()),
            State::Failed,
        );
        outcome.handler = Some(request.route.handler_path.clone());
        outcome.handler_blob = request.route.handler_blob;
        outcome.logs = running.prior_logs;
        for attempt in report.attempts {
            outcome.attempts = attempt.number;
            outcome.error = None;
            outcome.exit_code = None;
            outcome.signal = None;
            match attempt.result {
                Ok(finished) => {
                    outcome.started_at.get_or_insert(finished.started);
                    outcome.duration = Some(finished.duration);
                    match finished.termination {
                        Termination::Exited(code) => outcome.exit_code = Some(code),
                        Termination::Signaled(signal) => outcome.signal = Some(signal),
                    }
                    outcome.state = if finished.timed_out {
                        outcome.error = Some(format!(
                            "timed out after {}",
                            humantime::format_duration(request.timeout)
                        ));
                        State::TimedOut
                    } else if finished.termination == Termination::Exited(0) {
                        State::Succeeded
                    } else {
                        State::Failed
                    };
                    let bytes = fs::read(&attempt.log_file).map_err(io_err("handler log"))?;
                    outcome.logs.push(AttemptLog {
                        bytes,
                        summary: finished.log,
                        in_journal: true,
                    });
                }
                Err(e) => {
                    outcome.state = State::Failed;
                    outcome.error = Some(e.to_string());
                    outcome.logs.push(AttemptLog::text(&format!("{e}\n")));
                }
            }
        }
        crate::log::event_with(
            "record",
            Some(&outcome.key),
            &outcome.state.to_string(),
            outcome.log_fields(),
        );
        self.record(&outcome)
    }

    fn record(&mut self, outcome: &Outcome) -> Result<(), DaemonError> {
        let mut outcome = outcome.clone();
        if let Some(error) = &outcome.error {
            outcome.error = Some(self.cfg.redactor.redact(error));
        }
        let parent = self.sync.tip();
        let written = outcome.record(&self.sync)?;
        let Some(commit) = self.written(&outcome.key, &outcome.request_path, written)? else {
            return Ok(());
        };
        if let (Some(parent), Written::Committed { changed: None, .. }) = (parent, written) {
            self.inbox
                .taken_out(&self.sync.repo, parent, commit, &outcome.request_path)
                .map_err(SyncError::from)?;
        }
        let rewrite: Vec<Option<&[u8]>> = outcome
            .logs
            .iter()
            .map(|l| (!l.in_journal).then_some(l.bytes.as_slice()))
            .collect();
        self.journal
            .recorded(&outcome.key, &outcome.journaled(), &rewrite)
            .map_err(io_err("journal"))?;
        let kind = self.kind_label(outcome.kind.as_deref());
        self.staged(
            &outcome.key,
            Some(kind),
            &outcome.state.to_string(),
            outcome.duration,
        )
    }

    /// The `kind` label of `/metrics`: a kind the index lists, else `unknown`, so that what a
    /// submitter writes cannot grow the number of series without bound.
    fn kind_label<'k>(&self, kind: Option<&'k str>) -> &'k str {
        match (kind, &self.snapshot) {
            (Some(kind), Some(snapshot)) if snapshot.catalog.kinds().contains(&kind) => kind,
            _ => metrics::UNKNOWN_KIND,
        }
    }

    /// Says what an outcome commit found that the run did not expect; returns the commit, if one was
    /// made. A key recorded already gets none: its run is reported and its journal entry closed.
    fn written(
        &mut self,
        key: &str,
        request_path: &str,
        written: Written,
    ) -> Result<Option<Oid>, DaemonError> {
        match written {
            Written::AlreadyRecorded => {
                event(
                    "record",
                    Some(key),
                    &format!(
                        "not recorded: `{}` already records an outcome for this id (another \
                         dispatcher recorded it while this one ran it); this run's outcome is dropped",
                        layout::Place::Sharded.status(key)
                    ),
                );
                self.metrics.already_recorded();
                if self.watchdogged.contains(key) {
                    self.journal.discard(key)
                } else {
                    self.journal.finish(key)
                }
                .map_err(io_err("journal"))?;
                Ok(None)
            }
            Written::Committed { commit, changed } => {
                if let Some(blob) = changed {
                    self.changed_after_taken(key, request_path, &format!("blob {blob}"));
                }
                Ok(Some(commit))
            }
        }
    }

    /// Reports a request file changed after it was taken: the version now there stays in the inbox.
    fn changed_after_taken(&self, key: &str, request_path: &str, now: &str) {
        event(
            "record",
            Some(key),
            &format!(
                "`{request_path}` was changed after it was taken (it now holds {now}): the outcome \
                 records the version that ran, and the changed file stays in `requests/` as a new \
                 submission"
            ),
        );
        self.metrics.changed_after_taken();
    }

    /// Counts an outcome committed in memory, and writes the outcomes out when they are many.
    fn staged(
        &mut self,
        key: &str,
        kind: Option<&str>,
        state: &str,
        duration: Option<Duration>,
    ) -> Result<(), DaemonError> {
        crate::failpoint::hit("recorded");
        self.staged.push(key.to_owned());
        self.metrics.recorded(kind, state, duration);
        if self.sync.staging_full() {
            self.persist()?;
        }
        self.summary.recorded += 1;
        *self.summary.by_state.entry(state.to_owned()).or_default() += 1;
        self.unpushed_counted
            .insert(key.to_owned(), state.to_owned());
        self.unpushed_since.get_or_insert_with(Instant::now);
        self.checked_when_empty = false;
        self.show_progress();
        Ok(())
    }

    /// Writes the outcomes recorded in memory to the workdir, then closes their journal entries: from
    /// here on a crash finds them recorded, not interrupted.
    fn persist(&mut self) -> Result<(), DaemonError> {
        self.sync.persist()?;
        if self.staged.is_empty() {
            return Ok(());
        }
        crate::failpoint::hit("committed");
        for key in std::mem::take(&mut self.staged) {
            if self.watchdogged.contains(&key) {
                self.journal.discard(&key)
            } else {
                self.journal.finish(&key)
            }
            .map_err(io_err("journal"))?;
        }
        Ok(())
    }

    /// `--until-empty` on a terminal: done of total and the rate, at most once a second.
    fn show_progress(&mut self) {
        use std::io::IsTerminal;
        if self.cfg.mode != Mode::UntilEmpty || !std::io::stderr().is_terminal() {
            return;
        }
        if self
            .progress_shown
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.progress_shown = Some(Instant::now());
        let done = self.summary.recorded;
        let total = done + self.running.len() + self.waiting;
        let rate = done as f64 / self.started.elapsed().as_secs_f64().max(0.001);
        say(&format!(
            "progress: {done} of {total} done ({rate:.1} requests/s)"
        ));
    }

    /// Push now when the queue is idle or the oldest unpushed outcome waited a batch window.
    fn push_due(&self, backlog: usize) -> bool {
        let Some(since) = self.unpushed_since.filter(|_| self.gave_up.is_none()) else {
            return false;
        };
        let now = Instant::now();
        now >= self.next_push && (backlog == 0 || now >= since + self.cfg.push_batch)
    }

    fn push_step(&mut self) -> Result<(), DaemonError> {
        self.persist()?;
        let pending = self.sync.unpushed_commits()?.len();
        if pending == 0 {
            self.unpushed_since = None;
            return Ok(());
        }
        if self.push_failures > 0 {
            self.metrics.push_retried();
        }
        match self.sync.push() {
            Ok(()) => {
                event("push", None, &format!("pushed {pending} outcome(s)"));
                self.unpushed_counted.clear();
                self.push_failures = 0;
                self.unpushed_since = None;
                self.sync.reopen_if_stale();
                Ok(())
            }
            Err(e) if e.is_transient() => {
                self.push_failures += 1;
                self.metrics.push_failed();
                let delay = if self.push_failures == 1 && matches!(e, SyncError::Rejected { .. }) {
                    Duration::ZERO
                } else {
                    backoff(self.push_failures)
                };
                let last = (self.cfg.mode != Mode::Serve || self.shutting_down)
                    && self.push_failures >= self.cfg.push_attempts;
                say(&format!(
                    "{e} ({})",
                    attempt_note(self.push_failures, self.cfg.push_attempts, last, delay)
                ));
                if matches!(e, SyncError::Rejected { .. }) {
                    // Most often the remote moved: re-create the outcomes on its new tip.
                    if let Err(e) = self.sync.fetch().and_then(|_| self.sync.reconcile()) {
                        say(&format!("after a rejected push: {e}"));
                    }
                }
                if last {
                    return self.give_up(format!(
                        "{e}: gave up after {} attempts",
                        self.push_failures
                    ));
                }
                self.next_push = Instant::now() + delay;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Gives up on the remote (exit 3), with `why`. Handlers that run are not cut short: as on
    /// SIGTERM, nothing new is taken, they finish, and their outcomes are recorded in the workdir
    /// (the next run pushes them); the dispatcher fails once they are.
    fn give_up(&mut self, why: String) -> Result<(), DaemonError> {
        if self.running.is_empty() {
            return Err(DaemonError::Remote(format!(
                "{why}{}",
                self.unpushed_note()
            )));
        }
        say(&format!(
            "{why}; waiting for {} running handler(s) to finish, to record their outcomes in the \
             workdir",
            self.running.len()
        ));
        self.gave_up = Some(why);
        self.shutting_down = true;
        self.stop.request();
        Ok(())
    }

    /// Pushes until everything is out, or the attempts run out.
    fn flush(&mut self) -> Result<(), DaemonError> {
        while self.unpushed_since.is_some() {
            let wait = self.next_push.saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                // Runs have all ended here; only a second interrupt matters while waiting to push.
                if let Ok(Event::Signal(signal)) = self.events.recv_timeout(wait) {
                    self.handle(Event::Signal(signal))?;
                }
                continue;
            }
            self.push_step()?;
        }
        Ok(())
    }

    fn unpushed_note(&self) -> String {
        let Ok(commits) = self.sync.unpushed_commits() else {
            return String::new();
        };
        if commits.is_empty() {
            return String::new();
        }
        let subjects: Vec<String> = commits
            .iter()
            .filter_map(|oid| self.sync.repo.find_commit(*oid).ok())
            .filter_map(|c| c.summary().ok().flatten().map(str::to_owned))
            .collect();
        format!(
            "; {} outcome(s) are recorded in `{}` but not pushed (the next run pushes them): {}",
            subjects.len(),
            self.cfg.workdir.display(),
            subjects.join("; ")
        )
    }

    fn listen_for_signals(&self) {
        let sender = self.sender.clone();
        let mut signals = signal_hook::iterator::Signals::new([
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGINT,
        ])
        .expect("signal handlers can be installed at start-up");
        thread::spawn(move || {
            for signal in signals.forever() {
                if sender.send(Event::Signal(signal)).is_err() {
                    return;
                }
            }
        });
    }

    /// For a remote on a local path, wakes the loop as soon as its refs change.
    fn watch_remote(&self) -> Option<notify::RecommendedWatcher> {
        let path = local_path(&self.cfg.remote)?;
        let git_dir = if path.join(".git").is_dir() {
            path.join(".git")
        } else {
            path
        };
        let sender = self.sender.clone();
        let refs = git_dir.join("refs/heads");
        let packed = git_dir.join("packed-refs");
        let watched = refs.clone();
        // Only a change of a branch counts: reading the remote (our own fetches and probes) must not
        // wake the loop, or every look at the remote would cause the next.
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else { return };
                let changes = matches!(
                    event.kind,
                    notify::EventKind::Create(_)
                        | notify::EventKind::Modify(_)
                        | notify::EventKind::Remove(_)
                );
                if changes
                    && event
                        .paths
                        .iter()
                        .any(|p| p.starts_with(&watched) || *p == packed)
                {
                    let _ = sender.send(Event::RemoteChanged);
                }
            })
            .ok()?;
        watcher
            .watch(&refs, notify::RecursiveMode::Recursive)
            .ok()?;
        // Packed refs change `packed-refs` in the repository's top folder.
        let _ = watcher.watch(&git_dir, notify::RecursiveMode::NonRecursive);
        Some(watcher)
    }
}

/// Takes the workdir's lock. A lock that is held is waited for a moment first: a dispatcher that was
/// just killed can leave it held by a child it was starting, whose copy of the dispatcher's open
/// files lives until it executes its program (a few milliseconds, more on a loaded machine).
fn lock_workdir(lock: &fs::File, workdir: &Path) -> Result<(), DaemonError> {
    let since = Instant::now();
    loop {
        match lock.try_lock() {
            Ok(()) => return Ok(()),
            Err(fs::TryLockError::WouldBlock) if since.elapsed() < WORKDIR_LOCK_GRACE => {
                thread::sleep(WORKDIR_LOCK_POLL);
            }
            Err(fs::TryLockError::WouldBlock) => {
                return Err(DaemonError::WorkdirInUse(workdir.to_owned()));
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_err("workdir lock")(e)),
        }
    }
}

/// Creates `path` (and its parents) if it does not exist; a folder it creates gets `mode`.
fn create_dir(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if path.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// Removes `*.lock` files under `refs/` and the lock files of `packed-refs`, `config` and `HEAD`.
fn remove_stale_locks(repo: &Path) {
    fn walk(dir: &Path) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path);
            } else if path.extension().is_some_and(|e| e == "lock") {
                say(&format!("removing `{}`, left by a crash", path.display()));
                let _ = fs::remove_file(&path);
            }
        }
    }
    walk(&repo.join("refs"));
    for name in ["packed-refs.lock", "config.lock", "HEAD.lock"] {
        let path = repo.join(name);
        if path.exists() {
            say(&format!("removing `{}`, left by a crash", path.display()));
            let _ = fs::remove_file(&path);
        }
    }
}

/// Exponential backoff with full jitter: a random delay up to `base * 2^(n-1)`, capped.
pub(crate) fn backoff(failures: u32) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(BACKOFF_MAX);
    ceiling.mul_f64(0.5 + fastrand::f64() / 2.0)
}
