//! Pushing the outcomes committed locally: in batches while a backlog drains, at once when the
//! queue is idle; retried with backoff; and giving up on the remote when the attempts run out.
//!
//! Over a network a push runs on a thread of its own (a push of 250 outcomes to `git daemon` took
//! 270–335 ms with libgit2, during which the loop started nothing): the loop goes on starting
//! handlers and recording outcomes, and does not fetch, until it ends. One push at a time; the
//! last pushes before the dispatcher stops are made on the loop's thread.
//!
//! The invariant: `PushState::since` is set while any outcome commit is not on the remote (it is
//! cleared only by a push that worked, or by finding nothing to push), so the loop never stops with
//! an outcome that is neither pushed nor reported as left in the workdir.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::daemon::events::Event;
use crate::daemon::retry::{attempt_note, is_last, push_delay};
use crate::daemon::{Daemon, DaemonError};
use crate::git::sync::SyncError;
use crate::log::{event, say};

/// How many spent notes (claims and heartbeats sent) wait before a push removes them: each removal
/// opens the repository afresh.
const SPENT_NOTES: usize = 256;

/// What is recorded and not pushed yet, and when the next push may be tried.
pub(super) struct PushState {
    /// When the oldest unpushed outcome was recorded; `None` when everything is pushed.
    since: Option<Instant>,
    /// The state of each outcome this process counted in the summary and has not pushed yet, by
    /// key: one a reconcile drops (the remote records the id already) is taken out of the count.
    counted: HashMap<String, String>,
    /// When the next push may be tried: later than now only after a failed one.
    next: Instant,
    /// Failed pushes in a row; reset by one that works.
    failures: u32,
    /// Whether the last failed push was refused by the remote (rather than not reaching it).
    last_rejected: bool,
    /// The push on a thread of its own, while it runs.
    in_flight: Option<Pushing>,
}

/// Sends [`Event::Pushed`] when dropped: a push's thread says it is done however it ends.
struct Wake(std::sync::mpsc::Sender<Event>);

impl Drop for Wake {
    fn drop(&mut self) {
        let _ = self.0.send(Event::Pushed);
    }
}

/// A push on a thread of its own. It hands its result over on `done` before it sends
/// [`Event::Pushed`], and the loop takes the result then: whether the thread has exited by that
/// time is no matter (it once was, and a thread not yet returned left its push uncollected until
/// the loop's next deadline).
struct Pushing {
    thread: JoinHandle<()>,
    done: Receiver<Result<(), SyncError>>,
    /// Taken from `done` when the thread reported.
    result: Option<Result<(), SyncError>>,
    /// How many outcome commits it pushes.
    pending: usize,
    /// The keys counted in the summary that it pushes.
    keys: Vec<String>,
}

impl PushState {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            since: None,
            counted: HashMap::new(),
            next: now,
            failures: 0,
            last_rejected: false,
            in_flight: None,
        }
    }

    /// Whether a push runs on a thread of its own: the loop does not fetch meanwhile.
    pub(super) fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// An outcome was recorded (and counted in the summary in `state`) and waits to be pushed.
    pub(super) fn unpushed(&mut self, key: &str, state: &str) {
        self.counted.insert(key.to_owned(), state.to_owned());
        self.mark_unpushed();
    }

    /// Outcome commits wait to be pushed that this process did not count (found at start, or
    /// re-created on a remote that moved).
    pub(super) fn mark_unpushed(&mut self) {
        self.since.get_or_insert_with(Instant::now);
    }

    /// Whether every outcome recorded here is on the remote, as far as this process knows.
    pub(super) fn all_pushed(&self) -> bool {
        self.since.is_none()
    }

    /// The remote records `key` already, so its local commit was dropped: the state it was counted
    /// in, if this process counted it and had not pushed it.
    pub(super) fn dropped(&mut self, key: &str) -> Option<String> {
        self.counted.remove(key)
    }

    /// Push now when [`Pace::AtOnce`], or when the oldest unpushed outcome waited a batch window;
    /// not before a failed push's backoff ran out.
    fn due(&self, now: Instant, pace: Pace, batch: Duration) -> bool {
        if let Some(pushing) = &self.in_flight {
            // The loop looks when the push's thread says it ended (or ended without a word: a
            // panic, which the loop then resumes).
            return pushing.result.is_some() || pushing.thread.is_finished();
        }
        let Some(since) = self.since else {
            return false;
        };
        now >= self.next && (pace == Pace::AtOnce || now >= since + batch)
    }

    /// When a push falls due if nothing else happens: at the end of the batch window (at once when
    /// `pace` says so), or of the backoff if that is later. `None` when nothing waits.
    pub(super) fn next_due(&self, pace: Pace, batch: Duration) -> Option<Instant> {
        if self.in_flight.is_some() {
            return None;
        }
        self.since.map(|since| match pace {
            Pace::AtOnce => self.next,
            Pace::Batched => (since + batch).max(self.next),
        })
    }
}

/// Whether outcomes wait for a batch window before they are pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pace {
    /// This dispatcher drains a backlog: outcomes wait up to a batch window, so that draining costs
    /// no push per request.
    Batched,
    /// Nothing waits, or nothing runs here nor waits for a claim's verifying look: what waits
    /// cannot start here now (a `not_before`, a resource another dispatcher holds), and outcomes
    /// do not wait for it.
    AtOnce,
}

impl Daemon {
    /// How outcomes are pushed now, with `backlog` requests waiting ([`Pace`]). A claim waiting
    /// for its look is work about to start here: the push would hold that look up.
    pub(super) fn pace(&self, backlog: usize) -> Pace {
        match backlog == 0 || (self.running.is_empty() && self.claims.unverified.is_empty()) {
            true => Pace::AtOnce,
            false => Pace::Batched,
        }
    }

    /// [`Event::Pushed`]: the push in flight handed its result over; it is taken at the next push
    /// step.
    pub(super) fn push_reported(&mut self) {
        if let Some(pushing) = &mut self.push.in_flight
            && pushing.result.is_none()
        {
            pushing.result = pushing.done.try_recv().ok();
        }
    }

    /// Whether to push now; never after giving up on the remote.
    pub(super) fn push_due(&self, backlog: usize) -> bool {
        self.gave_up.is_none()
            && self
                .push
                .due(Instant::now(), self.pace(backlog), self.cfg.push_batch)
    }

    /// Pushes what is recorded, or collects the push that ran on a thread of its own.
    pub(super) fn push_step(&mut self) -> Result<(), DaemonError> {
        self.push_now(false)
    }

    /// [`Daemon::push_step`]; with `wait`, a push in flight is waited for and a new one is made on
    /// this thread.
    fn push_now(&mut self, wait: bool) -> Result<(), DaemonError> {
        if let Some(mut pushing) = self
            .push
            .in_flight
            .take_if(|p| wait || p.result.is_some() || p.thread.is_finished())
        {
            let result = match pushing
                .result
                .take()
                .or_else(|| pushing.done.try_recv().ok())
            {
                Some(result) => result,
                None => match pushing.done.recv() {
                    Ok(result) => result,
                    // Gone without a result: the thread panicked.
                    Err(_) => match pushing.thread.join() {
                        Err(panic) => std::panic::resume_unwind(panic),
                        Ok(()) => unreachable!("a push's thread sends its result before it ends"),
                    },
                },
            };
            self.sync.end_push();
            return self.pushed(pushing.pending, result, Some(pushing.keys));
        }
        if self.push.in_flight.is_some() {
            return Ok(());
        }
        self.persist()?;
        let pending = self.sync.unpushed_commits()?.len();
        if pending == 0 {
            self.push.since = None;
            return Ok(());
        }
        if self.push.failures > 0 {
            self.metrics.push_retried();
        }
        if !wait
            && self.sync.pushes_in_background()
            && let Some(job) = self.sync.begin_push()?
        {
            let sender = self.sender.clone();
            let (report, done) = sync_channel(1);
            let thread = std::thread::Builder::new()
                .name("push".to_owned())
                .spawn(move || {
                    // Wakes the loop when the thread is done, even by a panic.
                    let wake = Wake(sender);
                    let _ = report.send(job.run());
                    drop(wake);
                    crate::failpoint::hang("push-reported");
                })
                .expect("failed to spawn thread");
            let keys = self.push.counted.keys().cloned().collect();
            self.push.in_flight = Some(Pushing {
                thread,
                done,
                result: None,
                pending,
                keys,
            });
            return Ok(());
        }
        let result = self.sync.push();
        self.pushed(pending, result, None)
    }

    /// What a push that ended means: `keys` are the counted keys it pushed (`None`: all of them).
    fn pushed(
        &mut self,
        pending: usize,
        result: Result<(), SyncError>,
        keys: Option<Vec<String>>,
    ) -> Result<(), DaemonError> {
        match result {
            Ok(()) => {
                event("push", None, &format!("pushed {pending} outcome(s)"));
                match keys {
                    None => self.push.counted.clear(),
                    Some(keys) => {
                        for key in keys {
                            self.push.counted.remove(&key);
                        }
                    }
                }
                self.push.failures = 0;
                self.push.last_rejected = false;
                self.push.since = None;
                // Recorded while it ran: the next push's.
                if !self.sync.unpushed_commits()?.is_empty() {
                    self.push.mark_unpushed();
                }
                self.sync.reopen_if_stale();
                self.sync.forget_notes(SPENT_NOTES);
                Ok(())
            }
            Err(e) if e.is_transient() => {
                let rejected = matches!(e, SyncError::Rejected { .. });
                let moved = rejected && self.redone_on_a_moved_remote()?;
                if rejected && self.push.since.is_none() {
                    // The remote records every outcome already: nothing is left to push.
                    self.push.failures = 0;
                    self.push.last_rejected = false;
                    return Ok(());
                }
                if moved {
                    // Another push came first: nothing failed, and the outcomes are re-made on the
                    // remote's new tip. Pushed again at once, however often that happens: each
                    // time, another writer made progress.
                    say(&format!(
                        "{e}; the remote moved on meanwhile: pushing again"
                    ));
                    self.metrics.push_failed();
                    self.push.failures = 0;
                    self.push.last_rejected = false;
                    self.push.next = Instant::now();
                    return Ok(());
                }
                // The first refusal after failures to reach the remote (an outage while serving)
                // counts as the first failure: the remote answers again.
                self.push.failures = match rejected && !self.push.last_rejected {
                    true => 1,
                    false => self.push.failures + 1,
                };
                self.push.last_rejected = rejected;
                self.metrics.push_failed();
                let delay = push_delay(self.push.failures, rejected);
                let last = is_last(
                    self.cfg.mode,
                    self.shutting_down,
                    self.push.failures,
                    self.cfg.push_attempts,
                );
                say(&format!(
                    "{e} ({})",
                    attempt_note(self.push.failures, self.cfg.push_attempts, last, delay)
                ));
                if last {
                    return self.give_up(format!(
                        "{e}: gave up after {} attempts",
                        self.push.failures
                    ));
                }
                self.push.next = Instant::now() + delay;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// After a refused push: fetches, and when the remote moved on meanwhile, re-makes the outcomes
    /// on its new tip (when it records them all already, nothing is left to push). True when it
    /// moved: the refusal was another writer's push coming first, not a remote that refuses.
    fn redone_on_a_moved_remote(&mut self) -> Result<bool, DaemonError> {
        let before = self.sync.remote_tip();
        let moved = match self.sync.fetch() {
            Ok(tip) => Some(tip) != before,
            Err(e) => {
                say(&format!("after a rejected push: {e}"));
                return Ok(false);
            }
        };
        match self.sync.reconcile() {
            Ok(reconciled) => self.reconciled(&reconciled),
            Err(e) => {
                say(&format!("after a rejected push: {e}"));
                return Ok(false);
            }
        }
        if self.sync.unpushed_commits()?.is_empty() {
            self.push.since = None;
        }
        Ok(moved)
    }

    /// Gives up on the remote (exit 3), with `why`. Handlers that run are not cut short: as on
    /// SIGTERM, nothing new is taken, they finish, and their outcomes are recorded in the workdir
    /// (the next run pushes them); the dispatcher fails once they are.
    pub(super) fn give_up(&mut self, why: String) -> Result<(), DaemonError> {
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
    pub(super) fn flush(&mut self) -> Result<(), DaemonError> {
        while self.push.since.is_some() {
            let wait = self.push.next.saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                // Runs have all ended here; only a second interrupt matters while waiting to push.
                if let Ok(Event::Signal(signal)) = self.events.recv_timeout(wait) {
                    self.handle(Event::Signal(signal))?;
                }
                continue;
            }
            self.push_now(true)?;
        }
        Ok(())
    }

    /// `; 2 outcome(s) are recorded in ... but not pushed ...`, for the error of a dispatcher that
    /// gave up: what the workdir holds for the next run. Empty when everything is pushed.
    pub(super) fn unpushed_note(&self) -> String {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    const BATCH: Duration = Duration::from_secs(5);

    #[test]
    fn nothing_unpushed_is_never_due() {
        let now = Instant::now();
        let push = PushState::new(now);
        assert!(!push.due(now, Pace::AtOnce, BATCH));
        assert!(!push.due(now + BATCH * 10, Pace::AtOnce, BATCH));
        assert_eq!(push.next_due(Pace::AtOnce, BATCH), None);
    }

    #[test]
    fn at_once_pushes_at_once_and_batched_waits_for_the_batch_window() {
        let now = Instant::now();
        let mut push = PushState::new(now);
        push.since = Some(now);
        assert!(push.due(now, Pace::AtOnce, BATCH));
        assert!(!push.due(now, Pace::Batched, BATCH));
        assert!(!push.due(now + BATCH / 2, Pace::Batched, BATCH));
        assert!(push.due(now + BATCH, Pace::Batched, BATCH));
        assert_eq!(push.next_due(Pace::Batched, BATCH), Some(now + BATCH));
        assert_eq!(push.next_due(Pace::AtOnce, BATCH), Some(now));
    }

    #[test]
    fn a_failed_push_is_not_tried_again_before_its_backoff_ran_out() {
        let now = Instant::now();
        let mut push = PushState::new(now);
        push.since = Some(now);
        push.next = now + BATCH * 2;
        assert!(!push.due(now, Pace::AtOnce, BATCH));
        assert!(!push.due(now + BATCH, Pace::Batched, BATCH));
        assert!(push.due(now + BATCH * 2, Pace::AtOnce, BATCH));
        assert_eq!(push.next_due(Pace::AtOnce, BATCH), Some(now + BATCH * 2));
        assert_eq!(push.next_due(Pace::Batched, BATCH), Some(now + BATCH * 2));
    }

    #[test]
    fn an_outcome_counted_and_dropped_gives_back_its_state_once() {
        let mut push = PushState::new(Instant::now());
        push.unpushed("a", "succeeded");
        assert!(push.since.is_some());
        assert_eq!(push.dropped("a").as_deref(), Some("succeeded"));
        assert_eq!(push.dropped("a"), None);
        assert_eq!(push.dropped("never-counted"), None);
    }
}
