//! Looking at the remote: probe its head, fetch only when it moved, and follow it (reconcile, or
//! after a rewrite of the branch re-create the outcome commits it lacks), retrying with backoff.
//!
//! The invariant: what the remote already records is never recorded twice: an outcome a reconcile
//! drops is reported, counted in `/metrics` and taken out of the summary; and a remote that cannot
//! be looked at is given up on only outside serving, after `--push-attempts` tries.

use std::collections::BTreeMap;
use std::time::Instant;

use git2::Oid;

use crate::config::Mode;
use crate::daemon::retry::{attempt_note, backoff, is_last};
use crate::daemon::{Daemon, DaemonError};
use crate::git::sync::{Reconciled, SyncError};
use crate::log::{event, say};

/// When the remote is looked at next, and how the last looks went.
pub(super) struct SyncState {
    /// When the remote is looked at next: after the poll interval, sooner after a failure's
    /// backoff, at once when a local remote's refs change.
    pub(super) next: Instant,
    /// Failed looks in a row; reset by one that works.
    pub(super) failures: u32,
    /// Whether the remote was looked at since the inbox was last found empty (`--until-empty`).
    pub(super) checked_when_empty: bool,
}

impl SyncState {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            next: now,
            failures: 0,
            checked_when_empty: false,
        }
    }

    /// Whether the remote should be looked at now.
    pub(super) fn due(&self) -> bool {
        Instant::now() >= self.next
    }

    /// Look at the remote at once (after a claim was made, before anything of it starts).
    pub(super) fn look_now(&mut self) {
        self.next = Instant::now();
    }

    /// The inbox was found empty: look at the remote once more, now, before believing it.
    pub(super) fn look_again(&mut self) {
        self.checked_when_empty = true;
        self.next = Instant::now();
    }
}

/// What a dispatcher that gives up on looking at the remote adds to its error: `--until-empty`
/// could not tell the inbox is empty, so it did not drain it.
fn give_up_note(mode: Mode) -> &'static str {
    match mode {
        Mode::UntilEmpty => "; the inbox could not be looked at, so it is not drained",
        _ => "",
    }
}

impl Daemon {
    /// Looks at the remote's head; fetches and reconciles only when it moved.
    pub(super) fn sync_step(&mut self) -> Result<(), DaemonError> {
        // A reconcile may move the branch, which writes out what is in memory.
        self.persist()?;
        let seen = self.sync.remote_tip();
        let mut dispatch = BTreeMap::new();
        let result = (|| {
            let look = self.sync.look()?;
            let head = look.head;
            if head.is_none() || head != self.sync.remote_tip() || self.sync.tip().is_none() {
                self.sync.fetch()?;
            }
            dispatch = look.dispatch;
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
                self.reconciled(&reconciled);
                self.observe_claims(&dispatch);
                self.claims_verified();
                self.syncing.failures = 0;
                self.metrics.synced();
                self.syncing.next = Instant::now() + self.cfg.poll_interval;
                Ok(())
            }
            Err(e) if e.is_transient() => {
                self.syncing.failures += 1;
                self.metrics.sync_failed(&e.to_string());
                let delay = backoff(self.syncing.failures);
                // Shutting down, the remote is not looked at: serving never gives up here.
                let last = is_last(
                    self.cfg.mode,
                    false,
                    self.syncing.failures,
                    self.cfg.push_attempts,
                );
                say(&format!(
                    "{e} ({})",
                    attempt_note(self.syncing.failures, self.cfg.push_attempts, last, delay)
                ));
                if last {
                    return self.give_up(format!(
                        "{e}: gave up after {} attempts{}",
                        self.syncing.failures,
                        give_up_note(self.cfg.mode)
                    ));
                }
                self.syncing.next = Instant::now() + delay;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Says what a reconcile found: outcomes the remote records already (dropped here, and taken out
    /// of the summary), request files changed after they were taken, outcomes re-created on the
    /// remote's new tip (unpushed again).
    pub(super) fn reconciled(&mut self, reconciled: &Reconciled) {
        for key in &reconciled.already_recorded {
            event(
                "sync",
                Some(key),
                "the remote already records an outcome; the local one is dropped",
            );
            self.metrics.already_recorded();
            if let Some(state) = self.push.dropped(key) {
                self.summary.uncount(&state);
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
            self.push.mark_unpushed();
        }
    }

    /// Says that the remote's head no longer descends from `seen`, the head last fetched or pushed:
    /// the branch was rewritten (reset, or force-pushed). The local branch follows the remote's,
    /// with the outcome commits it lacks re-created on it by
    /// [`crate::git::sync::Sync::reconcile_rewritten`] (skipping ids it records already): a request
    /// that ran is not run again because a rewrite put it back in the inbox.
    fn rewritten(&self, seen: Option<Oid>, reconciled: &Reconciled) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_until_empty_says_the_inbox_was_not_drained() {
        assert_eq!(
            give_up_note(Mode::UntilEmpty),
            "; the inbox could not be looked at, so it is not drained"
        );
        assert_eq!(give_up_note(Mode::Once), "");
        assert_eq!(give_up_note(Mode::Serve), "");
    }

    #[test]
    fn an_empty_inbox_is_looked_at_again_at_once() {
        let then = Instant::now();
        let mut syncing = SyncState::new(then + std::time::Duration::from_secs(60));
        assert!(!syncing.due());
        syncing.look_again();
        assert!(syncing.checked_when_empty);
        assert!(syncing.due());
    }
}
