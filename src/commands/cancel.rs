//! `git-dispatch cancel ID [--reason R]`: in a clone of an inbox, withdraw request ID by removing
//! its file from `requests/` in a commit of its own (the reason as a `Dispatch-Reason:` trailer),
//! made on the upstream's newest tip and pushed. The dispatchers record the withdrawal `cancelled`,
//! naming the commit's author and the reason; the one running it stops it first
//! ([`crate::daemon`]'s `withdraw`).
//!
//! A request that has an outcome cannot be cancelled: exit 1 with its state (0 when that state is
//! `cancelled`: cancelling twice is harmless), as for an id nobody submitted.

use std::fs;
use std::path::Path;

use serde_json::Value as Json;

use crate::cli::CancelArgs;
use crate::error::CommandError;
use crate::inbox::request::{INBOX, request_stem};
use crate::inbox::withdrawal::REASON_TRAILER;
use crate::inbox::yaml::parse_yaml_mapping;
use crate::layout::{Place, is_valid_name};
use crate::submitter::change::{Plan, change};
use crate::submitter::checkout::Checkout;

pub(crate) fn run(args: &CancelArgs) -> Result<(), CommandError> {
    if !is_valid_name(&args.id) {
        return Err(CommandError::config(anyhow::anyhow!(
            "`{}` is not a request id (expected [A-Za-z0-9][A-Za-z0-9._-]{{0,127}})",
            args.id
        )));
    }
    let checkout = Checkout::open(args.repo.path.as_deref()).map_err(CommandError::config)?;
    let said = change(&checkout, args.no_push, |checkout| {
        decide(&checkout.root, checkout, &args.id, args.reason.as_deref())
    })?;
    eprintln!("{said}");
    Ok(())
}

/// Removes the request's file, or says why not.
fn decide(
    root: &Path,
    checkout: &Checkout,
    id: &str,
    reason: Option<&str>,
) -> Result<Plan, CommandError> {
    if let Some(path) = find_request(root, id) {
        let mut message = format!("cancel {id}");
        if let Some(reason) = reason.filter(|r| !r.trim().is_empty()) {
            let reason = reason.split_whitespace().collect::<Vec<_>>().join(" ");
            message.push_str(&format!("\n\n{REASON_TRAILER} {reason}\n"));
        }
        return Ok(Plan::Commit {
            path,
            contents: None,
            message,
            signed: false,
        });
    }
    if let Some(status) = find_status(root, id) {
        let state = status["state"].as_str().unwrap_or("recorded");
        let when = status["finished_at"].as_str().unwrap_or("an unknown time");
        if state == "cancelled" {
            let by = status["cancelled_by"].as_str().unwrap_or("someone");
            return Ok(Plan::Nothing(format!(
                "`{id}` is cancelled already (by {by}, recorded {when}); nothing changed"
            )));
        }
        return Err(CommandError::subject(anyhow::anyhow!(
            "`{id}` cannot be cancelled: it is {state} already (finished {when})"
        )));
    }
    if let Some(removed) = removed_by(checkout, id) {
        return Ok(Plan::Nothing(format!(
            "`{id}` was withdrawn already ({removed}); a dispatcher records it `cancelled`; \
             nothing changed"
        )));
    }
    Err(CommandError::subject(anyhow::anyhow!(
        "there is no request `{id}`: none waits in `{INBOX}/` and none has an outcome"
    )))
}

/// `requests/ID.yml` (or `.yaml`), else the file whose `id` is ID.
pub(crate) fn find_request(root: &Path, id: &str) -> Option<String> {
    for ext in ["yml", "yaml"] {
        let rel = format!("{INBOX}/{id}.{ext}");
        if root.join(&rel).is_file() {
            return Some(rel);
        }
    }
    let entries = fs::read_dir(root.join(INBOX)).ok()?;
    entries.flatten().find_map(|entry| {
        let name = entry.file_name().to_string_lossy().into_owned();
        request_stem(&name)?;
        let bytes = fs::read(entry.path()).ok()?;
        let map = parse_yaml_mapping(&bytes).ok()?;
        (map.get("id")?.as_str()? == id).then(|| format!("{INBOX}/{name}"))
    })
}

/// ID's status file in either place of [`crate::layout`].
pub(crate) fn find_status(root: &Path, id: &str) -> Option<Json> {
    Place::ALL.iter().find_map(|place| {
        let bytes = fs::read(root.join(place.status(id))).ok()?;
        serde_json::from_slice(&bytes).ok()
    })
}

/// The last commit that removed `requests/ID.yml` (or `.yaml`), as `abc1234 by Name`.
fn removed_by(checkout: &Checkout, id: &str) -> Option<String> {
    let yml = format!("{INBOX}/{id}.yml");
    let yaml = format!("{INBOX}/{id}.yaml");
    let found = checkout
        .git(&[
            "log",
            "-1",
            "--diff-filter=D",
            "--format=%h by %an",
            "--",
            &yml,
            &yaml,
        ])
        .ok()?;
    let found = found.trim();
    (!found.is_empty()).then(|| found.to_owned())
}
