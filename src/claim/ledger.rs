//! What one dispatcher knows of the claims: those it holds, and those of others as it saw them.
//! Pure state and decisions, no Git: the daemon asks it what to do and tells it what happened.
//!
//! The times (L is the lease):
//! - a held claim is renewed every L/4 (with the heartbeat, in one push);
//! - a holder whose last renewal that worked started more than L/2 ago is *fenced*: it starts
//!   nothing more on the resource and stops the handlers that run on it (SIGKILL at the latest L/4
//!   after the SIGTERM), so they are gone before L/2 + L/4 < L;
//! - an observer takes a claim over only after it saw the same oid on it for L on its own monotonic
//!   clock (and at least the lease the claim itself states): by then the holder has stopped.
//!
//! Clocks of different hosts are never compared: each side measures its own intervals.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use git2::Oid;

use crate::claim::protocol::{self, CLAIMS, Claim, Claimed, Holder};

/// The most requests one claim lists: what a dispatcher that dies is charged with at most.
pub(crate) const MAX_BATCH: usize = 256;
/// How much work (by the handlers' average duration) a claim lists ahead.
const BATCH_WORK: Duration = Duration::from_secs(1);
/// The batch before any handler ran here.
const FIRST_BATCH: usize = 16;

/// A claim this dispatcher holds.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    /// What the remote's ref holds: the last oid this dispatcher wrote there.
    pub oid: Oid,
    pub claim: Claim,
    /// When the last push that renewed it (and worked) started.
    pub renewed: Instant,
}

/// A claim of another dispatcher, as seen.
#[derive(Debug, Clone, Copy)]
struct Seen {
    oid: Oid,
    /// When this oid was first seen there.
    since: Instant,
}

/// What a dispatcher may do with a request of a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum May {
    /// Its resource's claim is held here, lists the request and is not fenced.
    Start,
    /// The claim is held here but does not list it: extend the claim first.
    Extend,
    /// Nobody is known to hold the resource: claim it first.
    Claim,
    /// Another dispatcher holds it (and its lease has not run out as far as this one saw).
    HeldElsewhere,
    /// Held here, but not renewed for too long: nothing more starts on it.
    Fenced,
}

/// The claims one dispatcher holds and sees.
#[derive(Debug)]
pub(crate) struct Ledger {
    pub me: Holder,
    pub lease: Duration,
    /// By resource.
    held: BTreeMap<String, Held>,
    /// Other dispatchers' claims, by ref name.
    seen: HashMap<String, Seen>,
    /// When the heartbeat was last written (the push started), if ever.
    pub beat: Option<Instant>,
    /// The handlers' average duration here, for the size of a batch.
    average: Option<Duration>,
}

impl Ledger {
    pub(crate) fn new(me: Holder, lease: Duration) -> Self {
        Self {
            me,
            lease,
            held: BTreeMap::new(),
            seen: HashMap::new(),
            beat: None,
            average: None,
        }
    }

    /// What may be done with request `id` of `resource` now.
    pub(crate) fn may(&self, resource: &str, id: &str, now: Instant) -> May {
        match self.held.get(resource) {
            Some(held) if self.is_fenced(held, now) => May::Fenced,
            Some(held) if held.claim.requests.iter().any(|r| r.id == id) => May::Start,
            Some(_) => May::Extend,
            None if self.seen.contains_key(&protocol::claim_ref(resource)) => May::HeldElsewhere,
            None => May::Claim,
        }
    }

    /// Whether another dispatcher holds `resource`, as far as this one saw.
    pub(crate) fn held_elsewhere(&self, resource: &str) -> bool {
        !self.held.contains_key(resource) && self.seen.contains_key(&protocol::claim_ref(resource))
    }

    fn is_fenced(&self, held: &Held, now: Instant) -> bool {
        now.saturating_duration_since(held.renewed) > self.lease / 2
    }

    /// The resources held here whose claim is fenced now.
    pub(crate) fn fenced(&self, now: Instant) -> Vec<String> {
        self.held
            .iter()
            .filter(|(_, held)| self.is_fenced(held, now))
            .map(|(resource, _)| resource.clone())
            .collect()
    }

    /// Whether the heartbeat and the claims are due to be rewritten.
    pub(crate) fn renewal_due(&self, now: Instant) -> bool {
        let every = self.lease / 4;
        self.beat.is_none_or(|beat| now >= beat + every)
            || self.held.values().any(|h| now >= h.renewed + every)
    }

    /// When the next renewal falls due, for the loop's sleep.
    pub(crate) fn next_renewal(&self) -> Option<Instant> {
        let every = self.lease / 4;
        let claims = self.held.values().map(|h| h.renewed + every);
        self.beat.map(|b| b + every).into_iter().chain(claims).min()
    }

    pub(crate) fn held(&self) -> impl Iterator<Item = (&String, &Held)> {
        self.held.iter()
    }

    pub(crate) fn holds(&self, resource: &str) -> Option<&Held> {
        self.held.get(resource)
    }

    /// The claim of `resource` listing `requests`, as this dispatcher writes it.
    pub(crate) fn claim(&self, resource: &str, requests: Vec<Claimed>, now: &str) -> Claim {
        let since = self
            .held
            .get(resource)
            .map_or_else(|| now.to_owned(), |h| h.claim.since.clone());
        Claim {
            version: protocol::VERSION,
            resource: resource.to_owned(),
            holder: self.me.clone(),
            requests,
            since,
            renewed_at: now.to_owned(),
            lease_ms: u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX),
            took_over_from: None,
        }
    }

    /// The remote took `claim` at `oid`, by a push that started at `started`.
    pub(crate) fn took(&mut self, claim: Claim, oid: Oid, started: Instant) {
        self.seen.remove(&protocol::claim_ref(&claim.resource));
        self.held.insert(
            claim.resource.clone(),
            Held {
                oid,
                claim,
                renewed: started,
            },
        );
    }

    /// The claim of `resource` is no longer held here: released, or found taken by another.
    pub(crate) fn let_go(&mut self, resource: &str) -> Option<Held> {
        self.held.remove(resource)
    }

    /// Notes the claims the remote holds (`refs`: every ref under `refs/dispatch/`), seen at `now`.
    /// A claim held here whose ref changed or went away is reported back: another took it.
    pub(crate) fn observe(&mut self, refs: &BTreeMap<String, Oid>, now: Instant) -> Vec<String> {
        let mut lost = Vec::new();
        for (resource, held) in &self.held {
            if refs.get(&protocol::claim_ref(resource)) != Some(&held.oid) {
                lost.push(resource.clone());
            }
        }
        let mine: Vec<String> = self.held.keys().map(|r| protocol::claim_ref(r)).collect();
        self.seen.retain(|name, _| refs.contains_key(name));
        for (name, oid) in refs.iter().filter(|(n, _)| n.starts_with(CLAIMS)) {
            if mine.contains(name) {
                continue;
            }
            let seen = self.seen.entry(name.clone()).or_insert(Seen {
                oid: *oid,
                since: now,
            });
            if seen.oid != *oid {
                *seen = Seen {
                    oid: *oid,
                    since: now,
                };
            }
        }
        lost
    }

    /// A claim seen held by another: until its lease runs out (or it is released), the resource is
    /// left alone. Called when a claim push found the ref taken.
    pub(crate) fn seen_taken(&mut self, name: &str, oid: Oid, now: Instant) {
        let seen = self
            .seen
            .entry(name.to_owned())
            .or_insert(Seen { oid, since: now });
        if seen.oid != oid {
            *seen = Seen { oid, since: now };
        }
    }

    /// How many claims of other dispatchers are seen.
    pub(crate) fn seen_count(&self) -> usize {
        self.seen.len()
    }

    /// The oid last seen on the claim ref `name` of another dispatcher.
    pub(crate) fn seen(&self, name: &str) -> Option<Oid> {
        self.seen.get(name).map(|s| s.oid)
    }

    /// The claims of others whose oid this dispatcher has seen unchanged for a whole lease:
    /// `(ref name, oid)`. Whether the claim's own lease ran out too is for [`Ledger::outlived`].
    pub(crate) fn expired(&self, now: Instant) -> Vec<(String, Oid)> {
        let mut expired: Vec<(String, Oid)> = self
            .seen
            .iter()
            .filter(|(_, s)| now.saturating_duration_since(s.since) >= self.lease)
            .map(|(name, s)| (name.clone(), s.oid))
            .collect();
        expired.sort();
        expired
    }

    /// Whether the claim at `name`, seen unchanged since it was first seen, has outlived its own
    /// stated lease too (a claim made with a longer `--lease` than this dispatcher's).
    pub(crate) fn outlived(&self, name: &str, claim: &Claim, now: Instant) -> bool {
        self.seen.get(name).is_some_and(|s| {
            now.saturating_duration_since(s.since) >= Duration::from_millis(claim.lease_ms)
        })
    }

    /// A handler ran here for `took`: the average that sizes batches follows.
    pub(crate) fn ran(&mut self, took: Duration) {
        self.average = Some(match self.average {
            None => took,
            Some(avg) => (avg * 7 + took) / 8,
        });
    }

    /// How many requests of a resource a claim lists ahead: about a second of work, at least
    /// `jobs`, at most [`MAX_BATCH`].
    pub(crate) fn batch(&self, jobs: usize) -> usize {
        let by_work = match self.average {
            None => FIRST_BATCH,
            Some(avg) if avg.is_zero() => MAX_BATCH,
            Some(avg) => usize::try_from(BATCH_WORK.as_micros() / avg.as_micros().max(1))
                .unwrap_or(MAX_BATCH),
        };
        by_work.max(jobs).clamp(1, MAX_BATCH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(8);

    fn ledger() -> Ledger {
        Ledger::new(
            Holder {
                dispatcher: "a".into(),
                boot: "b".into(),
                host: "h".into(),
            },
            LEASE,
        )
    }

    fn claimed(id: &str) -> Claimed {
        Claimed {
            id: id.into(),
            path: format!("requests/{id}.yml"),
        }
    }

    fn oid(n: u8) -> Oid {
        Oid::from_bytes(&[n; 20]).unwrap()
    }

    #[test]
    fn a_request_starts_only_when_its_claim_is_held_here_lists_it_and_is_not_fenced() {
        let mut l = ledger();
        let t0 = Instant::now();
        assert_eq!(l.may("db", "x", t0), May::Claim);
        let claim = l.claim("db", vec![claimed("x")], "now");
        l.took(claim, oid(1), t0);
        assert_eq!(l.may("db", "x", t0), May::Start);
        assert_eq!(l.may("db", "y", t0), May::Extend);
        // Not renewed for more than half the lease: fenced, whatever it lists.
        let late = t0 + LEASE / 2 + Duration::from_millis(1);
        assert_eq!(l.may("db", "x", late), May::Fenced);
        assert_eq!(l.fenced(late), vec!["db".to_owned()]);
        assert!(l.fenced(t0 + LEASE / 2).is_empty());
    }

    #[test]
    fn a_claim_of_another_is_left_alone_until_seen_unchanged_for_a_whole_lease() {
        let mut l = ledger();
        let t0 = Instant::now();
        let name = protocol::claim_ref("db");
        let refs = BTreeMap::from([(name.clone(), oid(1))]);
        assert!(l.observe(&refs, t0).is_empty());
        assert_eq!(l.may("db", "x", t0), May::HeldElsewhere);
        assert!(l.expired(t0 + LEASE - Duration::from_millis(1)).is_empty());
        // Renewed (a new oid): the lease counts again from when it was seen.
        let renewed = BTreeMap::from([(name.clone(), oid(2))]);
        l.observe(&renewed, t0 + LEASE / 2);
        assert!(l.expired(t0 + LEASE).is_empty());
        assert_eq!(
            l.expired(t0 + LEASE / 2 + LEASE),
            vec![(name.clone(), oid(2))]
        );
        // Released: free to claim.
        l.observe(&BTreeMap::new(), t0 + 2 * LEASE);
        assert_eq!(l.may("db", "x", t0 + 2 * LEASE), May::Claim);
    }

    #[test]
    fn a_claim_held_here_whose_ref_moved_or_went_is_reported_lost() {
        let mut l = ledger();
        let t0 = Instant::now();
        let claim = l.claim("db", vec![claimed("x")], "now");
        l.took(claim, oid(1), t0);
        let name = protocol::claim_ref("db");
        assert!(
            l.observe(&BTreeMap::from([(name.clone(), oid(1))]), t0)
                .is_empty()
        );
        assert_eq!(l.observe(&BTreeMap::from([(name, oid(9))]), t0), vec!["db"]);
        assert_eq!(l.observe(&BTreeMap::new(), t0), vec!["db"]);
    }

    #[test]
    fn a_claim_stating_a_longer_lease_is_taken_over_only_after_it() {
        let mut l = ledger();
        let t0 = Instant::now();
        let name = protocol::claim_ref("db");
        l.observe(&BTreeMap::from([(name.clone(), oid(1))]), t0);
        let mut theirs = l.claim("db", vec![], "now");
        theirs.lease_ms = 20_000;
        assert!(!l.outlived(&name, &theirs, t0 + LEASE));
        assert!(l.outlived(&name, &theirs, t0 + Duration::from_secs(20)));
    }

    #[test]
    fn renewals_fall_due_every_quarter_lease() {
        let mut l = ledger();
        let t0 = Instant::now();
        assert!(l.renewal_due(t0), "the first heartbeat is due at once");
        l.beat = Some(t0);
        assert!(!l.renewal_due(t0 + LEASE / 4 - Duration::from_millis(1)));
        assert!(l.renewal_due(t0 + LEASE / 4));
        assert_eq!(l.next_renewal(), Some(t0 + LEASE / 4));
    }

    #[test]
    fn a_batch_is_about_a_second_of_work_within_bounds() {
        let mut l = ledger();
        assert_eq!(l.batch(1), FIRST_BATCH);
        l.ran(Duration::from_millis(200));
        assert_eq!(l.batch(2), 5);
        assert_eq!(l.batch(8), 8, "at least one per job");
        let mut fast = ledger();
        fast.ran(Duration::from_micros(500));
        assert_eq!(fast.batch(1), MAX_BATCH);
    }
}
