//! What the leases decide besides renewals: the claims a previous boot on this workdir left, the
//! expired claims of others taken over, and the held claims whose requests are all settled.

use std::time::{Instant, SystemTime};

use git2::{ErrorCode, Oid};

use super::Change;
use crate::claim::ledger::Held;
use crate::claim::protocol::{self, Claim, Claimed, Heartbeat};
use crate::clock::rfc3339;
use crate::daemon::{Daemon, DaemonError};
use crate::git::sync::SyncError;
use crate::layout;
use crate::log::say;

impl Daemon {
    /// The resources the previous boot on this workdir held claims of, from its last heartbeat.
    pub(super) fn leftovers(&self, heartbeat: &str) -> Vec<String> {
        let (Some(previous), Some(oid)) = (&self.claims.previous, self.claims.beat_oid) else {
            return Vec::new();
        };
        match self.sync.note_message(heartbeat, oid) {
            Ok(message) => protocol::decode::<Heartbeat>(&message)
                .filter(|beat| &beat.boot == previous)
                .map(|beat| beat.claims)
                .unwrap_or_default(),
            Err(e) => {
                say(&format!(
                    "could not read this dispatcher's last heartbeat: {e}"
                ));
                Vec::new()
            }
        }
    }

    /// The claims of others seen unchanged for a whole lease: taken over, listing what they list
    /// that is not recorded yet. The claims the previous boot on this workdir left are taken back
    /// at once, listing nothing: its journal says what it started.
    pub(super) fn take_overs(&mut self, now: Instant) -> Result<Vec<Change>, DaemonError> {
        let mut changes = Vec::new();
        let leftovers: Vec<(String, Oid)> = std::mem::take(&mut self.claims.leftovers)
            .iter()
            .map(|resource| protocol::claim_ref(resource))
            .filter_map(|name| Some((name.clone(), self.claims.ledger.seen(&name)?)))
            .collect();
        let expired = self.claims.ledger.expired(now);
        for (name, oid) in leftovers.into_iter().chain(expired) {
            if changes
                .iter()
                .any(|c| matches!(c, Change::TakeOver { oid: o, .. } if *o == oid))
            {
                continue;
            }
            if self.claims.unusable.contains(&oid) {
                continue;
            }
            let message = match self.claims.read.get(&oid) {
                Some(message) => Ok(message.clone()),
                None => self.sync.note_message(&name, oid),
            };
            let message = match message {
                Ok(message) => {
                    self.claims.read.insert(oid, message.clone());
                    message
                }
                // Too large to read: never will be.
                Err(SyncError::Git(e)) if e.code() == ErrorCode::Invalid => {
                    say(&format!("the claim {e}; it is left alone"));
                    self.claims.unusable.insert(oid);
                    continue;
                }
                // Gone or moved since it was seen (renewed, released or taken: not expired after
                // all), or the remote is away: looked at again with the next look.
                Err(e) => {
                    if e.is_transient() {
                        say(&format!("could not read the expired claim `{name}`: {e}"));
                    }
                    continue;
                }
            };
            let from = protocol::decode::<Claim>(&message);
            // A claim is taken over only at its own resource's ref: one pushed by hand elsewhere
            // naming a resource held here would make the take-over fail against this dispatcher's
            // own claim, and look like a claim lost.
            let Some(from) = from.filter(|c| protocol::claim_ref(&c.resource) == name) else {
                say(&format!(
                    "the claim `{name}` is not one this version reads (or names another \
                     resource than its ref's); it is left alone"
                ));
                self.claims.read.remove(&oid);
                self.claims.unusable.insert(oid);
                continue;
            };
            let own = from.holder.dispatcher == self.cfg.dispatcher_id
                && self.claims.previous.as_ref() == Some(&from.holder.boot);
            if !own && !self.claims.ledger.outlived(&name, &from, now) {
                continue;
            }
            let stamp = rfc3339(SystemTime::now());
            let mut claim = self.claims.ledger.claim(
                &from.resource,
                if own {
                    Vec::new()
                } else {
                    from.requests.clone()
                },
                &stamp,
            );
            claim.took_over_from = Some(from.holder.clone());
            changes.push(Change::TakeOver {
                claim,
                from: Box::new(from),
                oid,
            });
        }
        Ok(changes)
    }

    /// Held claims that can go: nothing of theirs runs or waits to be pushed here, and everything
    /// they list is recorded (or gone) at the remote's tip; or, while this dispatcher starts
    /// nothing (paused, drained), what they list did not start here, so other dispatchers may
    /// claim it (a claim with requests inherited from a dispatcher that died is kept: those may
    /// have started, and are recorded first).
    pub(super) fn releasable(&self) -> Vec<String> {
        let blocked = self.blocked_by().is_some();
        if self.claims.ledger.held().next().is_none()
            || !self.push.all_pushed()
            || self.sync.unpushed_commits().is_ok_and(|c| !c.is_empty())
        {
            return Vec::new();
        }
        self.claims
            .ledger
            .held()
            .filter(|(resource, held)| {
                !self
                    .running
                    .values()
                    .any(|r| &r.request.resource == *resource)
                    && if blocked {
                        !held
                            .claim
                            .requests
                            .iter()
                            .any(|c| self.claims.inherited.contains_key(&c.id))
                    } else {
                        self.unsettled(held).is_empty()
                    }
            })
            .map(|(resource, _)| resource.clone())
            .collect()
    }

    /// What `held` lists that is neither recorded nor gone from `requests/` at the remote's tip.
    pub(super) fn unsettled(&self, held: &Held) -> Vec<Claimed> {
        let tree = self
            .sync
            .remote_tip()
            .and_then(|tip| self.sync.repo.find_commit(tip).ok())
            .and_then(|c| c.tree().ok());
        let Some(tree) = tree else {
            return held.claim.requests.clone();
        };
        held.claim
            .requests
            .iter()
            .filter(|c| {
                !layout::is_recorded(&tree, &c.id) && tree.get_path(c.path.as_ref()).is_ok()
            })
            .cloned()
            .collect()
    }
}
