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
use crate::claim::protocol::{self, Claim, Claimed, Heartbeat, Holder, RunningEntry};
use crate::clock::{now_seconds, rfc3339};
use crate::daemon::retry::{attempt_note, is_last};
use crate::daemon::{Daemon, DaemonError};
use crate::git::dispatch_refs::{RefOutcome, RefUpdate};
use crate::git::sync::SyncError;
use crate::layout;
use crate::log::{event, say};

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
    /// Set at a clean exit: the last heartbeat says `stopped`.
    stopped: bool,
    /// The boot id of the dispatcher that ran on this workdir before this one.
    previous: Option<String>,
    /// The resources whose claims that previous boot held, as its last heartbeat says: taken back
    /// at once, without waiting for their lease.
    leftovers: Vec<String>,
    started_at: String,
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
            kills: Vec::new(),
            beat_oid: None,
            retry_at: None,
            failures: 0,
            stopped: false,
            read: HashMap::new(),
            previous,
            leftovers: Vec::new(),
            started_at: rfc3339(SystemTime::now()),
        }
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
        for resource in self.claims.ledger.observe(dispatch, now) {
            self.claims.ledger.let_go(&resource);
            self.fence_runs(
                &resource,
                format!(
                    "the claim on resource `{resource}` was taken over by another dispatcher \
                     while this one ran the request"
                ),
            );
        }
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
            self.fence_runs(
                &resource,
                format!(
                    "fenced: the claim on resource `{resource}` could not be renewed for more than \
                     half its lease ({}), so the handler was stopped before another dispatcher may \
                     take the claim over",
                    humantime::format_duration(self.claims.ledger.lease)
                ),
            );
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

    /// The resources the previous boot on this workdir held claims of, from its last heartbeat.
    fn leftovers(&self, heartbeat: &str) -> Vec<String> {
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
    fn take_overs(&mut self, now: Instant) -> Result<Vec<Change>, DaemonError> {
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
            let message = match self.claims.read.get(&oid) {
                Some(message) => Ok(message.clone()),
                None => self.sync.note_message(&name, oid),
            };
            let message = match message {
                Ok(message) => {
                    self.claims.read.insert(oid, message.clone());
                    message
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
            let Some(from) = protocol::decode::<Claim>(&message) else {
                say(&format!(
                    "the claim `{name}` is not one this version reads; it is left alone"
                ));
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
    /// they list is recorded (or gone) at the remote's tip.
    fn releasable(&self) -> Vec<String> {
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
                    && self.unsettled(held).is_empty()
            })
            .map(|(resource, _)| resource.clone())
            .collect()
    }

    /// What `held` lists that is neither recorded nor gone from `requests/` at the remote's tip.
    fn unsettled(&self, held: &Held) -> Vec<Claimed> {
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

    /// One push of `changes` and the heartbeat, each a compare-and-swap; what the remote took is
    /// noted, what it did not is acted on.
    fn push_claims(&mut self, mut changes: Vec<Change>) -> Result<(), DaemonError> {
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
                return self
                    .claims_failed(format!("could not write the claims and the heartbeat: {e}"));
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

    /// A claim push that did not work: tried again after a backoff (at most an eighth of the
    /// lease); outside serving, given up on (exit 3) after `--push-attempts`, like a push.
    fn claims_failed(&mut self, why: String) -> Result<(), DaemonError> {
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
                "{why}: gave up after {} attempts",
                self.claims.failures
            ));
        }
        Ok(())
    }

    /// The ref update of `change`; the heartbeat lists the claims held and those `making`.
    fn update_for(&self, change: &Change, making: &[String]) -> Result<RefUpdate, SyncError> {
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

    fn took_or_not(
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
                if made {
                    event(
                        "claim",
                        None,
                        &format!(
                            "claimed resource `{resource}` ({} request(s))",
                            claim.requests.len()
                        ),
                    );
                    self.claims.unverified.insert(resource);
                    self.syncing.look_now();
                }
                self.claims
                    .ledger
                    .took(claim, update.new.expect("a claim is written"), started);
            }
            (Change::Claim { claim, made: true }, RefOutcome::Lost { current }) => {
                match current {
                    Some(current) => self.claims.ledger.seen_taken(&update.name, current, now),
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
                self.claims.unverified.insert(resource);
                self.syncing.look_now();
                self.claims
                    .ledger
                    .took(claim, update.new.expect("a claim is written"), started);
            }
            (Change::TakeOver { .. }, RefOutcome::Lost { current }) => {
                if let Some(current) = current {
                    self.claims.ledger.seen_taken(&update.name, current, now);
                }
            }
            (Change::Release { resource }, RefOutcome::Updated) => {
                self.claims.ledger.let_go(&resource);
            }
            (Change::Release { resource }, RefOutcome::Lost { .. }) => self.lost(&resource),
            // Said, counted and retried by `push_claims`.
            (_, RefOutcome::Refused(_)) => {}
            (_, RefOutcome::Lost { .. }) => {}
        }
    }

    /// A claim held here was found taken by another: its runs are stopped.
    fn lost(&mut self, resource: &str) {
        self.claims.ledger.let_go(resource);
        self.fence_runs(
            resource,
            format!(
                "the claim on resource `{resource}` was taken over by another dispatcher while \
                 this one ran the request"
            ),
        );
    }

    /// Stops every run of `resource` here (SIGTERM now, SIGKILL after the kind's grace or a quarter
    /// of the lease, whichever is shorter); each is recorded `abandoned` with `why`.
    fn fence_runs(&mut self, resource: &str, why: String) {
        let now = Instant::now();
        let quarter = self.claims.ledger.lease / 4;
        for (key, run) in &self.running {
            if run.ended || run.request.resource != resource || self.claims.fenced.contains_key(key)
            {
                continue;
            }
            run.in_flight.abandon();
            if let Some((pid, _)) = run.in_flight.get() {
                let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGTERM);
                let grace = run.request.route.spec.grace.min(quarter);
                self.claims.kills.push((now + grace, pid));
            }
            event("fence", Some(key), &format!("stopping the handler: {why}"));
            self.claims.fenced.insert(key.clone(), why.clone());
        }
    }

    /// What this dispatcher says of itself now.
    fn heartbeat(&self, making: &[String]) -> Heartbeat {
        let now = Instant::now();
        let wall = SystemTime::now();
        let mut running: Vec<RunningEntry> = self
            .running
            .iter()
            .filter(|(_, r)| !r.ended)
            .filter_map(|(key, r)| {
                let (_, started) = r.in_flight.get()?;
                Some(RunningEntry {
                    id: key.clone(),
                    kind: r.request.kind.clone(),
                    resource: r.request.resource.clone(),
                    since: rfc3339(wall - now.saturating_duration_since(started)),
                })
            })
            .collect();
        running.sort_by(|a, b| a.id.cmp(&b.id));
        let me = &self.claims.ledger.me;
        Heartbeat {
            version: protocol::VERSION,
            id: me.dispatcher.clone(),
            host: me.host.clone(),
            boot: me.boot.clone(),
            software: env!("CARGO_PKG_VERSION").to_owned(),
            labels: self.cfg.labels.clone(),
            kinds: self
                .snapshot
                .as_ref()
                .filter(|_| self.cfg.handlers_dir.is_some())
                .map(|s| s.catalog.kinds().into_iter().map(str::to_owned).collect()),
            jobs: self.cfg.jobs,
            started_at: self.claims.started_at.clone(),
            seen_at: rfc3339(wall),
            seen_at_s: now_seconds(),
            lease_ms: u64::try_from(self.claims.ledger.lease.as_millis()).unwrap_or(u64::MAX),
            state: match (self.claims.stopped, self.shutting_down) {
                (true, _) => "stopped",
                (false, true) => "stopping",
                (false, false) => "running",
            }
            .to_owned(),
            running,
            claims: self
                .claims
                .ledger
                .held()
                .map(|(resource, _)| resource.clone())
                .chain(making.iter().cloned())
                .collect(),
        }
    }
}
