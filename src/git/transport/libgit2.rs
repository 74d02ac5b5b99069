//! The libgit2 transport: fetches and pushes in process, over SSH (the agent or `--ssh-key`),
//! HTTPS (the password of the URL, or the credential helper) or a path.
//!
//! In: a [`Remote`]. Out: the remote-tracking branch moved, or a [`SyncError`] that says what
//! libgit2 leaves unsaid: which credentials were offered, where an unknown host key was looked for,
//! and what it does not support. The invariant: the credentials callback gives up after
//! [`MAX_CREDENTIAL_ATTEMPTS`] (libgit2 asks again after every failure, forever otherwise), and a
//! ref the server refuses is an error even though libgit2 reports success for it.
//!
//! The refs under `refs/dispatch/` are looked at by listing what the server advertises, and
//! written over the connection that advertised them: only the updates whose advertised value is
//! their `expect` are pushed, with that value as the old one (which `git receive-pack` checks
//! under its ref lock), and the push negotiation checks it once more before anything is sent.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::PathBuf;

use git2::{
    Cred, CredentialType, Direction, ErrorCode, FetchOptions, Oid, PushOptions, RemoteCallbacks,
};

use super::{REMOTE, Remote};
use crate::git::error::SyncError;
use crate::git::refs::{Look, RefOutcome, RefUpdate};

/// Credential callbacks are asked again after every failure; past this many, give up.
const MAX_CREDENTIAL_ATTEMPTS: u32 = 3;

/// The methods offered so far, each named once (libgit2 asks again after each failure).
struct Methods<'a>(std::cell::RefMut<'a, Vec<String>>);

impl Methods<'_> {
    fn push(&mut self, method: String) {
        if !self.0.contains(&method) {
            self.0.push(method);
        }
    }
}

/// What the credentials callback offered during one connection, for the error when it fails.
#[derive(Default)]
struct Tried {
    count: Cell<u32>,
    methods: RefCell<Vec<String>>,
}

/// Downloads the branch and moves the remote-tracking branch.
pub(super) fn fetch(remote: &Remote<'_>) -> Result<(), SyncError> {
    let refspec = remote.fetch_refspec();
    let mut origin = remote.repo.find_remote(REMOTE)?;
    let tried = Tried::default();
    let mut options = FetchOptions::new();
    options.remote_callbacks(callbacks(remote, &tried));
    origin
        .download(&[&refspec], Some(&mut options))
        .map_err(|e| unreachable(remote, &e, &tried))?;
    crate::failpoint::hit("fetch");
    origin
        .update_tips(
            None,
            git2::RemoteUpdateFlags::UPDATE_FETCHHEAD,
            git2::AutotagOption::None,
            None,
        )
        .map_err(|e| unreachable(remote, &e, &tried))?;
    origin.disconnect()?;
    Ok(())
}

/// A push of the local ref `source` (at `local`) to the branch, through libgit2's transports. A
/// ref the server refuses is an error even though libgit2 reports success for it.
pub(super) fn push(remote: &Remote<'_>, source: &str, local: git2::Oid) -> Result<(), SyncError> {
    let mut origin = remote.repo.find_remote(REMOTE)?;
    let tried = Tried::default();
    let refused: RefCell<Option<(String, String)>> = RefCell::new(None);
    let mut cbs = callbacks(remote, &tried);
    cbs.push_update_reference(|refname, status| {
        match status {
            Some(status) => *refused.borrow_mut() = Some((refname.to_owned(), status.to_owned())),
            None => crate::failpoint::hit("push"),
        }
        Ok(())
    });
    let mut options = PushOptions::new();
    options.remote_callbacks(cbs);
    let refspec = format!("{source}:{}", remote.local_ref());
    let result = origin.push(&[&refspec], Some(&mut options));
    drop(options);
    if let Some((refname, reason)) = refused.into_inner() {
        return Err(remote.rejected(refname, reason));
    }
    if let Err(e) = result {
        return Err(if e.code() == ErrorCode::NotFastForward {
            remote.rejected(remote.local_ref(), e.message().to_owned())
        } else {
            unreachable(remote, &e, &tried)
        });
    }
    remote.pushed(local)
}

/// The branch's head and every ref under `refs/dispatch/`, from the list the server advertises.
pub(super) fn look(remote: &Remote<'_>) -> Result<Look, SyncError> {
    let mut origin = remote.repo.find_remote(REMOTE)?;
    let tried = Tried::default();
    let connection = origin
        .connect_auth(Direction::Fetch, Some(callbacks(remote, &tried)), None)
        .map_err(|e| unreachable(remote, &e, &tried))?;
    let heads = connection
        .list()
        .map_err(|e| unreachable(remote, &e, &tried))?;
    let refs = heads.iter().map(|h| (h.name(), h.oid()));
    Ok(Look::from_refs(&remote.local_ref(), refs))
}

/// One push of the `updates` whose ref the server advertises at their `expect`, over the
/// connection that advertised it: a `+new:ref` (or `:ref`) refspec sends the advertised value as
/// the old one, which the server checks under its ref lock. An update whose ref was advertised at
/// another value is [`RefOutcome::Lost`] without being sent; one the server refuses is
/// [`RefOutcome::Refused`] (libgit2's push succeeds even then; `push_update_reference` tells).
pub(super) fn update_dispatch_refs(
    remote: &Remote<'_>,
    updates: &[RefUpdate],
) -> Result<Vec<RefOutcome>, SyncError> {
    let mut origin = remote.repo.find_remote(REMOTE)?;
    let tried = Tried::default();
    let mut connection = origin
        .connect_auth(Direction::Push, Some(callbacks(remote, &tried)), None)
        .map_err(|e| unreachable(remote, &e, &tried))?;
    let advertised: HashMap<String, Oid> = connection
        .list()
        .map_err(|e| unreachable(remote, &e, &tried))?
        .iter()
        .map(|h| (h.name().to_owned(), h.oid()))
        .collect();
    let mut outcomes: Vec<Option<RefOutcome>> = Vec::with_capacity(updates.len());
    let mut expected: HashMap<&str, Option<Oid>> = HashMap::new();
    let mut refspecs = Vec::new();
    for update in updates {
        let current = advertised.get(&update.name).copied();
        if current != update.expect {
            outcomes.push(Some(RefOutcome::Lost { current }));
        } else if update.new == current {
            outcomes.push(Some(RefOutcome::Updated));
        } else {
            outcomes.push(None);
            expected.insert(&update.name, update.expect);
            let src = update.new.map(|o| o.to_string()).unwrap_or_default();
            refspecs.push(format!("+{src}:{}", update.name));
        }
    }
    if refspecs.is_empty() {
        return Ok(outcomes.into_iter().flatten().collect());
    }
    let reports: RefCell<HashMap<String, Option<String>>> = RefCell::new(HashMap::new());
    let moved = Cell::new(false);
    let mut cbs = callbacks(remote, &tried);
    cbs.push_negotiation(|sent| {
        // What the push sends as each ref's old value must be its `expect`; it is the value
        // listed above, from the same connection, so this never fails unless libgit2 changes.
        let zero_is_none = |oid: Oid| (!oid.is_zero()).then_some(oid);
        let stale = sent.iter().any(|u| {
            let name = u.dst_refname().unwrap_or_default();
            expected.get(name) != Some(&zero_is_none(u.src()))
        });
        moved.set(stale);
        match stale {
            true => Err(git2::Error::from_str(
                "a ref's old value is not its `expect`",
            )),
            false => Ok(()),
        }
    });
    cbs.push_update_reference(|name, status| {
        let status = status.map(str::to_owned);
        reports.borrow_mut().insert(name.to_owned(), status);
        Ok(())
    });
    let mut options = PushOptions::new();
    options.remote_callbacks(cbs);
    let pushed = connection.remote().push(&refspecs, Some(&mut options));
    drop(options);
    if let Err(e) = pushed
        && !moved.get()
    {
        return Err(unreachable(remote, &e, &tried));
    }
    let reports = reports.into_inner();
    let fate = |name: &str| match reports.get(name) {
        _ if moved.get() => RefOutcome::Refused("not sent: the remote's refs moved".to_owned()),
        Some(None) => RefOutcome::Updated,
        Some(Some(reason)) => RefOutcome::Refused(format!("the remote refused it: {reason}")),
        None => RefOutcome::Refused("the remote did not report it".to_owned()),
    };
    Ok(outcomes
        .into_iter()
        .zip(updates)
        .map(|(outcome, update)| outcome.unwrap_or_else(|| fate(&update.name)))
        .collect())
}

/// Downloads the objects of the remote's ref `name` (no ref is written).
pub(super) fn fetch_refs(remote: &Remote<'_>, names: &[&str]) -> Result<(), SyncError> {
    let mut origin = remote.repo.find_remote(REMOTE)?;
    let tried = Tried::default();
    let mut options = FetchOptions::new();
    options.remote_callbacks(callbacks(remote, &tried));
    options.download_tags(git2::AutotagOption::None);
    origin
        .download(names, Some(&mut options))
        .map_err(|e| unreachable(remote, &e, &tried))?;
    origin.disconnect()?;
    Ok(())
}

/// A libgit2 failure to reach the remote, with what libgit2's SSH leaves unsaid: the methods
/// offered when authentication failed, where an unknown host key was looked for, and what it
/// does not support.
fn unreachable(remote: &Remote<'_>, e: &git2::Error, tried: &Tried) -> SyncError {
    let mut message = e.message().to_owned();
    if let Some(path) = crate::git::url::local_path(remote.url).filter(|p| !p.exists()) {
        message = format!("the path `{}` does not exist", path.display());
    }
    if e.class() == git2::ErrorClass::Ssh {
        let lower = message.to_lowercase();
        if lower.contains("hostkey") || lower.contains("host key") {
            message.push_str(&format!(
                "; libgit2 looks for the host key in `{}` only (add it there, e.g. with \
                 `ssh-keyscan`), or use --git-transport cli, where OpenSSH reads the known \
                 hosts and ~/.ssh/config of the account's home",
                known_hosts().display()
            ));
        } else if lower.contains("authentication") || !tried.methods.borrow().is_empty() {
            let methods = tried.methods.borrow();
            message.push_str(&format!(
                "; tried: {}; libgit2 uses only --ssh-key or the ssh agent, without \
                 ~/.ssh/config host aliases or key passphrases: use --git-transport cli for \
                 those",
                if methods.is_empty() {
                    "nothing".to_owned()
                } else {
                    methods.join(", ")
                }
            ));
        }
    }
    remote.unreachable(message)
}

/// Where libgit2 looks for SSH host keys: `.ssh/known_hosts` in `$HOME` (OpenSSH reads the home of
/// the account instead).
fn known_hosts() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.dir)
        })
        .unwrap_or_default();
    home.join(".ssh").join("known_hosts")
}

/// Callbacks with a bounded credentials callback (libgit2 calls it again after every failure,
/// forever otherwise); `tried` keeps which methods were offered, for the error.
fn callbacks<'a>(remote: &'a Remote<'_>, tried: &'a Tried) -> RemoteCallbacks<'a> {
    let access = remote.access;
    let mut callbacks = RemoteCallbacks::new();
    callbacks.credentials(move |url, username, allowed| {
        let n = tried.count.get() + 1;
        tried.count.set(n);
        let url = crate::git::url::without_password(url).0;
        if n > MAX_CREDENTIAL_ATTEMPTS {
            return Err(git2::Error::from_str(&format!(
                "authentication to `{url}` failed after {MAX_CREDENTIAL_ATTEMPTS} attempts (tried: {}); \
                 check the key, the agent or the credential helper, or use --git-transport cli",
                tried.methods.borrow().join(", ")
            )));
        }
        let user = username.unwrap_or("git");
        let mut methods = Methods(tried.methods.borrow_mut());
        if let Some(password) = access
            .password
            .as_ref()
            .filter(|_| allowed.contains(CredentialType::USER_PASS_PLAINTEXT))
        {
            methods.push(format!("the password in the URL for `{user}`"));
            Cred::userpass_plaintext(user, &password.0)
        } else if allowed.contains(CredentialType::SSH_KEY) {
            if let Some(key) = &access.ssh_key {
                methods.push(format!("key `{}` (--ssh-key) for `{user}`", key.display()));
                return Cred::ssh_key(user, None, key, None);
            }
            methods.push(format!("the ssh agent for `{user}`"));
            Cred::ssh_key_from_agent(user)
        } else if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
            methods.push("the git credential helper".to_owned());
            let config = git2::Config::open_default()?;
            Cred::credential_helper(&config, &url, username)
        } else if allowed.contains(CredentialType::USERNAME) {
            methods.push("a user name".to_owned());
            Cred::username(user)
        } else {
            methods.push("default credentials".to_owned());
            Cred::default()
        }
    });
    callbacks
}
