//! Who asked, as the host's trust says (`run --trust`, [`crate::git::verify`]): the submitter of a
//! request is the verified signer of the commit that added it (not the branch head, not the author
//! field); a kind's `submitters:` take requests only from those principals; a kind's `approvals: N`
//! makes its requests wait until N of its `approvers`, none of them the submitter, have approved
//! with signed commits (`git-dispatch approve`, [`crate::inbox::approval`]); a denial by an
//! approver, or the end of `approval_timeout`, rejects the request. With `--trust`, the index,
//! handlers and schemas are used in the newest version an admin signed in; requests of kinds a
//! later, unsigned change touches wait for an admin.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use git2::Oid;

use crate::daemon::{Daemon, DaemonError};
use crate::git::sync::SyncError;
use crate::git::verify::Signer;
use crate::git::view::{TreeView, short};
use crate::inbox::approval::{self, Verdict};
use crate::inbox::queue::InboxEntry;
use crate::inbox::request::{Rejection, Request};
use crate::inbox::router::Catalog;
use crate::inbox::snapshot::Snapshot;
use crate::log::say;
use crate::outcome::Signed;

/// Where a request waits for approvals, or what they decided.
pub(super) enum Approval {
    /// Approved by enough approvers: who.
    Given(Vec<Signed>),
    /// Still waiting.
    Waiting,
    /// Denied or expired: why (recorded `rejected`).
    Refused(String),
}

impl Daemon {
    /// The verified signer of the commit that added `entry`, with that commit; `None` without
    /// `--trust`.
    pub(super) fn submitter(&self, entry: &InboxEntry) -> Option<(Signer, Oid)> {
        let verifier = self.verifier.as_ref()?;
        Some((verifier.signer(entry.arrival.commit), entry.arrival.commit))
    }

    /// A kind with `submitters:` takes requests only from them.
    pub(super) fn check_submitter(
        &self,
        entry: &InboxEntry,
        request: &Request,
    ) -> Result<(), Rejection> {
        let Some(allowed) = &request.route.spec.submitters else {
            return Ok(());
        };
        let reject = |why: String| Rejection {
            id: Some(request.id.clone()),
            kind: Some(request.kind.clone()),
            error: format!(
                "request `{}`: kind `{}` takes requests only from {}; {why}",
                entry.path,
                request.kind,
                list(allowed)
            ),
        };
        let Some((signer, commit)) = self.submitter(entry) else {
            return Err(reject(
                "this dispatcher has no --trust to tell who signed it".to_owned(),
            ));
        };
        match signer.principal() {
            Some(who) if allowed.iter().any(|a| a == who) => Ok(()),
            _ => Err(reject(format!(
                "the commit that added it ({}) is {}",
                crate::git::view::short(commit),
                signer.describe()
            ))),
        }
    }

    /// Where `request` stands with its approvals (a kind without `approvals:` has them all).
    pub(super) fn approval(&mut self, entry: &InboxEntry, request: &Request) -> Approval {
        let spec = &request.route.spec;
        if spec.approvals == 0 {
            return Approval::Given(Vec::new());
        }
        let found = self.approvals_of(&request.id);
        let Some(verifier) = &self.verifier else {
            return Approval::Refused(format!(
                "kind `{}` needs {} approval(s), and this dispatcher has no --trust to tell who \
                 approved",
                request.kind, spec.approvals
            ));
        };
        let submitter = verifier
            .signer(entry.arrival.commit)
            .principal()
            .map(str::to_owned);
        let mut given: Vec<Signed> = Vec::new();
        for item in found {
            let signer = verifier.signer(item.commit);
            let Some(who) = signer.principal() else {
                continue;
            };
            let counts = spec.approvers.iter().any(|a| a == who)
                && submitter.as_deref() != Some(who)
                && item.request_blob == Some(entry.oid);
            if !counts {
                continue;
            }
            match item.verdict {
                Verdict::Deny => {
                    return Approval::Refused(format!(
                        "denied by `{who}`{}",
                        if item.text.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", item.text)
                        }
                    ));
                }
                Verdict::Approve if !given.iter().any(|g| g.principal == who) => {
                    given.push(Signed {
                        principal: who.to_owned(),
                        fingerprint: match &signer {
                            Signer::Trusted { fingerprint, .. } => fingerprint.clone(),
                            _ => String::new(),
                        },
                        commit: item.commit,
                        time: item.time,
                    });
                }
                Verdict::Approve => {}
            }
        }
        if given.len() >= spec.approvals as usize {
            return Approval::Given(given);
        }
        let waited = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_sub(Duration::from_secs(
                u64::try_from(entry.arrival.time).unwrap_or(0),
            ));
        if waited >= spec.approval_timeout {
            return Approval::Refused(format!(
                "not approved within its approval_timeout of {} ({} of {} approvals)",
                humantime::format_duration(spec.approval_timeout),
                given.len(),
                spec.approvals
            ));
        }
        let due = std::time::Instant::now() + (spec.approval_timeout - waited);
        self.due_at = Some(self.due_at.map_or(due, |d| d.min(due)));
        Approval::Waiting
    }
}

impl Daemon {
    /// The approval files of request `id` at the tip, read again only when its folder changed.
    fn approvals_of(&mut self, id: &str) -> Vec<approval::Found> {
        let Some(tip) = self.sync.tip() else {
            return Vec::new();
        };
        let folder = self
            .sync
            .repo
            .find_commit(tip)
            .and_then(|c| c.tree())
            .ok()
            .and_then(|t| {
                t.get_path(std::path::Path::new(&format!(
                    "{}/{id}",
                    approval::APPROVALS
                )))
                .ok()
                .map(|e| e.id())
            });
        let Some(folder) = folder else {
            return Vec::new();
        };
        if let Some((read, found)) = self.approvals_read.get(id)
            && *read == folder
        {
            return found.clone();
        }
        let found = approval::read(&self.sync.repo, tip, id).unwrap_or_default();
        self.approvals_read
            .insert(id.to_owned(), (folder, found.clone()));
        found
    }
}

fn list(principals: &[String]) -> String {
    principals
        .iter()
        .map(|p| format!("`{p}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What `--trust` makes of the configuration at the tip.
#[derive(Default)]
pub(super) struct TrustState {
    /// The tip's `handlers/` and `schemas/` trees last looked at.
    pub(super) tip_trees: Option<(Option<Oid>, Option<Oid>)>,
    /// Kinds whose version at the tip is not the trusted one: their requests wait.
    kinds: HashSet<String>,
    /// Every kind waits: the schemas changed, or no version was ever signed by an admin.
    all: bool,
    /// Why the tip's configuration is not used, while that is so.
    pub(super) why: Option<String>,
}

impl Daemon {
    /// The commit whose `handlers/` and `schemas/` to use: the tip's, or with `--trust` the newest
    /// version an admin signed in (said once per version when that is not the tip's).
    pub(super) fn config_commit(&mut self, tip: Oid) -> Result<Oid, DaemonError> {
        let (Some(verifier), Some(trust)) = (&self.verifier, &self.cfg.trust) else {
            return Ok(tip);
        };
        let found = verifier
            .trusted_version(
                &self.sync.repo,
                tip,
                &["handlers", "schemas"],
                &trust.admins,
            )
            .map_err(SyncError::from)?;
        let why = found.newest.as_ref().map(|(commit, signer)| {
            let using = found.at.map_or_else(
                || "no earlier version was signed by an admin either, so nothing starts".to_owned(),
                |at| format!("the version of {} is used", short(at)),
            );
            format!(
                "the index, handlers or schemas changed in {} are not trusted: that commit is {}, \
                 and only an admin's signature counts ({}); {using}",
                short(*commit),
                signer.describe(),
                list(&trust.admins)
            )
        });
        self.trust.all = found.at.is_none();
        if self.trust.why != why {
            if let Some(why) = &why {
                say(&format!("warning: {why}"));
            } else if self.trust.why.is_some() {
                say("the index, handlers and schemas at the tip are trusted again");
            }
            self.metrics.untrusted(why.as_deref());
            self.trust.why = why;
        }
        Ok(found.at.unwrap_or(tip))
    }

    /// The kinds whose requests wait because the tip changes them in a way no admin signed: every
    /// kind when the schemas changed; otherwise those whose index entry or handler differ.
    pub(super) fn untrusted_kinds(&mut self, tip: Oid, config: Oid) -> Result<(), DaemonError> {
        self.trust.kinds.clear();
        let repo = &self.sync.repo;
        let (tip_trees, config_trees) = (
            Snapshot::trees_of(repo, tip).map_err(SyncError::from)?,
            Snapshot::trees_of(repo, config).map_err(SyncError::from)?,
        );
        if tip_trees == config_trees {
            return Ok(());
        }
        if tip_trees.1 != config_trees.1 {
            self.trust.all = true;
            return Ok(());
        }
        let tree = repo
            .find_commit(tip)
            .and_then(|c| c.tree())
            .map_err(SyncError::from)?;
        let at_tip = Catalog::load(&TreeView {
            repo,
            tree,
            commit: tip,
        });
        let trusted = &self.snapshot.as_ref().expect("loaded above").catalog;
        let signature = |catalog: &Catalog, kind: &str| {
            catalog
                .route(kind)
                .map(|r| format!("{:?} {:?}", r.spec, r.handler_blob))
                .ok()
        };
        for kind in at_tip.kinds().into_iter().chain(trusted.kinds()) {
            if signature(&at_tip, kind) != signature(trusted, kind) {
                self.trust.kinds.insert(kind.to_owned());
            }
        }
        Ok(())
    }

    /// Whether a request waits for an admin to sign its kind's change.
    pub(super) fn waits_for_trust(&self, checked: &Result<Request, Rejection>) -> bool {
        if self.trust.why.is_none() {
            return false;
        }
        let kind = match checked {
            Ok(request) => Some(request.kind.as_str()),
            Err(rejection) => rejection.kind.as_deref(),
        };
        self.trust.all || kind.is_some_and(|k| self.trust.kinds.contains(k))
    }

    /// Nothing may start when no version of the configuration was signed by an admin.
    pub(super) fn trust_blocker(&self) -> Option<String> {
        self.trust.all.then(|| self.trust.why.clone()).flatten()
    }
}
