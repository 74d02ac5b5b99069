//! The `git` command line transport: the system `git` run on the workdir's bare clone, so the
//! user's SSH config, known hosts and credential helpers apply, and a remote's hooks run as they
//! would for any push.
//!
//! In: a [`Remote`]. Out: the remote-tracking branch moved, or a [`SyncError`]: a ref the server
//! refused (`push --porcelain` marks it with `!`) is [`SyncError::Rejected`], any other failure
//! [`SyncError::Unreachable`] with `git`'s stderr. The invariant: `git` never prompts (see
//! [`command`]), and the password of the URL reaches it only through the environment.

use std::process::Command;

use git2::Oid;

use super::{REMOTE, Remote};
use crate::git::error::SyncError;

/// The environment variable that hands the password to the `git` transport's credential helper.
const PASSWORD_VAR: &str = "GIT_DISPATCH_REMOTE_PASSWORD";

/// The remote's head, from `git ls-remote`.
pub(super) fn probe(remote: &Remote<'_>) -> Result<Option<Oid>, SyncError> {
    let out = git(remote, &["ls-remote", REMOTE, &remote.local_ref()])?;
    Ok(out
        .split_whitespace()
        .next()
        .and_then(|oid| Oid::from_str(oid).ok()))
}

/// `git fetch` of the branch into the remote-tracking branch.
pub(super) fn fetch(remote: &Remote<'_>) -> Result<(), SyncError> {
    let refspec = remote.fetch_refspec();
    git(remote, &["fetch", "--quiet", "--no-tags", REMOTE, &refspec])?;
    crate::failpoint::hit("fetch");
    Ok(())
}

/// A push with the system `git`; `--porcelain` says for each ref whether the server took it.
pub(super) fn push(remote: &Remote<'_>, local: Oid) -> Result<(), SyncError> {
    let refspec = format!("{0}:{0}", remote.local_ref());
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
