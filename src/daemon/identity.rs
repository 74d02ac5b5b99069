//! Who asked, as the host's trust says (`run --trust`, [`crate::git::verify`]): the submitter of a
//! request is the verified signer of the commit that added it (not the branch head, not the author
//! field); a kind's `submitters:` take requests only from those principals; a kind's `approvals: N`
//! makes its requests wait until N of its `approvers`, none of them the submitter, have approved
//! with signed commits (`git-dispatch approve`, [`crate::inbox::approval`]); a denial by an
//! approver, or the end of `approval_timeout`, rejects the request.

use std::time::{Duration, SystemTime};

use git2::Oid;

use crate::daemon::Daemon;
use crate::git::verify::Signer;
use crate::inbox::approval::{self, Verdict};
use crate::inbox::queue::InboxEntry;
use crate::inbox::request::{Rejection, Request};
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
