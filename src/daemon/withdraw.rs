//! Withdrawn requests: a file that left `requests/` without an outcome (`git-dispatch cancel`, or a
//! `git rm` by hand) is recorded `cancelled`, naming who removed it and why
//! ([`crate::inbox::withdrawal`]), so that nothing that entered the inbox leaves it without an
//! outcome.
//!
//! After each look at the remote that found a new head, the commits since the tip last looked at
//! (kept in `<workdir>/inbox-seen`, so a restart goes on from where the last process was; on a new
//! workdir, the last [`LOOK_BACK`] commits) are read: outcome commits are
//! passed over by their message alone, and each other commit's `requests/` is compared with its
//! parent's. Of the files taken out, those without an outcome at the tip were withdrawn (a request
//! submitted and withdrawn between two looks included):
//! - one running here is stopped (SIGTERM, SIGKILL after its grace) and recorded `cancelled` with
//!   its partial log when it ends; one waiting for its slot never starts;
//! - one whose resource another dispatcher holds is left to that one, which may be running it,
//!   until the claim is gone or taken over here;
//! - any other is recorded `cancelled` at once.
//!
//! A run that ends before its withdrawal is seen is recorded as it ended: the first outcome wins.

use std::fs;
use std::path::Path;
use std::time::Instant;

use git2::{Oid, Repository, Tree};
use nix::unistd::Pid;

use crate::claim::ledger::May;
use crate::daemon::{Daemon, DaemonError, io_err};
use crate::git::sync::SyncError;
use crate::git::view::EntryType;
use crate::inbox::queue::{Arrival, InboxEntry};
use crate::inbox::request::{INBOX, request_stem};
use crate::inbox::withdrawal::{self, Withdrawal};
use crate::inbox::yaml::parse_yaml_mapping;
use crate::layout;
use crate::log::{event, event_with};
use crate::outcome::{AttemptLog, State};

/// How many commits back withdrawals are looked for at most: on a new workdir, and after the
/// branch was rewritten. Reading a commit's message costs a few microseconds; the whole of a
/// 100,000-commit history would add a fraction of a second to a start.
const LOOK_BACK: usize = 10_000;

/// The file in the workdir that keeps the commit up to which withdrawals were looked for.
const SEEN_FILE: &str = "inbox-seen";

/// A request file that left `requests/`, as the tree before held it.
#[derive(Debug, Clone)]
pub(super) struct Gone {
    path: String,
    blob: Oid,
    /// Its id (the file's `id`, else its name without `.yml`), kind and resource, as far as they
    /// read.
    id: String,
    kind: Option<String>,
    resource: Option<String>,
}

impl Gone {
    /// The request of a run here.
    pub(super) fn of(
        entry: &InboxEntry,
        key: &str,
        request: &crate::inbox::request::Request,
    ) -> Self {
        Self {
            path: entry.path.clone(),
            blob: entry.oid,
            id: key.to_owned(),
            kind: Some(request.kind.clone()),
            resource: Some(request.resource.clone()),
        }
    }
}

/// What the daemon keeps of withdrawals.
#[derive(Default)]
pub(super) struct Withdrawals {
    /// The commit up to which withdrawals were looked for; `None` on a new workdir.
    seen: Option<Oid>,
    /// The remote head the last comparison was made after.
    looked_at: Option<Oid>,
    /// Withdrawals of requests whose resource another dispatcher holds.
    deferred: Vec<Gone>,
    /// Runs here whose request was withdrawn, by key: who and why.
    pub(super) cancels: std::collections::HashMap<String, Withdrawal>,
}

impl Withdrawals {
    /// What `<workdir>/inbox-seen` kept.
    pub(super) fn open(workdir: &Path) -> Self {
        let seen = fs::read_to_string(workdir.join(SEEN_FILE))
            .ok()
            .and_then(|s| Oid::from_str(s.trim()).ok());
        Self {
            seen,
            ..Self::default()
        }
    }
}

/// The request files that commits after `seen` (along first parents, back from `tip`, at most
/// [`LOOK_BACK`]) took out of `requests/`, other than outcome commits. Without `seen`
/// (a new workdir), the whole history within that bound.
fn taken_out(
    repo: &Repository,
    tip: Oid,
    seen: Option<Oid>,
) -> Result<Vec<(String, Oid)>, git2::Error> {
    let mut found = Vec::new();
    let mut commit = repo.find_commit(tip)?;
    for _ in 0..LOOK_BACK {
        if Some(commit.id()) == seen {
            break;
        }
        let Ok(parent) = commit.parent(0) else { break };
        let outcome =
            String::from_utf8_lossy(commit.message_bytes()).contains("\nDispatch-State: ");
        if !outcome {
            let inbox = |c: &git2::Commit<'_>| -> Option<Tree<'_>> {
                let id = c.tree().ok()?.get_name(INBOX)?.id();
                repo.find_tree(id).ok()
            };
            if let Some(before) = inbox(&parent) {
                let after = inbox(&commit);
                for entry in before.iter() {
                    let Ok(name) = entry.name() else { continue };
                    let kept = after.as_ref().is_some_and(|a| a.get_name(name).is_some());
                    if !kept && request_stem(name).is_some() {
                        found.push((name.to_owned(), entry.id()));
                    }
                }
            }
        }
        commit = parent;
    }
    found.sort();
    found.dedup();
    Ok(found)
}

impl Daemon {
    /// After a look at the remote: records or stops what was withdrawn since the last comparison,
    /// and what was left to others whose claim is gone.
    pub(super) fn withdrawals_step(&mut self) -> Result<(), DaemonError> {
        let (Some(tip), Some(head)) = (self.sync.tip(), self.sync.remote_tip()) else {
            return Ok(());
        };
        self.settle_deferred(tip)?;
        if self.withdrawals.looked_at == Some(head) {
            return Ok(());
        }
        self.withdrawals.looked_at = Some(head);
        if self.withdrawals.seen == Some(tip) {
            return Ok(());
        }
        let gone: Vec<Gone> = {
            let repo = &self.sync.repo;
            let tree = repo
                .find_commit(tip)
                .and_then(|c| c.tree())
                .map_err(SyncError::from)?;
            // A file moved within `requests/` (same blob, another name) was not withdrawn.
            let queued: std::collections::HashSet<Oid> = tree
                .get_name(INBOX)
                .and_then(|e| repo.find_tree(e.id()).ok())
                .map(|t| t.iter().map(|e| e.id()).collect())
                .unwrap_or_default();
            taken_out(repo, tip, self.withdrawals.seen)
                .map_err(SyncError::from)?
                .into_iter()
                .filter(|(_, blob)| !queued.contains(blob))
                .map(|(name, blob)| self.describe(name, blob))
                .filter(|g| !layout::is_recorded(&tree, &g.id))
                .collect()
        };
        for gone in gone {
            self.withdrawn(tip, gone)?;
        }
        self.withdrawals.seen = Some(tip);
        let file = self.cfg.workdir.join(SEEN_FILE);
        fs::write(&file, tip.to_string()).map_err(io_err(format!("`{}`", file.display())))?;
        Ok(())
    }

    /// Id, kind and resource of a request file, as far as they read.
    fn describe(&self, name: String, blob: Oid) -> Gone {
        let stem = request_stem(&name).unwrap_or(&name).to_owned();
        let map = self
            .sync
            .repo
            .find_blob(blob)
            .ok()
            .and_then(|b| parse_yaml_mapping(b.content()).ok());
        let field = |key: &str| {
            map.as_ref()
                .and_then(|m| m.get(key))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        let kind = field("kind");
        let resource = field("resource").or_else(|| {
            let kind = kind.as_deref()?;
            let route = self.snapshot.as_ref()?.catalog.route(kind).ok()?;
            Some(
                route
                    .spec
                    .resource
                    .clone()
                    .unwrap_or_else(|| kind.to_owned()),
            )
        });
        Gone {
            path: format!("{INBOX}/{name}"),
            blob,
            id: field("id")
                .filter(|id| layout::is_valid_name(id))
                .unwrap_or(stem),
            kind,
            resource,
        }
    }

    /// One withdrawal: the run here stopped, left to the holder of its resource, or recorded.
    fn withdrawn(&mut self, tip: Oid, gone: Gone) -> Result<(), DaemonError> {
        let running = self
            .running
            .iter()
            .find(|(_, r)| r.entry.path == gone.path && r.entry.oid == gone.blob && !r.ended)
            .map(|(key, _)| key.clone());
        if let Some(key) = running {
            let why = self.who_withdrew(tip, &gone)?;
            self.stop_withdrawn(&key, why);
            return Ok(());
        }
        let held_elsewhere = gone.resource.as_deref().is_some_and(|resource| {
            self.claims.ledger.may(resource, &gone.id, Instant::now()) == May::HeldElsewhere
        });
        if held_elsewhere {
            self.withdrawals.deferred.push(gone);
            return Ok(());
        }
        self.record_withdrawn(tip, &gone, Vec::new(), 0)
    }

    /// Withdrawals left to another dispatcher: forgotten once recorded; recorded here once nobody
    /// else holds their resource.
    fn settle_deferred(&mut self, tip: Oid) -> Result<(), DaemonError> {
        if self.withdrawals.deferred.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        let mut due = Vec::new();
        {
            let tree = self
                .sync
                .repo
                .find_commit(tip)
                .and_then(|c| c.tree())
                .map_err(SyncError::from)?;
            let ledger = &self.claims.ledger;
            self.withdrawals.deferred.retain(|gone| {
                if layout::is_recorded(&tree, &gone.id) {
                    return false;
                }
                let resource = gone.resource.as_deref().unwrap_or_default();
                if ledger.may(resource, &gone.id, now) == May::HeldElsewhere {
                    return true;
                }
                due.push(gone.clone());
                false
            });
        }
        for gone in due {
            self.record_withdrawn(tip, &gone, Vec::new(), 0)?;
        }
        Ok(())
    }

    /// Stops the run `key` whose request was withdrawn: it starts no handler (more), and the one
    /// that runs gets SIGTERM now and SIGKILL after the kind's grace.
    fn stop_withdrawn(&mut self, key: &str, why: Withdrawal) {
        let Some(run) = self.running.get(key) else {
            return;
        };
        run.in_flight.withhold();
        run.in_flight.abandon();
        event(
            "cancel",
            Some(key),
            &format!("{}: stopping the run", why.describe()),
        );
        if let Some((pid, _)) = run.in_flight.get() {
            crate::run::sandbox::terminate(Pid::from_raw(pid as i32), run.in_flight.is_isolated());
            let grace = run.request.route.spec.grace;
            self.claims.kill_at(Instant::now() + grace, pid);
        }
        self.withdrawals.cancels.insert(key.to_owned(), why);
    }

    /// A run a previous process left in the journal whose request left the inbox without an
    /// outcome: recorded `cancelled` with what its log holds. False when its file is still there
    /// (changed since: that is another submission).
    pub(super) fn withdrawn_meanwhile(
        &mut self,
        tip: Oid,
        entry: &crate::run::journal::Entry,
    ) -> Result<bool, DaemonError> {
        let at_tip = self
            .sync
            .repo
            .find_commit(tip)
            .and_then(|c| c.tree())
            .map_err(SyncError::from)?
            .get_path(Path::new(&entry.request_path))
            .is_ok();
        let Ok(blob) = Oid::from_str(&entry.request_blob) else {
            return Ok(false);
        };
        if at_tip {
            return Ok(false);
        }
        let name = entry
            .request_path
            .trim_start_matches("requests/")
            .to_owned();
        let mut gone = self.describe(name, blob);
        gone.id = entry.key.clone();
        let logs = (1..=entry.attempt)
            .map(|n| {
                AttemptLog::from_bytes(
                    fs::read(self.journal.log_path(&entry.key, n)).unwrap_or_default(),
                )
            })
            .collect();
        self.record_withdrawn(tip, &gone, logs, entry.attempt)?;
        Ok(true)
    }

    /// Who withdrew `gone` and why: the author of the commit that removed it, or with `--trust` its
    /// verified signer (an unsigned or unknown one said as such).
    fn who_withdrew(&self, tip: Oid, gone: &Gone) -> Result<Withdrawal, DaemonError> {
        let mut why = withdrawal::find(&self.sync.repo, tip, &gone.path, gone.blob)
            .map_err(SyncError::from)?;
        if let (Some(verifier), Some(commit)) = (&self.verifier, why.commit) {
            let signer = verifier.signer(commit);
            why.by = match signer.principal() {
                Some(who) => who.to_owned(),
                None => format!("{} (the commit is {})", why.by, signer.describe()),
            };
        }
        Ok(why)
    }

    /// Records `gone` `cancelled`, with the logs of what ran of it (none when it never started).
    pub(super) fn record_withdrawn(
        &mut self,
        tip: Oid,
        gone: &Gone,
        logs: Vec<AttemptLog>,
        attempts: u32,
    ) -> Result<(), DaemonError> {
        self.claims.inherited.remove(&gone.id);
        let why = self.who_withdrew(tip, gone)?;
        let (arrived_in, arrived_at) = why.arrival.unwrap_or((tip, 0));
        let entry = InboxEntry {
            name: gone.path.trim_start_matches("requests/").to_owned(),
            path: gone.path.clone(),
            kind: EntryType::File { executable: false },
            oid: gone.blob,
            arrival: Arrival {
                commit: arrived_in,
                time: arrived_at,
            },
        };
        let mut outcome =
            self.outcome(&entry, gone.id.clone(), gone.kind.clone(), State::Cancelled);
        outcome.attempts = attempts;
        outcome.logs = logs;
        let line = format!(
            "[git-dispatch: {}{}]\n",
            why.describe(),
            if attempts == 0 { "; it never ran" } else { "" }
        );
        match outcome.logs.last_mut() {
            Some(log) => {
                let mut bytes = std::mem::take(&mut log.bytes);
                bytes.extend_from_slice(format!("\n{line}").as_bytes());
                *log = AttemptLog::from_bytes(bytes);
            }
            None => outcome.logs.push(AttemptLog::text(&line)),
        }
        outcome.error = Some(why.describe());
        outcome.cancelled_by = why.commit.map(|c| (why.by.clone(), c));
        event_with(
            "cancel",
            Some(&outcome.key),
            &format!("cancelled: {}", why.describe()),
            outcome.log_fields(),
        );
        self.record(&outcome)
    }
}
