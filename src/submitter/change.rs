//! One change to an inbox made on the upstream's newest tip and pushed, for the commands that
//! operate it (`pause`, `resume`, `drain`, `undrain`, `cancel`): pull, decide on what the working
//! tree then holds, commit the one file, push. When the remote moved meanwhile, the commit is taken
//! back (`git reset --keep HEAD~1`) and the decision made again on the new tip, so it is never made
//! on a state that is no longer true (a request recorded meanwhile is not removed, a `control.yml`
//! another operator changed is not overwritten with an older view).
//!
//! Like `submit`, it commits with the user's own `git` (identity, signing, hooks) and refuses to
//! push while the branch holds commits the upstream lacks.

use std::fs;
use std::thread;

use crate::error::CommandError;
use crate::git::view::short;
use crate::submitter::checkout::{Checkout, CheckoutError, Upstream};

/// Pushes tried before giving up (exit 3), each on the remote's new tip.
const ATTEMPTS: u32 = 5;

/// What a command asks for, decided on the working tree of the newest tip.
pub(crate) enum Plan {
    /// Nothing to commit: the message says why (already paused, already cancelled, ...).
    Nothing(String),
    /// Write `path` (relative to the clone's root) with `contents`, or remove it (`None`), and
    /// commit that with `message`.
    Commit {
        path: String,
        contents: Option<String>,
        message: String,
        /// Signed (`git commit -S`, with the user's signing setup): an approval's signer is the
        /// approver.
        signed: bool,
    },
}

/// Pulls (unless `no_push`), asks `decide` what to do, commits and pushes it. Returns what was
/// said or done, for the command to print.
pub(crate) fn change(
    checkout: &Checkout,
    no_push: bool,
    mut decide: impl FnMut(&Checkout) -> Result<Plan, CommandError>,
) -> Result<String, CommandError> {
    let upstream = if no_push {
        None
    } else {
        Some(checkout.upstream().map_err(CommandError::config)?)
    };
    if let Some(upstream) = &upstream {
        checkout.fetch(upstream).map_err(remote_error(upstream))?;
        let earlier = checkout.unpushed(upstream).map_err(CommandError::config)?;
        if earlier > 0 {
            return Err(CommandError::config(anyhow::anyhow!(
                "the branch has {earlier} local commit(s) not on `{up}`, and a push would send \
                 them too; nothing was changed. Send them first with `git push` (`git log {up}..` \
                 lists them), or pass --no-push",
                up = upstream.short()
            )));
        }
    }
    let mut last_error = None;
    for attempt in 1..=ATTEMPTS {
        if upstream.is_some() {
            checkout.pull_rebase().map_err(CommandError::config)?;
        }
        let (path, contents, message, signed) = match decide(checkout)? {
            Plan::Nothing(said) => return Ok(said),
            Plan::Commit {
                path,
                contents,
                message,
                signed,
            } => (path, contents, message, signed),
        };
        let commit = commit(checkout, &path, contents.as_deref(), &message, signed)?;
        let Some(upstream) = &upstream else {
            return Ok(format!(
                "committed {} ({}); not pushed (--no-push): push it with `git push`",
                short(commit),
                first_line(&message)
            ));
        };
        match checkout.push(upstream) {
            Ok(()) => {
                return Ok(format!(
                    "pushed {} to `{}` ({})",
                    short(commit),
                    upstream.short(),
                    first_line(&message)
                ));
            }
            Err(e @ CheckoutError::PushRejected { .. }) if attempt < ATTEMPTS => {
                eprintln!(
                    "the push was refused (the remote moved?); looking again on `{}`'s new tip",
                    upstream.short()
                );
                checkout
                    .git(&["reset", "--quiet", "--keep", "HEAD~1"])
                    .map_err(CommandError::config)?;
                last_error = Some(e);
            }
            Err(e) => {
                last_error = Some(e);
                break;
            }
        }
        thread::sleep(crate::daemon::backoff(attempt));
    }
    let last = last_error.map_or_else(String::new, |e| format!(": {e}"));
    Err(CommandError::remote(anyhow::anyhow!(
        "the change is committed locally but could not be pushed{last}; push it later with \
         `git push`, or undo it with `git reset --keep HEAD~1`"
    )))
}

/// Writes or removes `path` and commits it alone (with `-S` when `signed`; otherwise as the user's
/// configuration signs).
fn commit(
    checkout: &Checkout,
    path: &str,
    contents: Option<&str>,
    message: &str,
    signed: bool,
) -> Result<git2::Oid, CommandError> {
    let file = checkout.root.join(path);
    let staged = match contents {
        Some(text) => {
            if let Some(folder) = file.parent() {
                fs::create_dir_all(folder).map_err(|e| {
                    CommandError::config(anyhow::anyhow!("`{}`: {e}", folder.display()))
                })?;
            }
            fs::write(&file, text)
                .map_err(|e| CommandError::config(anyhow::anyhow!("`{}`: {e}", file.display())))?;
            checkout.git(&["add", "--", path])
        }
        None => checkout.git(&["rm", "--quiet", "--", path]),
    };
    let mut args = vec!["commit", "--quiet"];
    if signed {
        args.push("-S");
    }
    args.extend(["-m", message, "--", path]);
    staged
        .and_then(|_| {
            let committed = checkout.git(&args);
            if committed.is_err() {
                // The index and the tree as they were.
                let _ = checkout.git(&["reset", "--quiet", "--", path]);
                match contents {
                    Some(_) => {
                        let _ = fs::remove_file(&file);
                    }
                    None => {
                        let _ = checkout.git(&["checkout", "--quiet", "--", path]);
                    }
                }
            }
            committed
        })
        .and_then(|_| Ok(checkout.repo.refname_to_id("HEAD")?))
        .map_err(|e| {
            CommandError::config(anyhow::anyhow!(e).context(format!(
                "`{path}` could not be committed (nothing was pushed)"
            )))
        })
}

fn first_line(message: &str) -> &str {
    message.lines().next().unwrap_or_default()
}

fn remote_error(upstream: &Upstream) -> impl FnOnce(CheckoutError) -> CommandError + '_ {
    move |e| {
        CommandError::remote(
            anyhow::anyhow!(e).context(format!("could not fetch `{}`", upstream.short())),
        )
    }
}
