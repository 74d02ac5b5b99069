//! Capability routing: the requests this dispatcher leaves queued for another one. A request whose
//! kind's `runs_on` names a label this dispatcher lacks (`run --labels`), or, with `--handlers-dir`,
//! whose kind the host does not define while the repository's own index lists it, is neither started
//! nor rejected nor counted as waiting: another dispatcher takes it.

use std::collections::{HashMap, HashSet};

use git2::Oid;

use crate::daemon::Daemon;
use crate::inbox::queue::InboxEntry;
use crate::inbox::request::{Rejection, Request};
use crate::log::say;

/// What this dispatcher left, so that a left request is not checked again on every loop and each
/// kind is logged once.
#[derive(Default)]
pub(super) struct Left {
    /// The snapshot (trees of `handlers/` and `schemas/`) the entries below were left under.
    trees: Option<(Option<Oid>, Option<Oid>)>,
    /// Inbox entries left, by path and blob.
    entries: HashSet<(String, Oid)>,
    /// The kinds (with why) already logged.
    said: HashSet<(String, String)>,
    /// The resource of each request found waiting on a resource another dispatcher held, by blob
    /// (a request's resource is of its content and the snapshot alone): while another holds it,
    /// the request is passed over without being parsed again, and without counting toward the
    /// look-ahead (a long queue another dispatcher holds would hide what waits behind it).
    resources: HashMap<Oid, String>,
}

impl Daemon {
    /// Checks `entry` as [`Daemon::check`] does, unless this dispatcher leaves it for another one:
    /// `None` then (said once per kind).
    pub(super) fn check_here(&mut self, entry: &InboxEntry) -> Option<Result<Request, Rejection>> {
        let trees = self.snapshot.as_ref().map(|s| s.trees);
        if self.left.trees != trees {
            self.left.trees = trees;
            self.left.entries.clear();
            self.left.resources.clear();
        }
        let key = (entry.path.clone(), entry.oid);
        if self.left.entries.contains(&key) {
            return None;
        }
        let checked = self.check(entry);
        let Some((kind, why)) = self.leave_reason(&checked) else {
            return Some(checked);
        };
        self.left.entries.insert(key);
        if self.left.said.insert((kind.clone(), why.clone())) {
            say(&format!(
                "leaving requests of kind `{kind}` for a dispatcher {why}"
            ));
        }
        None
    }

    /// `entry` waited on `resource`, which another dispatcher holds (found so after every check
    /// that can hold a request back or reject it).
    pub(super) fn waits_elsewhere(&mut self, entry: &InboxEntry, resource: &str) {
        if self.left.trees == self.snapshot.as_ref().map(|s| s.trees) {
            self.left.resources.insert(entry.oid, resource.to_owned());
        }
    }

    /// Whether `entry` was found waiting on a resource another dispatcher holds, under the same
    /// snapshot, and another still holds it.
    pub(super) fn held_elsewhere(&self, entry: &InboxEntry) -> bool {
        self.left.trees == self.snapshot.as_ref().map(|s| s.trees)
            && self
                .left
                .resources
                .get(&entry.oid)
                .is_some_and(|resource| self.claims.ledger.held_elsewhere(resource))
    }

    /// Forgets the resources of requests that left the inbox, once they outnumber those in it.
    pub(super) fn forget_resources(&mut self, entries: &[InboxEntry]) {
        if self.left.resources.len() <= entries.len() * 2 + 256 {
            return;
        }
        let now: HashSet<Oid> = entries.iter().map(|e| e.oid).collect();
        self.left.resources.retain(|oid, _| now.contains(oid));
    }

    /// The kind of a request this dispatcher leaves for another one, and for which one.
    fn leave_reason(&self, checked: &Result<Request, Rejection>) -> Option<(String, String)> {
        match checked {
            Ok(request) => {
                let runs_on = &request.route.spec.runs_on;
                let lacks = runs_on.iter().any(|label| !self.cfg.labels.contains(label));
                lacks.then(|| {
                    (
                        request.kind.clone(),
                        format!("with labels `{}`", runs_on.join(", ")),
                    )
                })
            }
            Err(rejection) => {
                let kind = rejection.kind.as_deref()?;
                let snapshot = self.snapshot.as_ref()?;
                let elsewhere = snapshot.catalog.lacks(kind)
                    && snapshot
                        .repo_kinds
                        .as_ref()
                        .is_some_and(|kinds| kinds.contains(kind));
                elsewhere.then(|| {
                    (
                        kind.to_owned(),
                        "that defines it (this host's `--handlers-dir` does not)".to_owned(),
                    )
                })
            }
        }
    }
}
