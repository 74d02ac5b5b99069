//! `git-dispatch submit KIND [--param k=v]... [--file F] [--id ID] [--no-push]`: in a clone of an
//! inbox, write `requests/ID.yml`, check it with the dispatcher's own checks against the clone's index
//! and schemas, commit that file alone and push it, rebasing when the remote moved. Prints the id.
//!
//! An invalid request is never committed: the file is removed again and the clone is as it was. A
//! submit that pushes refuses while the branch holds unpushed commits: it never sends one the user
//! staged with `--no-push`.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::Path;
use std::thread;

use git2::Oid;

use crate::cli::SubmitArgs;
use crate::commands::validate;
use crate::error::CommandError;
use crate::git::view::{DirView, RepoView, TreeView, short};
use crate::inbox::request::INBOX;
use crate::inbox::router::Catalog;
use crate::layout::Place;
use crate::layout::is_valid_name;
use crate::submitter::checkout::{Checkout, CheckoutError, Upstream};
use crate::submitter::draft::Draft;

/// Pushes tried before giving up (exit 3), each after a `git pull --rebase` when the remote moved.
const PUSH_ATTEMPTS: u32 = 5;

pub(crate) fn run(args: &SubmitArgs) -> Result<(), CommandError> {
    let checkout = Checkout::open(args.repo.path.as_deref()).map_err(CommandError::config)?;
    // Known before anything is written: a request that cannot be pushed is not committed either.
    let upstream = if args.no_push {
        None
    } else {
        Some(checkout.upstream().map_err(CommandError::config)?)
    };
    if let Some(upstream) = &upstream {
        ensure_nothing_unpushed(&checkout, upstream)?;
    }
    let draft = draft(args)?;
    send(&checkout, upstream, &draft)
}

/// Writes `draft` to `requests/ID.yml`, checks it, commits it alone and, with an `upstream`, pushes
/// it; prints its id. An id already used or an invalid request leaves the clone as it was.
pub(crate) fn send(
    checkout: &Checkout,
    upstream: Option<Upstream>,
    draft: &Draft,
) -> Result<(), CommandError> {
    let rel = format!("{INBOX}/{}.yml", draft.id);
    ensure_unused(checkout, &draft.id)?;
    write(&checkout.root, &rel, &draft.to_yaml())?;
    check(&checkout.root, &rel)?;
    let message = format!("request: {} {}", draft.id, draft.kind);
    let commit = checkout.commit_file(&rel, &message).map_err(|e| {
        let _ = fs::remove_file(checkout.root.join(&rel));
        CommandError::config(anyhow::anyhow!(e).context(format!(
            "`{rel}` could not be committed (nothing was committed)"
        )))
    })?;
    eprintln!("committed `{rel}` as {} ({message})", short(commit));
    match upstream {
        None => eprintln!("not pushed (--no-push); push it with `git push`"),
        Some(upstream) => {
            let pushed = push(checkout, &upstream, &draft.id, commit)?;
            eprintln!("pushed to `{}` ({})", upstream.short(), short(pushed));
        }
    }
    println!("{}", draft.id);
    Ok(())
}

/// A push sends the branch, so a submit that pushes refuses while the branch holds commits the
/// upstream lacks (a request staged with `--no-push`, a submit whose push failed, other work): it
/// pushes its own request only, never one the user chose not to send. Checked before anything is
/// written.
pub(crate) fn ensure_nothing_unpushed(
    checkout: &Checkout,
    upstream: &Upstream,
) -> Result<(), CommandError> {
    let earlier = checkout.unpushed(upstream).map_err(CommandError::config)?;
    if earlier == 0 {
        return Ok(());
    }
    Err(CommandError::config(anyhow::anyhow!(
        "the branch has {earlier} local commit(s) not on `{up}` (a request staged with --no-push?), \
         and a push would send them with this request; nothing was written. Send them first with \
         `git push` (`git log {up}..` lists them), or stage this one too with --no-push",
        up = upstream.short()
    )))
}

/// KIND, `--file`, `--param`s and the id -> the request to write.
fn draft(args: &SubmitArgs) -> Result<Draft, CommandError> {
    let classify = |e: crate::submitter::draft::DraftError| {
        if e.is_invalid_request() {
            CommandError::subject(e)
        } else {
            CommandError::config(e)
        }
    };
    let mut draft = Draft::new(&args.kind, args.file.as_deref()).map_err(classify)?;
    draft.identify(args.id.as_deref());
    for param in &args.params {
        draft.set_param(param).map_err(classify)?;
    }
    if !is_valid_name(&draft.id) {
        return Err(CommandError::subject(anyhow::anyhow!(
            "`id`: `{}` is not a valid id (expected [A-Za-z0-9][A-Za-z0-9._-]{{0,127}}); pass another with --id",
            draft.id
        )));
    }
    Ok(draft)
}

/// An id is used once: not while a request with it waits in the inbox, not once it has an outcome,
/// in the working tree or at the upstream as last fetched.
fn ensure_unused(checkout: &Checkout, id: &str) -> Result<(), CommandError> {
    let mut paths: Vec<String> = Place::ALL.iter().map(|place| place.status(id)).collect();
    paths.extend([format!("{INBOX}/{id}.yml"), format!("{INBOX}/{id}.yaml")]);
    let tree = DirView {
        root: checkout.root.clone(),
    };
    let tip = checkout
        .tip()
        .ok()
        .and_then(|tip| Some((tip.name, checkout.repo.find_commit(tip.oid).ok()?)));
    let tip_view = tip.as_ref().and_then(|(_, commit)| {
        Some(TreeView {
            repo: &checkout.repo,
            tree: commit.tree().ok()?,
            commit: commit.id(),
        })
    });
    for path in &paths {
        // The upstream first: it is the newer truth where the working tree is behind.
        let mut at = None;
        if let (Some(view), Some((name, _))) = (&tip_view, &tip)
            && view.exists(path).unwrap_or(false)
        {
            at = Some(format!("`{name}`"));
        } else if tree.exists(path).unwrap_or(false) {
            at = Some("the working tree".to_owned());
        }
        if let Some(at) = at {
            let what = if path.starts_with(INBOX) {
                "is waiting in the inbox"
            } else {
                "already has an outcome"
            };
            return Err(CommandError::subject(anyhow::anyhow!(
                "`id`: `{id}` is already used: a request with it {what} (`{path}` in {at}); ids can be used once: submit with a new id"
            )));
        }
    }
    Ok(())
}

/// Writes the request, refusing to replace a file that appeared meanwhile.
fn write(root: &Path, rel: &str, yaml: &str) -> Result<(), CommandError> {
    let path = root.join(rel);
    if !root.join(INBOX).is_dir() {
        return Err(CommandError::config(anyhow::anyhow!(
            "`{}` has no `{INBOX}/` folder; is it a clone of an inbox repository? (`git-dispatch init DIR` makes one)",
            root.display()
        )));
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| {
            if e.kind() == ErrorKind::AlreadyExists {
                CommandError::subject(anyhow::anyhow!(
                    "`{rel}` already exists; ids can be used once: submit with a new id"
                ))
            } else {
                CommandError::config(anyhow::anyhow!("`{}`: {e}", path.display()))
            }
        })?;
    file.write_all(yaml.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| {
            let _ = fs::remove_file(&path);
            CommandError::config(anyhow::anyhow!("`{}`: {e}", path.display()))
        })
}

/// The dispatcher's checks on the written file; an invalid request is removed again.
fn check(root: &Path, rel: &str) -> Result<(), CommandError> {
    let view = DirView {
        root: root.to_owned(),
    };
    let catalog = Catalog::load(&view);
    let path = root.join(rel);
    validate::check_file(root, &view, &catalog, &path).map_err(|error| {
        let _ = fs::remove_file(&path);
        CommandError::subject(anyhow::anyhow!("{error} (nothing was committed)"))
    })
}

/// Pushes HEAD; when the remote moved, `git pull --rebase` and again, up to [`PUSH_ATTEMPTS`].
/// Returns the commit that went out (a rebase re-creates the request's commit).
fn push(
    checkout: &Checkout,
    upstream: &Upstream,
    id: &str,
    commit: Oid,
) -> Result<Oid, CommandError> {
    let mut last_error = None;
    for attempt in 1..=PUSH_ATTEMPTS {
        let error = match checkout.push(upstream) {
            Ok(()) => {
                return Ok(checkout.repo.refname_to_id("HEAD").unwrap_or(commit));
            }
            Err(e @ CheckoutError::PushRejected { .. }) if attempt < PUSH_ATTEMPTS => {
                eprintln!(
                    "the push was refused (the remote moved?); rebasing on `{}` and trying again",
                    upstream.short()
                );
                match checkout.pull_rebase() {
                    Ok(()) => {
                        last_error = Some(e);
                        continue;
                    }
                    Err(conflict @ CheckoutError::RebaseConflict { .. }) => {
                        return Err(CommandError::subject(anyhow::anyhow!(conflict).context(
                            format!(
                                "request `{id}` is committed locally ({}) but conflicts with the remote \
                                 (someone else used the id?); undo it with `git reset HEAD~1` and submit \
                                 with a new id",
                                short(commit)
                            ),
                        )));
                    }
                    Err(e) => e,
                }
            }
            Err(e) => e,
        };
        last_error = Some(error);
        if attempt < PUSH_ATTEMPTS {
            // The same backoff as the dispatcher's pushes: doubling, with jitter.
            thread::sleep(crate::daemon::backoff(attempt));
        }
    }
    let last = last_error.map_or_else(String::new, |e| format!(": {e}"));
    Err(CommandError::remote(anyhow::anyhow!(
        "request `{id}` is committed locally ({}) but could not be pushed after {PUSH_ATTEMPTS} attempts{last}; \
         push it later with `git push`",
        short(checkout.repo.refname_to_id("HEAD").unwrap_or(commit))
    )))
}
