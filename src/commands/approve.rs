//! `git-dispatch approve ID [--comment C]` and `deny ID [--reason R]`: in a clone of an inbox,
//! commit `approvals/ID/<ulid>.yml` ([`crate::inbox::approval`]) for the version of request ID
//! waiting in `requests/`, signed with the user's git signing setup (`git commit -S`), and push
//! it. The dispatchers count the approval for its verified signer when that principal is one of the
//! kind's `approvers` and not the submitter; a denial by one rejects the request.

use std::fs;

use git2::{ObjectType, Oid};

use crate::cli::{ApproveArgs, DenyArgs};
use crate::commands::cancel::{find_request, find_status};
use crate::error::CommandError;
use crate::inbox::approval::{self, APPROVALS, Verdict};
use crate::layout::is_valid_name;
use crate::submitter::change::{Plan, change};
use crate::submitter::checkout::Checkout;

pub(crate) fn approve(args: &ApproveArgs) -> Result<(), CommandError> {
    decide(
        &args.id,
        Verdict::Approve,
        args.comment.as_deref().unwrap_or(""),
        args.no_push,
        args.repo.path.as_deref(),
    )
}

pub(crate) fn deny(args: &DenyArgs) -> Result<(), CommandError> {
    decide(
        &args.id,
        Verdict::Deny,
        args.reason.as_deref().unwrap_or(""),
        args.no_push,
        args.repo.path.as_deref(),
    )
}

fn decide(
    id: &str,
    verdict: Verdict,
    text: &str,
    no_push: bool,
    repo: Option<&std::path::Path>,
) -> Result<(), CommandError> {
    if !is_valid_name(id) {
        return Err(CommandError::config(anyhow::anyhow!(
            "`{id}` is not a request id (expected [A-Za-z0-9][A-Za-z0-9._-]{{0,127}})"
        )));
    }
    let checkout = Checkout::open(repo).map_err(CommandError::config)?;
    let said = change(&checkout, no_push, |checkout| {
        let root = &checkout.root;
        let Some(path) = find_request(root, id) else {
            return Err(CommandError::subject(match find_status(root, id) {
                Some(status) => anyhow::anyhow!(
                    "`{id}` is not waiting: it is {} already",
                    status["state"].as_str().unwrap_or("recorded")
                ),
                None => anyhow::anyhow!("there is no request `{id}` waiting in `requests/`"),
            }));
        };
        let bytes = fs::read(root.join(&path))
            .map_err(|e| CommandError::config(anyhow::anyhow!("`{path}`: {e}")))?;
        let blob = Oid::hash_object(ObjectType::Blob, &bytes)
            .map_err(|e| CommandError::config(anyhow::anyhow!(e)))?;
        let (word, label) = match verdict {
            Verdict::Approve => ("approve", "comment"),
            Verdict::Deny => ("deny", "reason"),
        };
        let mut message = format!("{word} {id}");
        if !text.is_empty() {
            message.push_str(&format!("\n\n{label}: {text}\n"));
        }
        Ok(Plan::Commit {
            path: format!("{APPROVALS}/{id}/{}.yml", ulid::Ulid::generate()),
            contents: Some(approval::file(id, blob, verdict, text)),
            message,
            signed: true,
        })
    })?;
    eprintln!("{said}");
    Ok(())
}
