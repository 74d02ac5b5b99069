//! One push of claim changes with the heartbeat, each a compare-and-swap, and what is done with
//! each outcome: noted when the remote took it, acted on when another dispatcher got there first.

use std::time::{Duration, Instant};

use super::Change;
use crate::claim::protocol;
use crate::config::Mode;
use crate::daemon::retry::{attempt_note, is_last};
use crate::daemon::{Daemon, DaemonError};
use crate::git::refs::{RefOutcome, RefUpdate};
use crate::git::sync::SyncError;
use crate::log::{event, say};

impl Daemon {
    /// One push of `changes` and the heartbeat, each a compare-and-swap; what the remote took is
    /// noted, what it did not is acted on.
    pub(super) fn push_claims(&mut self, mut changes: Vec<Change>) -> Result<(), DaemonError> {
        let making: Vec<String> = changes
            .iter()
            .filter_map(|c| match c {
                Change::Claim { claim, made: true } | Change::TakeOver { claim, .. } => {
                    Some(claim.resource.clone())
                }
                _ => None,
            })
            .collect();
        changes.insert(0, Change::Heartbeat);
        let mut updates = Vec::with_capacity(changes.len());
        for change in &changes {
            updates.push(self.update_for(change, &making)?);
        }
        let started = Instant::now();
        let outcomes = match self.sync.update_dispatch_refs(&updates) {
            Ok(outcomes) => outcomes,
            Err(e) if e.is_transient() => {
                // The connection may have failed after the server applied the updates, before
                // their report was read: what the remote holds now says which were made. Taken
                // for failed, a claim made would have looked like another dispatcher's, and an
                // extension made like a claim taken over.
                let applied = self.applied_anyway(&updates);
                if !applied.iter().all(|made| *made) {
                    for ((change, update), made) in changes.into_iter().zip(&updates).zip(applied) {
                        if made {
                            self.took_or_not(change, update, RefOutcome::Updated, started);
                        }
                    }
                    return self.claims_failed(format!(
                        "could not write the claims and the heartbeat: {e}"
                    ));
                }
                updates.iter().map(|_| RefOutcome::Updated).collect()
            }
            Err(e) => return Err(e.into()),
        };
        self.claims.retry_at = None;
        let refused: Vec<String> = outcomes
            .iter()
            .zip(&updates)
            .filter_map(|(o, u)| match o {
                RefOutcome::Refused(reason) => Some(format!(
                    "`{}` ({})",
                    u.name,
                    reason.trim_start_matches("the remote refused it: ")
                )),
                _ => None,
            })
            .collect();
        for ((change, update), outcome) in changes.into_iter().zip(&updates).zip(outcomes) {
            self.took_or_not(change, update, outcome, started);
        }
        self.metrics.claims_held(self.claims.ledger.held().count());
        if !refused.is_empty() {
            return self.claims_failed(format!(
                "the remote refused {}; dispatchers need to create, update and delete refs \
                 under `refs/dispatch/`",
                refused.join(", ")
            ));
        }
        self.claims.failures = 0;
        Ok(())
    }

    /// Which of `updates` the remote holds, by a look after a push whose answer was lost (none, if
    /// the look fails too): a ref at the update's `new` (gone, for a delete).
    fn applied_anyway(&self, updates: &[RefUpdate]) -> Vec<bool> {
        match self.sync.look() {
            Ok(look) => updates
                .iter()
                .map(|u| look.dispatch.get(&u.name).copied() == u.new)
                .collect(),
            Err(_) => vec![false; updates.len()],
        }
    }

    /// A claim push that did not work: tried again after a backoff (at most an eighth of the
    /// lease); outside serving, given up on (exit 3) after `--push-attempts`, like a push.
    pub(super) fn claims_failed(&mut self, why: String) -> Result<(), DaemonError> {
        if self.claims.stopped {
            say(&why);
            return Ok(());
        }
        self.claims.failures += 1;
        let delay = crate::daemon::backoff(self.claims.failures).min(self.claims.ledger.lease / 8);
        let retry_at = Instant::now() + delay;
        self.claims.retry_at = Some(self.claims.retry_at.map_or(retry_at, |t| t.max(retry_at)));
        let last = is_last(
            self.cfg.mode,
            self.shutting_down,
            self.claims.failures,
            self.cfg.push_attempts,
        );
        say(&format!(
            "{why} ({})",
            attempt_note(self.claims.failures, self.cfg.push_attempts, last, delay)
        ));
        if last {
            return self.give_up(format!(
                "{why}: gave up after {} attempts{}",
                self.claims.failures,
                not_drained(self.cfg.mode)
            ));
        }
        Ok(())
    }

    /// The ref update of `change`; the heartbeat lists the claims held and those `making`.
    pub(super) fn update_for(
        &self,
        change: &Change,
        making: &[String],
    ) -> Result<RefUpdate, SyncError> {
        let note =
            |summary: String, json: String| self.sync.note(&format!("{summary}\n\n{json}\n"));
        Ok(match change {
            Change::Heartbeat => {
                let beat = self.heartbeat(making);
                RefUpdate {
                    name: protocol::heartbeat_ref(&self.cfg.dispatcher_id),
                    expect: self.claims.beat_oid,
                    new: Some(
                        self.sync
                            .note(&protocol::encode(&format!("heartbeat {}", beat.id), &beat))?,
                    ),
                }
            }
            Change::Claim { claim, made } => RefUpdate {
                name: protocol::claim_ref(&claim.resource),
                expect: match made {
                    true => None,
                    false => self.claims.ledger.holds(&claim.resource).map(|h| h.oid),
                },
                new: Some(note(
                    format!("claim {} by {}", claim.resource, claim.holder.dispatcher),
                    serde_json::to_string(claim).expect("claims serialise"),
                )?),
            },
            Change::Release { resource } => RefUpdate {
                name: protocol::claim_ref(resource),
                expect: self.claims.ledger.holds(resource).map(|h| h.oid),
                new: None,
            },
            Change::TakeOver { claim, oid, .. } => {
                let name = protocol::claim_ref(&claim.resource);
                RefUpdate {
                    name,
                    expect: Some(*oid),
                    new: Some(note(
                        format!(
                            "claim {} by {} (taken over)",
                            claim.resource, claim.holder.dispatcher
                        ),
                        serde_json::to_string(claim).expect("claims serialise"),
                    )?),
                }
            }
        })
    }

    pub(super) fn took_or_not(
        &mut self,
        change: Change,
        update: &RefUpdate,
        outcome: RefOutcome,
        started: Instant,
    ) {
        let now = Instant::now();
        match (change, outcome) {
            (Change::Heartbeat, RefOutcome::Updated) => {
                self.claims.beat_oid = update.new;
                self.claims.ledger.beat = Some(started);
            }
            (Change::Heartbeat, RefOutcome::Lost { current }) => {
                say(&format!(
                    "another process replaced this dispatcher's heartbeat `{}`: is \
                     --dispatcher-id `{}` used twice?",
                    update.name, self.cfg.dispatcher_id
                ));
                self.claims.beat_oid = current;
            }
            (Change::Claim { claim, made }, RefOutcome::Updated) => {
                let resource = claim.resource.clone();
                self.claims.take_again |= !made;
                if made {
                    self.metrics.claim("made");
                    event(
                        "claim",
                        None,
                        &format!(
                            "claimed resource `{resource}` ({} request(s))",
                            claim.requests.len()
                        ),
                    );
                    self.claims.unverified.insert(resource.clone());
                    self.syncing.look_now();
                }
                self.claims
                    .ledger
                    .took(claim, update.new.expect("a claim is written"), started);
                self.hold_runs(&resource);
            }
            (Change::Claim { claim, made: true }, RefOutcome::Lost { current }) => {
                // Another dispatcher is about, whether or not a look showed its heartbeat yet (they
                // all started at once): the next claims pick among the oldest at random, rather
                // than race it for the same ones again.
                self.claims.others = self.claims.others.max(1);
                match current {
                    Some(current) => {
                        self.claims.ledger.seen_taken(&update.name, current, now);
                        self.claims.take_again = true;
                    }
                    // Taken and released meanwhile: try again after a moment, not at once.
                    None => self.claims.retry_at = Some(now + Duration::from_millis(250)),
                }
                event(
                    "claim",
                    None,
                    &format!(
                        "resource `{}` is claimed by another dispatcher",
                        claim.resource
                    ),
                );
            }
            (Change::Claim { claim, made: false }, RefOutcome::Lost { .. })
            | (Change::TakeOver { claim, .. }, RefOutcome::Lost { .. })
                if self.claims.ledger.holds(&claim.resource).is_some() =>
            {
                self.lost(&claim.resource);
            }
            (Change::TakeOver { claim, from, .. }, RefOutcome::Updated) => {
                self.metrics.claim("taken_over");
                let resource = claim.resource.clone();
                let why = format!(
                    "dispatcher `{}` (host `{}`) stopped renewing its claim on resource `{resource}` \
                     (lease {}); it had claimed this request and may have started it; the claim was \
                     taken over by `{}`",
                    from.holder.dispatcher,
                    from.holder.host,
                    humantime::format_duration(Duration::from_millis(from.lease_ms)),
                    self.cfg.dispatcher_id
                );
                // What the claim lists is inherited; one taken back from this workdir's previous
                // boot lists nothing (its journal tells what it started).
                for request in &claim.requests {
                    self.claims
                        .inherited
                        .insert(request.id.clone(), why.clone());
                }
                say(&format!(
                    "took over the claim on resource `{resource}` of dispatcher `{}` (boot {})",
                    from.holder.dispatcher, from.holder.boot
                ));
                self.claims.unverified.insert(resource.clone());
                self.syncing.look_now();
                self.claims
                    .ledger
                    .took(claim, update.new.expect("a claim is written"), started);
                self.hold_runs(&resource);
            }
            (Change::TakeOver { .. }, RefOutcome::Lost { current }) => {
                if let Some(current) = current {
                    self.claims.ledger.seen_taken(&update.name, current, now);
                }
            }
            (Change::Release { resource }, RefOutcome::Updated) => {
                self.metrics.claim("released");
                self.claims.ledger.let_go(&resource);
            }
            (Change::Release { resource }, RefOutcome::Lost { .. }) => self.lost(&resource),
            // Said, counted and retried by `push_claims`.
            (_, RefOutcome::Refused(_)) => {}
            (_, RefOutcome::Lost { .. }) => {}
        }
    }
}

/// What a dispatcher that gives up on its claims adds to its error: `--until-empty` could not
/// start what waits, so it did not drain the inbox.
fn not_drained(mode: Mode) -> &'static str {
    match mode {
        Mode::UntilEmpty => "; nothing starts without its claim, so the inbox is not drained",
        _ => "",
    }
}
