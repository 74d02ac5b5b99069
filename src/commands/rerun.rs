//! `git-dispatch rerun ID [--param k=v]... [--no-push]`: in a clone of an inbox, submit request ID
//! again. The original is read at the upstream's tip (after a fetch): its recorded copy
//! `processed/…/ID.yml`, or the file still waiting in `requests/`. The new request keeps every key of
//! it but `id` (kind, params, resource, ...), takes the `--param` overrides as `submit` does, and is
//! named `ID.rerun-N`, N one more than the highest N any `ID.rerun-N` in the inbox or with an
//! outcome has; from that name the dispatcher writes `rerun_of: ID` into its status
//! ([`crate::outcome::rerun_of`]). It is then written, checked, committed and pushed as `submit`
//! does ([`submit::send`]); the original is not touched.

use std::path::Path;

use git2::Oid;
use serde_yaml::Mapping;

use crate::cli::RerunArgs;
use crate::commands::submit;
use crate::error::CommandError;
use crate::git::view::{RepoView, TreeView, short};
use crate::inbox::request::{INBOX, request_stem};
use crate::inbox::yaml::parse_yaml_mapping;
use crate::layout::{self, Place, is_valid_name};
use crate::outcome::{RERUN_SUFFIX, rerun_number};
use crate::report::history::History;
use crate::submitter::checkout::{Checkout, Tip};
use crate::submitter::draft::{Draft, DraftError};

/// The longest id `layout::is_valid_name` allows.
const ID_LIMIT: usize = 128;

pub(crate) fn run(args: &RerunArgs) -> Result<(), CommandError> {
    let id = args.id.as_str();
    if !is_valid_name(id) {
        return Err(CommandError::config(anyhow::anyhow!(
            "`{id}` is not a request id (expected [A-Za-z0-9][A-Za-z0-9._-]{{0,127}})"
        )));
    }
    let checkout = Checkout::open(args.repo.path.as_deref()).map_err(CommandError::config)?;
    let upstream = if args.no_push {
        checkout.upstream().ok()
    } else {
        Some(checkout.upstream().map_err(CommandError::config)?)
    };
    if let (Some(upstream), false) = (&upstream, args.no_push) {
        submit::ensure_nothing_unpushed(&checkout, upstream)?;
    }
    if let Some(upstream) = &upstream {
        checkout.fetch(upstream).map_err(|e| {
            CommandError::remote(anyhow::anyhow!(e).context(format!(
                "could not fetch `{}` to find request `{id}`",
                upstream.short()
            )))
        })?;
    }
    let tip = checkout.tip().map_err(CommandError::config)?;
    let (path, mapping) = original(&checkout, &tip, id)?;
    let mut draft = Draft::from_request(Path::new(&path), mapping).map_err(classify)?;
    draft.identify(Some(&next_id(&checkout, &tip, id)?));
    for param in &args.params {
        draft.set_param(param).map_err(classify)?;
    }
    eprintln!("rerunning `{id}` (from `{path}` at {})", short(tip.oid));
    submit::send(&checkout, upstream.filter(|_| !args.no_push), &draft)
}

fn classify(e: DraftError) -> CommandError {
    if e.is_invalid_request() {
        CommandError::subject(e)
    } else {
        CommandError::config(e)
    }
}

/// Request `id` at the tip: its recorded copy when it has an outcome, else the file waiting in
/// `requests/`; its path and its keys. Neither is a subject error (exit 1).
fn original(checkout: &Checkout, tip: &Tip, id: &str) -> Result<(String, Mapping), CommandError> {
    let history = History::new(&checkout.repo, tip.oid);
    let view = tree_view(checkout, tip.oid)?;
    let recorded = history.status(id, tip.oid).map_err(CommandError::config)?;
    let path = match recorded {
        Some((place, status)) => {
            let path = place.request(id);
            if !view.exists(&path).unwrap_or(false) {
                return Err(CommandError::subject(anyhow::anyhow!(
                    "request `{id}` is recorded `{}` but its request file was not kept (`{path}` \
                     is missing: it was not a regular file); submit it anew with `git-dispatch submit`",
                    status["state"].as_str().unwrap_or("unknown")
                )));
            }
            path
        }
        None => {
            let queue = history.queue().map_err(CommandError::config)?;
            let Some(waiting) = queue.into_iter().find(|w| w.id == id) else {
                return Err(CommandError::subject(anyhow::anyhow!(
                    "no request `{id}` at `{}` ({}): neither an outcome (`{}`) nor a request \
                     waiting in `{INBOX}/`; nothing was written. Check the id (`git-dispatch status` \
                     lists recent ones)",
                    tip.name,
                    short(tip.oid),
                    Place::Sharded.status(id),
                )));
            };
            waiting.entry.path
        }
    };
    let bytes = view
        .read(&path)
        .map_err(|e| CommandError::config(anyhow::anyhow!("`{path}`: {e}")))?
        .ok_or_else(|| {
            CommandError::config(anyhow::anyhow!(
                "`{path}` at {} is not a regular file",
                short(tip.oid)
            ))
        })?;
    let mapping = parse_yaml_mapping(&bytes).map_err(|reason| {
        CommandError::subject(anyhow::anyhow!(
            "request `{path}` {reason}; it cannot be rerun"
        ))
    })?;
    Ok((path, mapping))
}

/// `ID.rerun-N`, N one more than the highest of any `ID.rerun-N` waiting in `requests/` (at the tip
/// or in the working tree) or with an outcome at the tip (a duplicate's key `ID.rerun-N~M` counts).
fn next_id(checkout: &Checkout, tip: &Tip, id: &str) -> Result<String, CommandError> {
    let git = |e: git2::Error| CommandError::config(anyhow::anyhow!(e));
    let tree = checkout
        .repo
        .find_commit(tip.oid)
        .and_then(|c| c.tree())
        .map_err(git)?;
    let mut names: Vec<String> = layout::statuses(&checkout.repo, &tree)
        .map_err(git)?
        .into_iter()
        .map(|(key, _, _)| key)
        .collect();
    let history = History::new(&checkout.repo, tip.oid);
    for waiting in history.queue().map_err(CommandError::config)? {
        names.extend(request_stem(&waiting.entry.name).map(str::to_owned));
        names.push(waiting.id);
    }
    if let Ok(dir) = std::fs::read_dir(checkout.root.join(INBOX)) {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            names.extend(request_stem(&name).map(str::to_owned));
        }
    }
    let highest = names
        .iter()
        .filter_map(|name| rerun_number(name.split('~').next().unwrap_or(name)))
        .filter(|(base, _)| *base == id)
        .map(|(_, n)| n)
        .max()
        .unwrap_or(0);
    let next = format!("{id}{RERUN_SUFFIX}{}", highest.saturating_add(1));
    if next.len() > ID_LIMIT || !is_valid_name(&next) {
        return Err(CommandError::subject(anyhow::anyhow!(
            "the rerun's id `{next}` would be {} characters, more than the {ID_LIMIT} an id may \
             have; nothing was written. Submit it with an id of your own: `git-dispatch submit KIND \
             --file FILE --id NEW-ID`",
            next.len()
        )));
    }
    Ok(next)
}

fn tree_view(checkout: &Checkout, at: Oid) -> Result<TreeView<'_>, CommandError> {
    let tree = checkout
        .repo
        .find_commit(at)
        .and_then(|c| c.tree())
        .map_err(|e| CommandError::config(anyhow::anyhow!(e)))?;
    Ok(TreeView {
        repo: &checkout.repo,
        tree,
        commit: at,
    })
}
