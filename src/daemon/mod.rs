//! The loop: sync -> take -> validate -> route -> lock -> run -> record -> push.
//!
//! One thread owns the Git repository and makes every decision (the process's first thread); each
//! handler runs on a worker thread of its own and reports back on the event channel, as do the
//! signal thread and the watcher of a local remote. Outcomes are committed locally as soon as they
//! are known and pushed in batches (at most [`RunConfig::push_batch`] old while a backlog drains, at
//! once when the queue is idle), so draining a backlog does not cost one push per request.
//!
//! Shutdown is passed in ([`Shutdown`]) and arrives as an event like any other: it stops the taking
//! of new requests, never the recording of one that ran.
//!
//! The steps live in the files below, each an `impl Daemon` block over the fields defined here:
//! - `open`: the workdir, its lock, the bare clone, the scratch directory;
//! - `events`: the event channel, signals, the local remote's watcher, waiting;
//! - `sync`: looking at the remote and following it;
//! - `control`: what keeps it from starting requests (paused, drained, a broken index);
//! - `take`: taking requests off the inbox, checking and starting them, rejecting the rest;
//! - `withdraw`: requests whose file left the inbox without an outcome, recorded `cancelled`;
//! - `schedule`: the due slots of `schedules/`, committed as requests;
//! - `route`: the requests left queued for another dispatcher (`runs_on`, `--handlers-dir`);
//! - `claims`: claiming resources before their requests start, the heartbeat, renewals, fencing,
//!   taking over the claims of dispatchers that died, releasing;
//! - `record`: turning reports into outcomes, committing them, writing them out;
//! - `push`: pushing in batches, retrying, giving up on the remote;
//! - `recover`: the journal a previous process left, and the stale-run watchdog;
//! - `service`: what systemd and a terminal see (readiness, watchdog pings, the progress line);
//! - `retry`: backoff and attempt notes; `summary`: the closing line; `metrics`: `/metrics`;
//!   `http`: what `--http-addr` serves; `webhook`: push webhooks.

mod claims;
mod control;
mod dry_run;
mod events;
mod http;
mod identity;
pub(crate) mod metrics;
mod open;
mod page;
mod push;
mod record;
mod recover;
mod retry;
mod route;
mod schedule;
mod service;
mod summary;
mod sync;
mod take;
mod webhook;
mod withdraw;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender};

use thiserror::Error;

use crate::config::{Mode, RunConfig};
use crate::daemon::claims::Claims;
use crate::daemon::events::Event;
use crate::daemon::metrics::Metrics;
use crate::daemon::push::PushState;
use crate::daemon::recover::Resume;
use crate::daemon::service::{Progress, Systemd};
use crate::daemon::sync::SyncState;
use crate::daemon::take::Running;
use crate::git::sync::{Sync, SyncError};
use crate::inbox::queue::Inbox;
use crate::inbox::snapshot::Snapshot;
use crate::run::journal::Journal;
use crate::run::runner::{Report, RunnerError, Stop};
use crate::run::scratch::Scratch;

pub(crate) use events::Shutdown;
pub(crate) use retry::backoff;
pub(crate) use summary::Summary;

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

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> DaemonError {
    let context = context.into();
    move |source| DaemonError::Io { context, source }
}

/// A dispatcher on one workdir: opened by [`Daemon::open`], run by [`Daemon::serve`] (or asked
/// what it would do by [`Daemon::dry_run`]). Only the loop's thread touches it.
pub(crate) struct Daemon {
    cfg: RunConfig,
    /// The bare clone and the remote: the only way to Git.
    sync: Sync,
    /// The queue at the tip, kept between looks so a look costs only what changed.
    inbox: Inbox,
    /// The handlers and the index at the tip, reloaded when their trees change.
    snapshot: Option<Snapshot>,
    /// Requests left queued for another dispatcher (capability routing).
    left: route::Left,
    /// Keys of outcomes recorded in memory and not yet written out; their journal entries stay until
    /// they are (see [`Daemon::persist`]).
    staged: Vec<String>,
    /// Requests whose handler runs now, or ran and waits in `finished` to be recorded, by key. Their
    /// files are still in `requests/` at the tip.
    running: HashMap<String, Running>,
    /// Reports of runs that ended, recorded once the next requests are started.
    finished: Vec<Report>,
    /// Runs the watchdog recorded `abandoned`: a report that still comes is ignored.
    watchdogged: HashSet<String>,
    /// Where handlers and their run folders live on disk; removed at exit.
    scratch: Scratch,
    /// What this host can isolate handlers with.
    isolation: Arc<crate::run::isolate::Isolation>,
    events: Receiver<Event>,
    /// Cloned into every worker, the signal thread and the watcher; holding it, the loop's channel
    /// never disconnects.
    sender: Sender<Event>,
    journal: Arc<Journal>,
    /// Told to every run: stop retrying when shutdown begins.
    stop: Arc<Stop>,
    /// Runs interrupted by a crash that continue as a next attempt, by request path.
    resume: HashMap<String, Resume>,
    /// Whether the journal of a previous process was reconciled (after the first sync).
    recovered: bool,
    metrics: Arc<Metrics>,
    /// The counts and timing of the progress line.
    progress: Progress,
    /// Held for its flock: one dispatcher per workdir.
    _workdir_lock: fs::File,
    /// Set by the first SIGTERM/SIGINT: take nothing new, finish, record, push, exit.
    shutting_down: bool,
    /// Why the dispatcher gave up on the remote while handlers ran: it shuts down as on SIGTERM,
    /// records their outcomes locally, and then fails with this (see [`Daemon::give_up`]).
    gave_up: Option<String>,
    /// Set once `--once` has taken its request.
    took_one: bool,
    /// When the remote is looked at next, and how the last looks went.
    syncing: SyncState,
    /// What is recorded and not pushed yet, and when the next push may be tried.
    push: PushState,
    /// What this process recorded, handed back when the loop ends well.
    summary: Summary,
    /// The claims held and seen, the heartbeat, fencing (see [`crate::claim`]).
    claims: Claims,
    /// `control.yml` as last read, and what blocks the dispatcher.
    switches: control::Switches,
    /// Requests withdrawn from the inbox: what was compared last, runs being stopped.
    withdrawals: withdraw::Withdrawals,
    /// When the first request waiting for its `not_before` (or its approvals' timeout) is due.
    due_at: Option<std::time::Instant>,
    /// With `--trust`: checks who signed a commit.
    verifier: Option<crate::git::verify::Verifier>,
    /// Approval files read, by request id, with the folder's tree they were read from.
    approvals_read: HashMap<String, (git2::Oid, Vec<crate::inbox::approval::Found>)>,
    /// The approvals of requests started, by key, for their outcome.
    approved: HashMap<String, Vec<crate::outcome::Signed>>,
    /// What `--trust` makes of the tip's configuration.
    trust: identity::TrustState,
    /// The schedules as last read, and when the next slot is.
    schedules: schedule::Schedules,
}

impl Drop for Daemon {
    /// However the loop ends, a run still waiting for a slot (one taken ahead) must not start its
    /// handler after it.
    fn drop(&mut self) {
        self.stop.request();
    }
}

/// What the loop does when nothing runs and nothing waits at a known tip.
#[derive(Debug, PartialEq, Eq)]
enum Idle {
    /// Wait for the next event or deadline (serving).
    Wait,
    /// Look at the remote once more before calling the inbox empty (`--until-empty`).
    LookAgain,
    /// Push what is left and stop.
    Done,
}

/// `--until-empty` stops only after a look at the remote that worked found the inbox empty: after a
/// failed one, the sync's retries go on until they give up.
fn when_idle(mode: Mode, checked_when_empty: bool, sync_failures: u32) -> Idle {
    match mode {
        Mode::Serve => Idle::Wait,
        Mode::Once => Idle::Done,
        Mode::UntilEmpty if !checked_when_empty => Idle::LookAgain,
        Mode::UntilEmpty if sync_failures == 0 => Idle::Done,
        Mode::UntilEmpty => Idle::Wait,
    }
}

impl Daemon {
    /// Runs until the mode says to stop, or `shutdown` fires (SIGTERM/SIGINT).
    pub(crate) fn serve(mut self, shutdown: Shutdown) -> Result<Summary, DaemonError> {
        shutdown.forward_to(self.sender.clone());
        let _watcher = self.watch_remote();
        self.announce()?;
        let mut systemd = Systemd::connect();
        loop {
            systemd.ping(self.sync.tip().is_some());
            self.handle_pending_events()?;
            if self.shutting_down && self.running.is_empty() {
                return self.shut_down();
            }
            if !self.shutting_down && !self.push.in_flight() && self.syncing.due() {
                self.sync_step()?;
            }
            self.recover_once()?;
            self.withdrawals_step()?;
            self.schedules_step()?;
            let backlog = self.take_step()?;
            self.record_finished()?;
            self.metrics.running(self.running_now());
            self.watchdog()?;
            self.claims_step()?;
            self.show_fleet();
            if self.push_due(backlog) {
                self.push_step()?;
            }
            // Idle only once a push in flight ended: the look that follows it may find more.
            if self.running.is_empty()
                && backlog == 0
                && self.sync.tip().is_some()
                && !self.push.in_flight()
            {
                match when_idle(
                    self.cfg.mode,
                    self.syncing.checked_when_empty,
                    self.syncing.failures,
                ) {
                    Idle::Wait => {}
                    Idle::LookAgain => {
                        self.syncing.look_again();
                        continue;
                    }
                    Idle::Done => return self.done(),
                }
            }
            self.wait(systemd.wake_every())?;
        }
    }

    /// Once, after the first sync: reconciles the journal a previous process left.
    fn recover_once(&mut self) -> Result<(), DaemonError> {
        if !self.recovered && self.sync.tip().is_some() {
            self.recover()?;
            self.recovered = true;
        }
        Ok(())
    }

    /// Takes what it can while not stopping; returns how many requests wait.
    fn take_step(&mut self) -> Result<usize, DaemonError> {
        let backlog = if self.sync.tip().is_some() && !self.shutting_down {
            self.take()?
        } else {
            0
        };
        self.progress.waiting = backlog;
        Ok(backlog)
    }

    /// Records the runs that ended, after the next ones were started.
    fn record_finished(&mut self) -> Result<(), DaemonError> {
        for report in std::mem::take(&mut self.finished) {
            self.finish(report)?;
        }
        Ok(())
    }

    /// What runs here (handler started): id, kind, since.
    fn running_now(&self) -> Vec<(String, String, String)> {
        let now = std::time::Instant::now();
        let wall = std::time::SystemTime::now();
        let mut all: Vec<(String, String, String)> = self
            .running
            .iter()
            .filter(|(_, r)| !r.ended)
            .filter_map(|(key, r)| {
                let (_, started) = r.in_flight.get()?;
                let since = wall - now.saturating_duration_since(started);
                Some((
                    key.clone(),
                    r.request.kind.clone(),
                    crate::clock::rfc3339(since),
                ))
            })
            .collect();
        all.sort();
        all
    }

    /// Every run ended after shutdown began: fail as the remote was given up on, or push and stop.
    fn shut_down(&mut self) -> Result<Summary, DaemonError> {
        if let Some(why) = self.gave_up.take() {
            self.persist()?;
            return Err(DaemonError::Remote(format!(
                "{why}{}",
                self.unpushed_note()
            )));
        }
        self.done()
    }

    /// Pushes what is left and hands back the counts.
    fn done(&mut self) -> Result<Summary, DaemonError> {
        self.flush()?;
        self.claims_farewell()?;
        self.sync.forget_notes(1);
        Ok(std::mem::take(&mut self.summary))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serving_waits_when_idle_and_once_is_done() {
        for (checked, failures) in [(false, 0), (true, 0), (true, 3)] {
            assert_eq!(when_idle(Mode::Serve, checked, failures), Idle::Wait);
            assert_eq!(when_idle(Mode::Once, checked, failures), Idle::Done);
        }
    }

    #[test]
    fn until_empty_stops_only_after_a_look_at_the_remote_that_worked() {
        // Found empty without a look since: look once more first.
        assert_eq!(when_idle(Mode::UntilEmpty, false, 0), Idle::LookAgain);
        assert_eq!(when_idle(Mode::UntilEmpty, false, 2), Idle::LookAgain);
        // Looked, and it worked: empty.
        assert_eq!(when_idle(Mode::UntilEmpty, true, 0), Idle::Done);
        // Looked, and it failed: the sync's retries go on until they give up.
        assert_eq!(when_idle(Mode::UntilEmpty, true, 1), Idle::Wait);
    }
}
