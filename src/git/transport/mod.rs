//! How the workdir reaches the remote: three transports behind one small interface, [`Remote`]'s
//! [`fetch`](Remote::fetch) and [`push`](Remote::push) of the branch, and
//! [`look`](Remote::look), [`update_dispatch_refs`](Remote::update_dispatch_refs) and
//! [`fetch_note`](Remote::fetch_note) for the refs under `refs/dispatch/` (see
//! [`crate::git::dispatch_refs`]).
//!
//! - [`libgit2`]: in process, over SSH (agent or `--ssh-key`), HTTPS (credential helper) or a path;
//!   `git://` goes through [`git_protocol`], a socket with Nagle's algorithm off, and a push there
//!   sends the pack the workdir wrote as it is ([`send_pack`]) when it holds what the push adds;
//! - [`cli`]: the system `git`, so the user's SSH config, known hosts and credential helpers apply;
//! - [`local`]: a bare repository on this host reached through libgit2, written directly (objects
//!   copied, the ref moved with a compare-and-swap) instead of through libgit2's local transport.
//!
//! In: the workdir's bare clone, the remote's URL and [`Access`]. Out: the remote-tracking branch
//! `refs/remotes/origin/<branch>` moved to what the remote holds (after a fetch) or to what it took
//! (after a push); a push the remote refuses is [`SyncError::Rejected`], never a silent success.
//! Never a force push.

mod cli;
pub(crate) mod git_protocol;
mod libgit2;
mod local;
mod send_pack;

use std::fs::File;
use std::path::{Path, PathBuf};

use git2::{Oid, Repository};

use crate::git::error::SyncError;
use crate::git::refs::{Look, RefOutcome, RefUpdate};
use crate::git::url::Password;
use crate::git::written::WrittenPacks;

/// The name of the remote in the workdir's configuration.
pub(crate) const REMOTE: &str = "origin";

/// How fetches and pushes reach the remote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Transport {
    /// libgit2, in process: SSH agent or `--ssh-key`, HTTPS through the credential helper.
    #[default]
    Libgit2,
    /// The system `git`, so the user's SSH config, known hosts and credential helpers apply.
    Cli,
}

/// What the dispatcher needs to reach the remote.
#[derive(Debug, Clone, Default)]
pub(crate) struct Access {
    pub transport: Transport,
    pub ssh_key: Option<PathBuf>,
    /// The password the remote URL held (see [`crate::git::url::without_password`]).
    pub password: Option<Password>,
}

/// The local branch `branch`.
pub(crate) fn local_ref(branch: &str) -> String {
    format!("refs/heads/{branch}")
}

/// The remote-tracking branch of `branch`.
pub(crate) fn remote_ref(branch: &str) -> String {
    format!("refs/remotes/{REMOTE}/{branch}")
}

/// The remote as seen from the workdir, for one exchange.
pub(crate) struct Remote<'a> {
    /// The workdir's bare clone.
    repo: &'a Repository,
    /// Its folder, for the `git` command line and the copy of packs.
    git_dir: &'a Path,
    url: &'a str,
    access: &'a Access,
    branch: &'a str,
}

impl<'a> Remote<'a> {
    pub(crate) fn new(
        repo: &'a Repository,
        git_dir: &'a Path,
        url: &'a str,
        access: &'a Access,
        branch: &'a str,
    ) -> Self {
        Self {
            repo,
            git_dir,
            url,
            access,
            branch,
        }
    }

    /// Fetches the branch into `refs/remotes/origin/<branch>`; returns the remote's tip.
    pub(crate) fn fetch(&self) -> Result<Oid, SyncError> {
        match self.access.transport {
            Transport::Cli => cli::fetch(self)?,
            Transport::Libgit2 => {
                if let Some(fetched) = local::fetch(self) {
                    return fetched;
                }
                libgit2::fetch(self)?;
            }
        }
        self.remote_tip().ok_or_else(|| self.no_branch())
    }

    /// Pushes the local branch, at `local`, to the remote's; `packs` are those written since the
    /// last push, which a push to a local path may copy. Returns the remote's folder when it is a
    /// bare repository on this host that was written directly (no receive-pack tends it).
    pub(crate) fn push(
        &self,
        local: Oid,
        packs: WrittenPacks,
    ) -> Result<Option<PathBuf>, SyncError> {
        if self.access.transport == Transport::Cli {
            cli::push(self, &self.local_ref(), local)?;
            return Ok(None);
        }
        if let Some(remote) = local::open(self) {
            local::push(self, &remote, local, &packs)?;
            return Ok(Some(remote.path().to_owned()));
        }
        if let Some((base, pack)) = self.chained_pack(&packs, local)
            && self.push_pack(base, local, pack)?
        {
            return Ok(None);
        }
        libgit2::push(self, &self.local_ref(), local)?;
        Ok(None)
    }

    /// The one pack of `packs`, opened, and the remote's tip it chains from to `local`, when a push
    /// over `git://` can send it as it is ([`Remote::push_pack`]).
    pub(crate) fn chained_pack(&self, packs: &WrittenPacks, local: Oid) -> Option<(Oid, File)> {
        let base = self.remote_tip()?;
        let only = packs.only()?;
        if !self.sends_packs() || !packs.chains(base, local) {
            return None;
        }
        let file = only
            .pack
            .open(&self.git_dir.join("objects").join("pack"))
            .ok()?;
        Some((base, file))
    }

    /// Whether pushes may send a written pack as it is: `git://` through libgit2's transport.
    fn sends_packs(&self) -> bool {
        self.access.transport == Transport::Libgit2 && git_protocol::is_git_url(self.url)
    }

    /// Pushes `pack`, which holds every object `local` adds to `base` (the remote's tip), moving
    /// the branch from `base` to `local` (see [`send_pack`]). `Ok(false)` when it does not apply
    /// (the server does not offer what it needs) or the server refused it: push another way.
    pub(crate) fn push_pack(&self, base: Oid, local: Oid, pack: File) -> Result<bool, SyncError> {
        let refname = self.local_ref();
        match send_pack::send_pack(self.url, &refname, base, local, pack) {
            Ok(send_pack::Sent::Pushed) => {
                crate::failpoint::hit("push");
                self.pushed(local)?;
                Ok(true)
            }
            Ok(send_pack::Sent::Moved(reason)) => Err(self.rejected(refname, reason)),
            // libgit2's push, which packs the objects itself, tells a pack the server could not
            // use from an update it refuses: a pack of ours never fails a push on its own.
            Ok(send_pack::Sent::Refused(_) | send_pack::Sent::Unsupported) => Ok(false),
            Err(e) => Err(self.unreachable(e.to_string())),
        }
    }

    /// Whether pushes go over a network (the `git` command line, or libgit2 to a URL), as opposed to
    /// a bare repository on this host written directly.
    pub(crate) fn is_network(&self) -> bool {
        self.access.transport == Transport::Cli || crate::git::url::local_path(self.url).is_none()
    }

    /// Pushes the local ref `source`, at `local`, to the branch over the network (see
    /// [`Remote::is_network`]): for a push on a thread of its own, while the local branch moves on.
    pub(crate) fn push_from(&self, source: &str, local: Oid) -> Result<(), SyncError> {
        if self.access.transport == Transport::Cli {
            cli::push(self, source, local)
        } else {
            libgit2::push(self, source, local)
        }
    }

    /// The branch's head and every ref under `refs/dispatch/`, in one round trip.
    pub(crate) fn look(&self) -> Result<Look, SyncError> {
        if self.access.transport == Transport::Cli {
            return cli::look(self);
        }
        if let Some(remote) = local::open(self) {
            return Ok(local::look(self, &remote));
        }
        libgit2::look(self)
    }

    /// One push of `updates` (valid names under `refs/dispatch/`, each once, whose `new` the
    /// workdir holds), each applied only if the remote's ref is its `expect`. A refusal by the
    /// server, or a lease the remote's ref no longer matched, is [`RefOutcome::Refused`] here; the
    /// caller looks again to tell a lost race from a refusal.
    pub(crate) fn update_dispatch_refs(
        &self,
        updates: &[RefUpdate],
    ) -> Result<Vec<RefOutcome>, SyncError> {
        if self.access.transport == Transport::Cli {
            return cli::update_dispatch_refs(self, updates);
        }
        if let Some(remote) = local::open(self) {
            return local::update_dispatch_refs(self, &remote, updates);
        }
        libgit2::update_dispatch_refs(self, updates)
    }

    /// Brings the commits `notes` name (each one the remote's ref held) into the workdir in one
    /// round trip: a fetch of their refs (which may name other commits by now), or a copy from a
    /// bare repository on this host.
    pub(crate) fn fetch_notes(&self, notes: &[(&str, Oid)]) -> Result<(), SyncError> {
        let names: Vec<&str> = notes.iter().map(|(name, _)| *name).collect();
        if notes.is_empty() {
            return Ok(());
        }
        if self.access.transport == Transport::Cli {
            return cli::fetch_refs(self, &names);
        }
        if let Some(remote) = local::open(self) {
            // A handle of its own on the workdir: the objects go to its object files.
            let disk = Repository::open_bare(self.git_dir)?;
            for (_, oid) in notes {
                local::copy_note(&remote, &disk, *oid)?;
            }
            return Ok(());
        }
        libgit2::fetch_refs(self, &names)
    }

    fn local_ref(&self) -> String {
        local_ref(self.branch)
    }

    fn remote_ref(&self) -> String {
        remote_ref(self.branch)
    }

    /// The refspec of a fetch of the branch.
    fn fetch_refspec(&self) -> String {
        format!("+{}:{}", self.local_ref(), self.remote_ref())
    }

    /// The remote's tip as last fetched or pushed.
    fn remote_tip(&self) -> Option<Oid> {
        self.repo.refname_to_id(&self.remote_ref()).ok()
    }

    /// Notes that the remote took `local`: the remote-tracking branch follows.
    fn pushed(&self, local: Oid) -> Result<(), SyncError> {
        self.repo
            .reference(&self.remote_ref(), local, true, "git-dispatch: pushed")?;
        Ok(())
    }

    fn no_branch(&self) -> SyncError {
        SyncError::NoBranch {
            url: self.url.to_owned(),
            branch: self.branch.to_owned(),
        }
    }

    fn rejected(&self, refname: String, reason: String) -> SyncError {
        SyncError::Rejected {
            url: self.url.to_owned(),
            refname,
            reason,
        }
    }

    fn unreachable(&self, message: String) -> SyncError {
        SyncError::Unreachable {
            url: self.url.to_owned(),
            message,
        }
    }
}
