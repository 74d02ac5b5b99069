//! The daemon's side of the claims ([`crate::claim`]): claiming what `take` wants to start, the
//! heartbeat and the renewals, fencing, taking over the claims of dispatchers that died, and
//! releasing claims whose requests are all recorded on the remote.
//!
//! Every change to the remote's `refs/dispatch/` is a compare-and-swap ([`RefUpdate`]), and the
//! changes one step needs go in one push. The invariants:
//! - a request's handler starts only when this dispatcher holds its resource's claim, the claim
//!   lists the request, the claim is not fenced, and the branch was looked at after the claim was
//!   made or taken over (so a request another dispatcher recorded meanwhile is not started again);
//! - a claim is released only once every request it lists is recorded (or gone) at the remote's
//!   tip and none of its runs is in flight here.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use git2::Oid;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::claim::ledger::{Held, Ledger};
use crate::claim::protocol::{self, Claim, Claimed, Holder};
use crate::clock::rfc3339;
use crate::daemon::{Daemon, DaemonError};
use crate::log::say;

mod fence;
mod lease;
mod push;
mod shown;

/// The file in the workdir that keeps the boot id of the dispatcher that runs (or ran) on it.
const BOOT_FILE: &str = "boot";

/// What the daemon keeps of the claims besides the [`Ledger`].
pub(super) struct Claims {
    pub(super) ledger: Ledger,
    /// Resources claimed or taken over since the branch was last looked at: nothing of them starts
    /// before the look that follows the claim.
    pub(super) unverified: HashSet<String>,
    /// Requests listed by a claim taken over from a dispatcher that stopped renewing it, by id:
    /// why they are recorded `abandoned` (or, idempotent with retries left, run again).
    pub(super) inherited: HashMap<String, String>,
    /// Runs stopped because their claim was fenced or lost, by key: why.
    pub(super) fenced: HashMap<String, String>,
    /// The loop takes again at once rather than at its next deadline: a claim held here was
    /// extended or renewed (what it lists may start now), or a claim was lost to another
    /// dispatcher (the slot it was for waits for another resource).
    pub(in crate::daemon) take_again: bool,
    /// Handlers' process groups to kill, and when (the SIGTERM went already).
    kills: Vec<(Instant, u32)>,
    /// What the remote's ref of this dispatcher's heartbeat holds, as last seen or written.
    beat_oid: Option<Oid>,
    /// No claim or renewal push before this, after one that could not reach the remote.
    retry_at: Option<Instant>,
    /// Failed claim pushes in a row.
    failures: u32,
    /// The messages of other dispatchers' claims read so far, by oid (an expired claim is read
    /// once, however long it waits for its own lease).
    read: HashMap<Oid, String>,
    /// Commits on claim refs of others that are never taken over, whatever their age: a record
    /// this version cannot read, too large to read, or of another resource than its ref's.
    /// Said once each.
    unusable: HashSet<Oid>,
    /// How many other dispatchers are about: their heartbeats moved within a lease, as the looks
    /// saw them (a stopped dispatcher's heartbeat stays on the remote).
    pub(super) others: usize,
    /// Other dispatchers' heartbeat refs: the oid last seen, and since when (this clock).
    beats: HashMap<String, (Oid, Instant)>,
    /// Set at a clean exit: the last heartbeat says `stopped`.
    stopped: bool,
    /// The boot id of the dispatcher that ran on this workdir before this one.
    previous: Option<String>,
    /// The resources whose claims that previous boot held, as its last heartbeat says: taken back
    /// at once, without waiting for their lease.
    leftovers: Vec<String>,
    started_at: String,
    /// The records the page shows (`--http-addr`).
    shown: shown::Shown,
}

impl Claims {
    /// This boot's claims; `workdir` keeps the boot id of the last dispatcher that ran on it (whose
    /// claims a restart takes back at once: holding the workdir's lock, it knows that one is gone).
    pub(super) fn new(dispatcher: &str, host: &str, lease: Duration, workdir: &Path) -> Self {
        let me = Holder {
            dispatcher: dispatcher.to_owned(),
            boot: ulid::Ulid::generate().to_string(),
            host: host.to_owned(),
        };
        let file = workdir.join(BOOT_FILE);
        let previous = fs::read_to_string(&file)
            .ok()
            .map(|b| b.trim().to_owned())
            .filter(|b| !b.is_empty());
        if let Err(e) = fs::write(&file, format!("{}\n", me.boot)) {
            say(&format!("could not write `{}`: {e}", file.display()));
        }
        Self {
            ledger: Ledger::new(me, lease),
            unverified: HashSet::new(),
            inherited: HashMap::new(),
            fenced: HashMap::new(),
            take_again: false,
            kills: Vec::new(),
            beat_oid: None,
            retry_at: None,
            failures: 0,
            stopped: false,
            others: 0,
            beats: HashMap::new(),
            read: HashMap::new(),
            unusable: HashSet::new(),
            previous,
            leftovers: Vec::new(),
            started_at: rfc3339(SystemTime::now()),
            shown: shown::Shown::default(),
        }
    }

    /// SIGKILL for the process group `pid` at `at` (its SIGTERM went already).
    pub(super) fn kill_at(&mut self, at: Instant, pid: u32) {
        self.kills.push((at, pid));
    }

    /// When the loop must wake for the claims, at the latest.
    pub(super) fn wake_by(&self, now: Instant) -> Option<Instant> {
        let kills = self.kills.iter().map(|(at, _)| *at);
        let renewal = self.ledger.next_renewal();
        let retry = self.retry_at;
        // Fencing and expiries are judged at least every eighth of a lease.
        let judge = now + (self.ledger.lease / 8).max(Duration::from_millis(100));
        kills.chain(renewal).chain(retry).chain(Some(judge)).min()
    }
}

/// One change of a claim push, and what to do with its outcome.
enum Change {
    Heartbeat,
    /// Made (create) or extended/renewed (update) by this dispatcher.
    Claim {
        claim: Claim,
        made: bool,
    },
    Release {
        resource: String,
    },
    TakeOver {
        claim: Claim,
        from: Box<Claim>,
        oid: Oid,
    },
}

impl Daemon {
    /// After a look at the remote that worked: `dispatch` is every ref under `refs/dispatch/`. A
    /// claim held here that moved was taken by another: its runs are stopped.
    pub(super) fn observe_claims(&mut self, dispatch: &BTreeMap<String, Oid>) {
        let now = Instant::now();
        let mine = protocol::heartbeat_ref(&self.cfg.dispatcher_id);
        if self.claims.ledger.beat.is_none() {
            self.claims.beat_oid = dispatch.get(&mine).copied();
            self.claims.leftovers = self.leftovers(&mine);
        }
        let beats = &mut self.claims.beats;
        beats.retain(|name, _| dispatch.contains_key(name));
        for (name, oid) in dispatch
            .iter()
            .filter(|(name, _)| name.starts_with(protocol::DISPATCHERS) && **name != mine)
        {
            let seen = beats.entry(name.clone()).or_insert((*oid, now));
            if seen.0 != *oid {
                *seen = (*oid, now);
            }
        }
        let lease = self.claims.ledger.lease;
        self.claims.others = beats
            .values()
            .filter(|(_, since)| now.saturating_duration_since(*since) < lease)
            .count();
        for resource in self.claims.ledger.observe(dispatch, now) {
            self.lost(&resource);
        }
        self.note_fleet(dispatch);
    }

    /// How many other dispatchers share the work: those whose heartbeat moved within a lease, once
    /// a claim of another is seen (heartbeats left by dispatchers that stopped, first seen at a
    /// start, count as moved until a lease has passed).
    pub(super) fn others_about(&self) -> usize {
        match self.claims.ledger.seen_count() {
            0 => 0,
            _ => self.claims.others,
        }
    }

    /// How many of `found` resources nobody holds this dispatcher may claim now, with others about:
    /// so many that it holds no more than its share of every resource known to have work (those
    /// held here, those others hold, those found), so that the resources of a backlog are spread
    /// evenly rather than by who asks first (the dispatcher with the most ran last, alone, while
    /// the others had nothing they could take); but always enough for its idle slots, which
    /// neither a run nor a claim waiting for its verifying look fills.
    pub(super) fn fair_room(&self, found: usize) -> usize {
        let dispatchers = self.others_about() + 1;
        let held = self.claims.ledger.held().count();
        let known = held + self.claims.ledger.seen_count() + found;
        let idle = self.cfg.jobs.saturating_sub(
            self.running.values().filter(|r| !r.ended).count() + self.claims.unverified.len(),
        );
        known.div_ceil(dispatchers).saturating_sub(held).max(idle)
    }

    /// The branch was looked at (and fetched if it moved) after the claims made so far.
    pub(super) fn claims_verified(&mut self) {
        self.claims.unverified.clear();
    }

    /// Makes or extends the claims `take` needs, by resource, in one push. A claim made here is
    /// usable only after the next look at the branch, which is asked for at once.
    pub(super) fn claim(
        &mut self,
        wants: BTreeMap<String, Vec<Claimed>>,
    ) -> Result<(), DaemonError> {
        let now = Instant::now();
        if wants.is_empty() || self.claims.retry_at.is_some_and(|t| now < t) {
            return Ok(());
        }
        let stamp = rfc3339(SystemTime::now());
        let mut changes = Vec::new();
        for (resource, mut requests) in wants {
            let made = self.claims.ledger.holds(&resource).is_none();
            if let Some(held) = self.claims.ledger.holds(&resource) {
                let mut listed = self.unsettled(held);
                listed.retain(|c| !requests.iter().any(|r| r.id == c.id));
                listed.append(&mut requests);
                requests = listed;
            }
            let claim = self.claims.ledger.claim(&resource, requests, &stamp);
            changes.push(Change::Claim { claim, made });
        }
        self.push_claims(changes)
    }

    /// Each turn of the loop: kills due, fencing, then (when due) one push with the heartbeat, the
    /// renewals, the releases and the take-overs.
    pub(super) fn claims_step(&mut self) -> Result<(), DaemonError> {
        let now = Instant::now();
        self.claims.kills.retain(|&(at, pid)| {
            if now < at {
                return true;
            }
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            false
        });
        for resource in self.claims.ledger.fenced(now) {
            let why = self.fence_why(&resource);
            self.fence_runs(&resource, why);
        }
        if self.claims.retry_at.is_some_and(|t| now < t) || self.sync.tip().is_none() {
            return Ok(());
        }
        let mut changes = self.take_overs(now)?;
        let releases = self.releasable();
        if changes.is_empty() && releases.is_empty() && !self.claims.ledger.renewal_due(now) {
            return Ok(());
        }
        changes.extend(
            releases
                .into_iter()
                .map(|resource| Change::Release { resource }),
        );
        let stamp = rfc3339(SystemTime::now());
        let releasing: Vec<String> = changes
            .iter()
            .filter_map(|c| match c {
                Change::Release { resource } => Some(resource.clone()),
                _ => None,
            })
            .collect();
        let held: Vec<Held> = self.claims.ledger.held().map(|(_, h)| h.clone()).collect();
        for held in held {
            if releasing.contains(&held.claim.resource) {
                continue;
            }
            let requests = self.unsettled(&held);
            let claim = self
                .claims
                .ledger
                .claim(&held.claim.resource, requests, &stamp);
            changes.push(Change::Claim { claim, made: false });
        }
        self.push_claims(changes)
    }

    /// At a clean exit, once everything is pushed: the claims released, the heartbeat `stopped`.
    pub(super) fn claims_farewell(&mut self) -> Result<(), DaemonError> {
        self.claims.retry_at = None;
        self.claims.stopped = true;
        let changes = self
            .releasable()
            .into_iter()
            .map(|resource| Change::Release { resource })
            .collect();
        self.push_claims(changes)
    }
}
