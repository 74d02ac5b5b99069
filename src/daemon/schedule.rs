//! Schedules: each due slot of each valid `schedules/NAME.yml` becomes one request
//! `NAME.<slot>` committed into `requests/` (a commit of its own, `schedule: NAME ...`), pushed with
//! the outcomes, and taken like any other ([`crate::inbox::schedule`]).
//!
//! Exactly once: the id is the slot, and a slot is written only when neither `requests/` nor the
//! outcomes at the tip hold it. Two dispatchers that write the same slot race on the push: the
//! loser's commit is not an outcome, so its reconcile drops it and the next look finds the slot
//! there. A slot this dispatcher wrote whose commit was dropped is written again.
//!
//! The slots looked at start after the time of the commit that made the schedule's current version
//! (no run for slots before the schedule existed), or after the last slot looked at by this
//! process. `catch_up: latest` writes the newest missed slot only, `all` every missed one (at most
//! [`MAX_CATCH_UP`](crate::inbox::schedule::MAX_CATCH_UP)), `none` only the slots that come while
//! this process runs.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use git2::{FileMode, Oid};

use crate::daemon::{Daemon, DaemonError};
use crate::git::sync::SyncError;
use crate::git::tree_edit::Edit;
use crate::inbox::request::INBOX;
use crate::inbox::schedule::{self, CatchUp, MAX_CATCH_UP, SCHEDULES, Schedule};
use crate::log::{event, say};

/// How many commits back the version of a schedule is looked for.
const MAX_WALK: usize = 10_000;

/// The `handlers/` and `schemas/` trees a schedule's request was checked against.
type ConfigTrees = (Option<Oid>, Option<Oid>);

/// One schedule as last read.
struct Entry {
    blob: Oid,
    /// When its current version was committed: no slot before it.
    since: DateTime<Utc>,
    parsed: Result<Schedule, String>,
    /// The newest slot handled by this process.
    done: Option<DateTime<Utc>>,
}

/// What the daemon keeps of the schedules.
pub(super) struct Schedules {
    /// What they were read from: the `schedules/` tree and the configuration's trees.
    read: Option<(Option<Oid>, ConfigTrees)>,
    entries: HashMap<String, Entry>,
    /// When this process started: `catch_up: none` writes no slot before.
    started: DateTime<Utc>,
    /// The next slot of any schedule, for the loop's wait.
    pub(super) next: Option<Instant>,
}

impl Default for Schedules {
    fn default() -> Self {
        Self {
            read: None,
            entries: HashMap::new(),
            started: Utc::now(),
            next: None,
        }
    }
}

impl Daemon {
    /// Writes the slots that are due; sets when the next one is.
    pub(super) fn schedules_step(&mut self) -> Result<(), DaemonError> {
        let Some(tip) = self.sync.tip() else {
            return Ok(());
        };
        if self.shutting_down {
            return Ok(());
        }
        self.refresh_snapshot(tip)?;
        let folder = self
            .sync
            .repo
            .find_commit(tip)
            .and_then(|c| c.tree())
            .map_err(SyncError::from)?
            .get_name(SCHEDULES)
            .map(|e| e.id());
        let config = self.snapshot.as_ref().map(|s| s.trees).unwrap_or_default();
        if self.schedules.read != Some((folder, config)) {
            self.read_schedules(tip)?;
            self.schedules.read = Some((folder, config));
        }
        if self.schedules.entries.is_empty() {
            self.schedules.next = None;
            return Ok(());
        }
        let now = Utc::now();
        let tree = self
            .sync
            .repo
            .find_commit(tip)
            .and_then(|c| c.tree())
            .map_err(SyncError::from)?;
        let mut edits = Vec::new();
        let mut written = Vec::new();
        let queued: Vec<String> = self
            .inbox
            .list(&self.sync.repo, tip)
            .map_err(SyncError::from)?
            .iter()
            .filter_map(|e| crate::inbox::request::request_stem(&e.name).map(str::to_owned))
            .collect();
        let exists = |id: &str| {
            tree.get_path(Path::new(&format!("{INBOX}/{id}.yml")))
                .is_ok()
                || crate::layout::is_recorded(&tree, id)
        };
        let mut next: Option<DateTime<Utc>> = None;
        let started = self.schedules.started;
        for (name, entry) in &mut self.schedules.entries {
            let Ok(schedule) = &entry.parsed else {
                continue;
            };
            // A slot written here and dropped since (a lost push race on another change): again.
            if let Some(done) = entry.done
                && !exists(&schedule.slot_id(done))
            {
                entry.done = None;
            }
            let after = match (schedule.catch_up, entry.done) {
                (_, Some(done)) => done,
                (CatchUp::None, None) => entry.since.max(started),
                (_, None) => entry.since,
            };
            let limit = match schedule.catch_up {
                CatchUp::All => MAX_CATCH_UP,
                _ => 1,
            };
            let due = schedule.slots(after, now, limit);
            next = [next, schedule.next_after(now)].into_iter().flatten().min();
            let Some(&newest) = due.last() else {
                continue;
            };
            entry.done = Some(newest);
            let busy = queued
                .iter()
                .any(|id| schedule::schedule_of(id) == Some(name.as_str()));
            if schedule.skip_overlap && busy {
                event(
                    "schedule",
                    None,
                    &format!(
                        "`{name}`: slot {} skipped: a request of this schedule is still queued or \
                         running (overlap: skip)",
                        schedule.slot_id(newest)
                    ),
                );
                continue;
            }
            let slots: &[DateTime<Utc>] = if schedule.skip_overlap {
                &due[due.len() - 1..]
            } else {
                &due
            };
            for slot in slots {
                let id = schedule.slot_id(*slot);
                if exists(&id) {
                    continue;
                }
                edits.push(Edit::Upsert {
                    path: format!("{INBOX}/{id}.yml"),
                    oid: self.sync.blob(schedule.request_yaml(&id).as_bytes())?,
                    mode: FileMode::Blob,
                });
                written.push(id);
            }
        }
        self.schedules.next = next.map(|t| {
            let left = (t - now).to_std().unwrap_or_default();
            Instant::now() + left + Duration::from_millis(5)
        });
        if edits.is_empty() {
            return Ok(());
        }
        self.sync
            .commit(&edits, &format!("schedule: {}", written.join(", ")))?;
        for id in &written {
            event("schedule", Some(id), "enqueued");
        }
        self.push.mark_unpushed();
        self.syncing.checked_when_empty = false;
        Ok(())
    }

    /// Reads `schedules/` at `tip`; says each invalid one once per version.
    fn read_schedules(&mut self, tip: Oid) -> Result<(), DaemonError> {
        let Some(at) = self.trusted_schedules(tip) else {
            self.schedules.entries.clear();
            return Ok(());
        };
        let repo = &self.sync.repo;
        let tree = repo
            .find_commit(at)
            .and_then(|c| c.tree())
            .map_err(SyncError::from)?;
        let catalog = &self.snapshot.as_ref().expect("refreshed above").catalog;
        let mut entries = HashMap::new();
        for (name, blob, parsed) in schedule::of_tree(repo, &tree, catalog) {
            let old = self.schedules.entries.remove(&name);
            if let Err(e) = &parsed
                && old
                    .as_ref()
                    .is_none_or(|o| o.blob != blob || o.parsed.is_ok())
            {
                say(&format!("{e}; it makes no requests until it is fixed"));
            }
            let (since, done) = match old {
                Some(o) if o.blob == blob => (o.since, o.done),
                _ => (version_time(repo, at, &name, blob), None),
            };
            entries.insert(
                name,
                Entry {
                    blob,
                    since,
                    parsed,
                    done,
                },
            );
        }
        self.schedules.entries = entries;
        Ok(())
    }
}

impl Daemon {
    /// The commit whose `schedules/` to use: the tip's, or with `--trust` the newest version an
    /// admin signed in (said when that is not the tip's); `None`: no version is trusted, so no
    /// schedule runs.
    fn trusted_schedules(&self, tip: Oid) -> Option<Oid> {
        let (Some(verifier), Some(trust)) = (&self.verifier, &self.cfg.trust) else {
            return Some(tip);
        };
        let repo = &self.sync.repo;
        let Ok(found) = verifier.trusted_version(repo, tip, &[SCHEDULES], &trust.admins) else {
            return None;
        };
        let folder_at = |c: Oid| {
            repo.find_commit(c)
                .and_then(|c| c.tree())
                .ok()
                .and_then(|t| t.get_name(SCHEDULES).map(|e| e.id()))
        };
        if found.at.is_none() && folder_at(tip).is_none() {
            return None;
        }
        if let Some((commit, signer)) = &found.newest {
            say(&format!(
                "warning: `{SCHEDULES}/` as changed in {} is not used: that commit is {}, and only \
                 an admin's signature counts; {}",
                crate::git::view::short(*commit),
                signer.describe(),
                found.at.map_or_else(
                    || "no version was signed by an admin, so no schedule runs".to_owned(),
                    |at| format!("the version of {} is used", crate::git::view::short(at))
                )
            ));
        }
        found.at
    }
}

/// When the commit that gave `schedules/NAME.yml` its blob `blob` was made (along first parents).
fn version_time(repo: &git2::Repository, tip: Oid, name: &str, blob: Oid) -> DateTime<Utc> {
    let path = format!("{SCHEDULES}/{name}.yml");
    let holds = |c: &git2::Commit<'_>| {
        c.tree()
            .ok()
            .and_then(|t| t.get_path(Path::new(&path)).ok())
            .is_some_and(|e| e.id() == blob)
    };
    let Ok(mut commit) = repo.find_commit(tip) else {
        return Utc::now();
    };
    for _ in 0..MAX_WALK {
        match commit.parent(0) {
            Ok(parent) if holds(&parent) => commit = parent,
            _ => break,
        }
    }
    DateTime::from_timestamp(commit.time().seconds(), 0).unwrap_or_else(Utc::now)
}
