//! The `git` command line transport: the system `git` run on the workdir's bare clone, so the
//! user's SSH config, known hosts and credential helpers apply, and a remote's hooks run as they
//! would for any push.
//!
//! In: a [`Remote`]. Out: the remote-tracking branch moved, or a [`SyncError`]: a ref the server
//! refused (`push --porcelain` marks it with `!`) is [`SyncError::Rejected`], any other failure
//! [`SyncError::Unreachable`] with `git`'s stderr. The invariant: `git` never prompts (see
//! [`command`]), and the password of the URL reaches it only through the environment.
//!
//! The refs under `refs/dispatch/` are looked at with one `git ls-remote` and written with one
//! `git push --porcelain --force-with-lease=<ref>:<expect>` (empty: the ref must not exist), whose
//! output says each ref's fate.

use std::collections::HashMap;
use std::process::Command;

use git2::Oid;

use super::{REMOTE, Remote};
use crate::git::error::SyncError;
use crate::git::refs::{Look, RefOutcome, RefUpdate};

/// The environment variable that hands the password to the `git` transport's credential helper.
const PASSWORD_VAR: &str = "GIT_DISPATCH_REMOTE_PASSWORD";

/// `git fetch` of the branch into the remote-tracking branch.
pub(super) fn fetch(remote: &Remote<'_>) -> Result<(), SyncError> {
    let refspec = remote.fetch_refspec();
    git(remote, &["fetch", "--quiet", "--no-tags", REMOTE, &refspec])?;
    crate::failpoint::hit("fetch");
    Ok(())
}

/// A push of the local ref `source` (at `local`) to the branch, with the system `git`; `--porcelain` says for each ref whether the server took it.
pub(super) fn push(remote: &Remote<'_>, source: &str, local: Oid) -> Result<(), SyncError> {
    let refspec = format!("{source}:{}", remote.local_ref());
    let output = command(remote, &["push", "--porcelain", REMOTE, &refspec])
        .output()
        .map_err(|e| remote.unreachable(format!("could not run `git`: {e}")))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // `!<tab>from:to<tab>[rejected] (fetch first)` for a ref the server refused.
    if let Some(line) = stdout.lines().find(|l| l.starts_with('!')) {
        let mut fields = line.split('\t').skip(1);
        let refname = fields.next().unwrap_or_default().to_owned();
        let reason = fields.next().unwrap_or_default();
        let reason = format!("{reason} {}", stderr.trim()).trim().to_owned();
        return Err(remote.rejected(refname, reason));
    }
    if !output.status.success() {
        return Err(remote.unreachable(stderr.trim().to_owned()));
    }
    crate::failpoint::hit("push");
    remote.pushed(local)
}

/// The branch's head and every ref under `refs/dispatch/`, from one `git ls-remote`.
pub(super) fn look(remote: &Remote<'_>) -> Result<Look, SyncError> {
    let branch = remote.local_ref();
    let out = git(remote, &["ls-remote", REMOTE, &branch, "refs/dispatch/*"])?;
    let refs = out.lines().filter_map(|line| {
        let (oid, name) = line.split_once('\t')?;
        Some((name, Oid::from_str(oid).ok()?))
    });
    Ok(Look::from_refs(&branch, refs))
}

/// One `git push --porcelain` of `updates`, each with `--force-with-lease=<ref>:<expect>`: `git`
/// sends only those whose advertised value is their `expect`, with that value as the old one,
/// which the server checks under its ref lock. A ref marked `!` (a stale lease, or the server's
/// refusal) is [`RefOutcome::Refused`] with `git`'s reason; the caller looks again.
pub(super) fn update_dispatch_refs(
    remote: &Remote<'_>,
    updates: &[RefUpdate],
) -> Result<Vec<RefOutcome>, SyncError> {
    let mut args = vec!["push".to_owned(), "--porcelain".to_owned()];
    for update in updates {
        let expect = update.expect.map(|o| o.to_string()).unwrap_or_default();
        args.push(format!("--force-with-lease={}:{expect}", update.name));
    }
    args.push(REMOTE.to_owned());
    for update in updates {
        let src = update.new.map(|o| o.to_string()).unwrap_or_default();
        args.push(format!("{src}:{}", update.name));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = command(remote, &args)
        .output()
        .map_err(|e| remote.unreachable(format!("could not run `git`: {e}")))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    // `<flag>\t<from>:<to>\t<summary>`, flag `!` for a ref not updated.
    let fates: HashMap<&str, (char, &str)> = stdout
        .lines()
        .filter_map(|line| {
            let mut fields = line.split('\t');
            let flag = fields.next()?.chars().next()?;
            let (_, to) = fields.next()?.rsplit_once(':')?;
            Some((to, (flag, fields.next().unwrap_or_default())))
        })
        .collect();
    if fates.is_empty() && !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(remote.unreachable(stderr.trim().to_owned()));
    }
    Ok(updates
        .iter()
        .map(|update| match fates.get(update.name.as_str()) {
            Some(('!', reason)) => RefOutcome::Refused(format!("`git push`: {reason}")),
            Some(_) => RefOutcome::Updated,
            None => RefOutcome::Refused("`git push` did not report it".to_owned()),
        })
        .collect())
}

/// `git fetch` of the remote's refs `names`, for their objects only (no ref is written). `git`
/// fetches nothing when one of them is gone, so then each is fetched on its own.
pub(super) fn fetch_refs(remote: &Remote<'_>, names: &[&str]) -> Result<(), SyncError> {
    let mut args = vec![
        "fetch",
        "--quiet",
        "--no-tags",
        "--no-write-fetch-head",
        REMOTE,
    ];
    args.extend_from_slice(names);
    match git(remote, &args) {
        // Deleted meanwhile: the caller finds the commit missing.
        Err(SyncError::Unreachable { message, .. })
            if message.contains("couldn't find remote ref") =>
        {
            if names.len() > 1 {
                for name in names {
                    fetch_refs(remote, &[name])?;
                }
            }
            Ok(())
        }
        other => other.map(drop),
    }
}

/// Runs the system `git` on the bare clone; never prompts.
fn git(remote: &Remote<'_>, args: &[&str]) -> Result<String, SyncError> {
    let output = command(remote, args)
        .output()
        .map_err(|e| remote.unreachable(format!("could not run `git`: {e}")))?;
    if !output.status.success() {
        return Err(remote.unreachable(format!(
            "`git {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The system `git` on the bare clone. It never prompts: not for credentials, and ssh runs in
/// batch mode (its host key and passphrase prompts go to the terminal, which
/// `GIT_TERMINAL_PROMPT` does not cover) unless `GIT_SSH_COMMAND`, `GIT_SSH` or
/// `core.sshCommand` say how to run it. A password from the URL is handed to `git` by a
/// credential helper of its own that reads it from the environment.
fn command(remote: &Remote<'_>, args: &[&str]) -> Command {
    let mut command = Command::new("git");
    command.env("GIT_TERMINAL_PROMPT", "0");
    let own_ssh = ["GIT_SSH_COMMAND", "GIT_SSH"]
        .iter()
        .any(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty()))
        || remote
            .repo
            .config()
            .and_then(|c| c.get_string("core.sshCommand"))
            .is_ok_and(|c| !c.is_empty());
    if !own_ssh {
        command.env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes");
    }
    if let Some(password) = &remote.access.password {
        command
            .args(["-c", "credential.helper="])
            .arg("-c")
            .arg(format!(
                "credential.helper=!f() {{ test \"$1\" = get && printf 'password=%s\\n' \"${PASSWORD_VAR}\"; }}; f"
            ))
            .env(PASSWORD_VAR, &password.0);
    }
    command.arg("--git-dir").arg(remote.git_dir).args(args);
    command
}
