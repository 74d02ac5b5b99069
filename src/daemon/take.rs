//! Taking requests off the inbox: in arrival order, while there is room, each checked (parsed,
//! validated, routed, its secrets found) and either started on a worker or recorded `rejected` at
//! once. Also `--dry-run`, which says what taking would do and does nothing.
//!
//! The invariant: a request is running (in `running`) from the moment its worker is spawned until
//! its outcome is recorded, and no two runs share a resource or a key; a request is taken at most
//! once while its file is in `requests/`.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use git2::Oid;

use crate::claim::ledger::{MAX_BATCH, May};
use crate::claim::protocol::Claimed;
use crate::config::Mode;
use crate::daemon::events::Event;
use crate::daemon::identity::Approval;
use crate::daemon::open::RUNS;
use crate::daemon::recover::Resume;
use crate::daemon::{Daemon, DaemonError, io_err};
use crate::git::sync::SyncError;
use crate::inbox::queue::InboxEntry;
use crate::inbox::request::{self, Candidate, Rejection, Request, request_stem};
use crate::inbox::snapshot::Snapshot;
use crate::layout::{self, is_valid_name};
use crate::log::{event, say};
use crate::outcome::{AttemptLog, Outcome, State, free_key, sanitize};
use crate::run::runner::{self, Plan};
use crate::run::sandbox::InFlight;

/// With `--jobs 1` (but not `--once`), how many runs are taken ahead of the one that runs, each
/// with its files and its handler's process made, waiting for the slot; with `--jobs N`, N are,
/// each on a resource no other run here holds (one waiting for a resource's lock would hold a slot
/// another could use). With one ahead, the next run was not ready at 239 of 1000 handovers: it is
/// taken once the run before reports, which the main thread's work can delay past the handler's
/// end. Figures in docs/architecture.md, "Between two handlers", and docs/performance.md.
const RUNS_AHEAD: usize = 2;

/// How many waiting requests on busy resources `take` looks past for one it can start (each is
/// parsed and validated). Requests it checked before on resources another dispatcher holds are
/// passed over without either and do not count ([`Daemon::held_elsewhere`]).
const LOOKAHEAD: usize = 64;

/// A request that is running: what the outcome needs besides the run's report.
pub(super) struct Running {
    /// Set when the handler's run ended; its outcome is not recorded yet.
    pub(super) ended: bool,
    /// The handler process while one runs, for the watchdog.
    pub(super) in_flight: Arc<InFlight>,
    pub(super) entry: InboxEntry,
    pub(super) request: Request,
    /// Logs of attempts before a crash, for a run resumed as a later attempt.
    pub(super) prior_logs: Vec<AttemptLog>,
}

impl Running {
    /// How long after its handler started a run counts as stale: its timeout plus twice its grace,
    /// by when the sandbox has killed every handler (see [`Daemon::watchdog`]).
    pub(super) fn stale_after(&self) -> Duration {
        (self.request.timeout).saturating_add(self.request.route.spec.grace.saturating_mul(2))
    }
}

/// The key a rejected request's outcome is recorded under: its id where that is free; else, where
/// no id could be read, the default id (the file stem) where it is a valid free one; else a free
/// variant of either (`x~1`, `x~2`, ...), so a rejection never overwrites an outcome.
fn rejected_key(id: Option<&str>, file_name: &str, is_taken: impl Fn(&str) -> bool) -> String {
    match id {
        Some(id) if !is_taken(id) => id.to_owned(),
        Some(id) => free_key(id, is_taken),
        None => match request_stem(file_name) {
            Some(stem) if is_valid_name(stem) && !is_taken(stem) => stem.to_owned(),
            stem => free_key(&sanitize(stem.unwrap_or(file_name)), is_taken),
        },
    }
}

impl Daemon {
    /// Takes requests in arrival order while there is room: records rejections at once, starts the
    /// rest. Returns how many requests wait (not counting running ones).
    ///
    /// Runs are taken ahead of the slots ([`RUNS_AHEAD`]): validated, their workers started, their
    /// files, journal entries and handlers' processes made, they wait for a slot, which a run gives
    /// up as soon as its handler is gone (see [`crate::run::runner`]). A run is marked started only
    /// then, so a stop before leaves it in the inbox, untouched. That takes the work of taking a
    /// request off the time between two handlers.
    pub(super) fn take(&mut self) -> Result<usize, DaemonError> {
        let tip = self.sync.tip().expect("take runs after the first sync");
        self.refresh_snapshot(tip)?;
        let entries = self
            .inbox
            .list(&self.sync.repo, tip)
            .map_err(SyncError::from)?;
        self.metrics.queue(entries.len());
        self.forget_resources(&entries);
        if self.blocker(tip).is_some() {
            // Nothing starts and nothing is rejected; the queue is not a backlog to push for.
            self.withhold_unstarted();
            return Ok(0);
        }
        let mut waiting = 0;
        let mut skipped = 0;
        self.due_at = None;
        let mut busy: Vec<String> = self
            .running
            .values()
            .filter(|r| !r.ended)
            .map(|r| r.request.resource.clone())
            .collect();
        let ahead = match (self.cfg.jobs, self.cfg.mode) {
            (_, Mode::Once) => 0,
            (1, _) => RUNS_AHEAD,
            (jobs, _) => jobs,
        };
        // With one slot, runs taken ahead queue for it whatever their resource; with more, a run
        // is taken only for a resource no run here holds ([`RUNS_AHEAD`]).
        let queue_on_busy = self.cfg.jobs == 1 && ahead > 0;
        let now = Instant::now();
        let mut wants: BTreeMap<String, Vec<Claimed>> = BTreeMap::new();
        let mut first_want = None;
        // Resources nobody holds, as candidates for new claims: one per free slot.
        let room = (self.cfg.jobs + ahead)
            .saturating_sub(self.running.values().filter(|r| !r.ended).count());
        let spread = if self.others_about() > 0 { 3 } else { 1 };
        let mut fresh: Vec<(usize, String, Claimed)> = Vec::new();
        // With one slot, how many requests this walk passed that will run here (started, or of a
        // resource held or claimed here): the runs ahead are taken in the queue's order, so a
        // resource claimed for a request behind more of them than there is room would wait,
        // claimed, for all of them, while another dispatcher could run it.
        let mut ahead_here = 0;
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
            if self.held_elsewhere(entry) {
                waiting += 1;
                continue;
            }
            let Some(checked) = self.check_here(entry) else {
                continue;
            };
            if self.waits_for_trust(&checked) {
                continue;
            }
            let checked = checked
                .and_then(|request| self.secret_env(entry, &request).map(|env| (request, env)))
                .and_then(|(request, env)| {
                    self.check_submitter(entry, &request)
                        .map(|()| (request, env))
                });
            let checked = match checked.map(|(r, env)| (self.approval(entry, &r), r, env)) {
                Ok((Approval::Waiting, ..)) => {
                    // Waiting for approvals holds up neither other requests nor the resource, nor
                    // `--until-empty` (it may wait for days): it is no backlog.
                    continue;
                }
                Ok((Approval::Refused(why), request, _)) => Err(Rejection {
                    id: Some(request.id.clone()),
                    kind: Some(request.kind.clone()),
                    error: format!("request `{}`: {why}", entry.path),
                }),
                Ok((Approval::Given(given), request, env)) => {
                    if !given.is_empty() {
                        self.approved.insert(request.id.clone(), given);
                    }
                    Ok((request, env))
                }
                Err(rejection) => Err(rejection),
            };
            match checked {
                Err(rejection) => {
                    self.took_one = true;
                    self.reject(entry, rejection)?;
                }
                Ok((request, _)) if self.not_yet(&request, now) => {
                    skipped += 1;
                    waiting += 1;
                }
                Ok((request, _)) if !queue_on_busy && busy.contains(&request.resource) => {
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
                    let resource = request.resource.clone();
                    let may = self.claims.ledger.may(&resource, &request.id, now);
                    match may {
                        May::Start if !self.claims.unverified.contains(&resource) => {
                            ahead_here += 1;
                            self.took_one = true;
                            busy.push(resource);
                            match self.claims.inherited.remove(&request.id) {
                                Some(why) => self.inherit(entry, request, secrets, why)?,
                                None => self.start(entry.clone(), request, secrets)?,
                            }
                        }
                        // A resource nobody holds is claimed only while a slot is free for it, so
                        // that one dispatcher does not claim every resource of a long queue; with
                        // other dispatchers about, it picks among a few of the oldest at random
                        // (below), so that they do not all race for the same one.
                        May::Claim if !wants.contains_key(&resource) => {
                            let claiming = fresh.iter().any(|(_, r, _)| *r == resource);
                            if !claiming
                                && fresh.len() < room * spread
                                && !(queue_on_busy && ahead_here >= room)
                            {
                                ahead_here += 1;
                                fresh.push((
                                    i,
                                    resource.clone(),
                                    Claimed {
                                        id: request.id.clone(),
                                        path: entry.path.clone(),
                                    },
                                ));
                                busy.push(resource);
                                waiting += 1;
                                continue;
                            }
                            ahead_here += usize::from(claiming);
                            skipped += 1;
                            waiting += 1;
                            if skipped >= LOOKAHEAD {
                                waiting += entries[i + 1..].len();
                                break;
                            }
                        }
                        May::Claim | May::Extend => {
                            ahead_here += 1;
                            first_want.get_or_insert(i);
                            wants.entry(resource.clone()).or_default().push(Claimed {
                                id: request.id.clone(),
                                path: entry.path.clone(),
                            });
                            busy.push(resource);
                            waiting += 1;
                        }
                        // Claimed and waiting for the look that follows, held by another, or
                        // fenced: it waits, and counts toward the look-ahead like a busy resource.
                        May::Start | May::HeldElsewhere | May::Fenced => {
                            ahead_here += usize::from(may == May::Start);
                            if may == May::HeldElsewhere {
                                self.waits_elsewhere(entry, &resource);
                            }
                            skipped += 1;
                            waiting += 1;
                            if skipped >= LOOKAHEAD {
                                waiting += entries[i + 1..].len();
                                break;
                            }
                        }
                    }
                }
            }
        }
        // Only a take that found resources nobody holds asks what its share leaves.
        let room = match fresh.is_empty() {
            true => room,
            false => room.min(self.fair_room(fresh.len())),
        };
        if fresh.len() > room {
            fastrand::shuffle(&mut fresh);
            fresh.truncate(room);
        }
        for (i, resource, claimed) in fresh {
            first_want = Some(first_want.map_or(i, |f: usize| f.min(i)));
            wants.entry(resource).or_default().push(claimed);
        }
        if let Some(first) = first_want {
            self.fill_batches(&entries[first + 1..], &mut wants, now);
            self.claim(wants)?;
        }
        Ok(waiting)
    }

    /// Adds to each claim `take` wants the requests of its resource that follow in the queue, up to
    /// a batch ([`Ledger::batch`](crate::claim::ledger::Ledger::batch)), looking at no more than
    /// [`MAX_BATCH`] of them: one push claims what the next second or so will start.
    fn fill_batches(
        &mut self,
        entries: &[InboxEntry],
        wants: &mut BTreeMap<String, Vec<Claimed>>,
        now: Instant,
    ) {
        let batch = self.claims.ledger.batch(self.cfg.jobs);
        for entry in entries.iter().take(MAX_BATCH) {
            if wants.values().all(|w| w.len() >= batch) {
                break;
            }
            let Some(Ok(request)) = self.check_here(entry) else {
                continue;
            };
            let Some(want) = wants.get_mut(&request.resource) else {
                continue;
            };
            let may = self.claims.ledger.may(&request.resource, &request.id, now);
            if want.len() < batch
                && matches!(may, May::Claim | May::Extend)
                && !want.iter().any(|c| c.id == request.id)
                && !self.running.contains_key(&request.id)
            {
                want.push(Claimed {
                    id: request.id,
                    path: entry.path.clone(),
                });
            }
        }
    }

    /// A request of a claim taken over from a dispatcher that stopped renewing it: recorded
    /// `abandoned` with `why`, or, for an idempotent kind with retries left, started again as its
    /// second attempt.
    fn inherit(
        &mut self,
        entry: &InboxEntry,
        request: Request,
        secrets: Vec<(String, String)>,
        why: String,
    ) -> Result<(), DaemonError> {
        let spec = &request.route.spec;
        if spec.idempotent && spec.retries >= 1 {
            event(
                "claim",
                Some(&request.id),
                &format!("runs again (idempotent): {why}"),
            );
            self.resume.entry(entry.path.clone()).or_insert(Resume {
                next_attempt: 2,
                logs: vec![AttemptLog::text(&format!("[git-dispatch: {why}]\n"))],
            });
            return self.start(entry.clone(), request, secrets);
        }
        let mut outcome = self.outcome(
            entry,
            request.id.clone(),
            Some(request.kind.clone()),
            State::Abandoned,
        );
        outcome.handler = Some(request.route.handler_path.clone());
        outcome.handler_blob = request.route.handler_blob;
        outcome
            .logs
            .push(AttemptLog::text(&format!("[git-dispatch: {why}]\n")));
        outcome.error = Some(why.clone());
        self.chain(&mut outcome, &request);
        crate::log::event_with(
            "claim",
            Some(&outcome.key),
            &format!("abandoned: {why}"),
            outcome.log_fields(),
        );
        self.record(&outcome)
    }

    pub(super) fn check(&self, entry: &InboxEntry) -> Result<Request, Rejection> {
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
    pub(super) fn secret_env(
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
    pub(super) fn is_taken(&self, key: &str) -> bool {
        if self.running.contains_key(key) {
            return true;
        }
        self.sync.tip().is_some_and(|tip| {
            let tree = self.sync.repo.find_commit(tip).and_then(|c| c.tree());
            tree.is_ok_and(|tree| layout::is_recorded(&tree, key))
        })
    }

    pub(super) fn refresh_snapshot(&mut self, tip: Oid) -> Result<(), DaemonError> {
        let trees = Snapshot::trees_of(&self.sync.repo, tip).map_err(SyncError::from)?;
        if self.snapshot.as_ref().is_some() && self.trust.tip_trees == Some(trees) {
            return Ok(());
        }
        // With --trust, the version an admin signed in, which may be older than the tip's.
        let config = self.config_commit(tip)?;
        let config_trees = Snapshot::trees_of(&self.sync.repo, config).map_err(SyncError::from)?;
        if self
            .snapshot
            .as_ref()
            .is_none_or(|s| s.trees != config_trees)
        {
            let snapshot = Snapshot::load(
                &self.sync.repo,
                config,
                self.scratch.path(),
                self.cfg.handlers_dir.as_deref(),
            )
            .map_err(io_err("could not write out the handlers"))?;
            for problem in snapshot.catalog.problems() {
                say(&format!("configuration: {problem}"));
            }
            for (kind, spec) in snapshot.catalog.kind_specs() {
                if spec.no_isolation {
                    say(&format!(
                        "warning: kind `{kind}` runs without isolation (`isolation: none`): its \
                         handlers see the host as their user does, and what they start may outlive them"
                    ));
                }
            }
            self.snapshot = Some(snapshot);
        }
        self.trust.tip_trees = Some(trees);
        self.untrusted_kinds(tip, config)
    }

    fn reject(&mut self, entry: &InboxEntry, rejection: Rejection) -> Result<(), DaemonError> {
        let key = rejected_key(rejection.id.as_deref(), &entry.name, |k| self.is_taken(k));
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

    pub(super) fn outcome(
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
            memory_peak: None,
            cpu_time: None,
            handler: None,
            handler_blob: None,
            dispatcher: self.cfg.dispatcher_id.clone(),
            cancelled_by: None,
            logs: Vec::new(),
            follow_ups: Vec::new(),
            submitter: self.submitter(entry),
            approvals: Vec::new(),
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
            isolation: Arc::clone(&self.isolation),
            request: request.clone(),
        };
        let sender = self.sender.clone();
        runner::spawn(plan, move |report| {
            let _ = sender.send(Event::Finished(Box::new(report)));
        });
        let resource = request.resource.clone();
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
        self.hold_runs(&resource);
        Ok(())
    }
}

#[cfg(test)]
#[path = "take_tests.rs"]
mod tests;
