//! The dispatcher's side of Git: a bare clone in the workdir, fetch, reconcile, commit, push.
//!
//! Nothing is ever checked out: requests are read from the fetched commit's tree and outcomes are
//! written as new trees built in memory, so there is no index, no working tree and no lock file to go
//! stale. The local branch is the remote's tip plus the dispatcher's own outcome commits that are not
//! pushed yet; [`Sync::reconcile`] re-creates those on whatever the remote holds now (never a force
//! push, never a rewrite of anyone else's commit).
//!
//! [`Sync`] orchestrates the parts beside it: [`crate::git::staging`] holds new commits in memory
//! until they are written out as a pack, [`crate::git::transport`] reaches the remote,
//! [`crate::git::written`] keeps the packs a local push copies, [`crate::git::housekeeping`] tends
//! the packs after a push. The invariant: a ref on disk never names an object that is only in
//! memory, and the local branch moves only onto the remote's tip or commits made on it.

use std::cell::RefCell;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use git2::{Commit, FileMode, ObjectType, Oid, Repository, Signature, Sort};

use crate::git::housekeeping::Housekeeping;
use crate::git::staging::Staging;
use crate::git::transport::{self, REMOTE, Remote};
use crate::git::tree_edit::{self, Edit};
use crate::git::written::WrittenPacks;

mod push;

pub(crate) use crate::git::error::SyncError;
#[allow(unused_imports)]
pub(crate) use crate::git::refs::{Look, RefOutcome, RefUpdate};
pub(crate) use crate::git::settings::{bound_silence, configure_libgit2};
pub(crate) use crate::git::transport::Access;
pub use crate::git::transport::Transport;

/// A trailer every outcome commit carries: how the dispatcher recognises its own commits.
pub(crate) const ID_TRAILER: &str = "Dispatch-Id";

/// What [`Sync::reconcile`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Reconciled {
    /// Outcome commits re-created on a remote tip that moved.
    pub replayed: usize,
    /// Local commits that were not the dispatcher's own and were dropped (the remote is the truth).
    pub dropped: usize,
    /// Keys of unpushed outcomes left out because the remote already records an outcome for them.
    pub already_recorded: Vec<String>,
    /// (key, request path) of re-created outcomes whose request file the remote holds in another
    /// version than the one that ran: that version is left in `requests/`.
    pub changed: Vec<(String, String)>,
}

pub(crate) struct Sync {
    /// Where new objects go until [`Sync::persist`] writes them out as one pack. Declared before
    /// `repo`, whose object database owns its store, so that it is dropped first.
    staging: Staging,
    pub repo: Repository,
    pub url: String,
    access: Access,
    /// The bare clone's folder, for the `git` command line transport.
    path: PathBuf,
    branch: String,
    signature_name: String,
    signature_email: String,
    /// The packs [`Sync::persist`] wrote since the last push, in order: over a local path, a push
    /// copies these bytes instead of packing the same objects again.
    written: RefCell<WrittenPacks>,
    /// `git gc --auto` and repacks after a push, on a thread of their own.
    housekeeping: Housekeeping,
    /// Set when packs `repo` may have loaded were removed from the workdir (see
    /// [`Sync::reopen_if_stale`]).
    stale: Arc<AtomicBool>,
    /// Notes ([`Sync::note`], [`Sync::note_message`]) that sit as loose objects in the workdir and
    /// are not needed again: removed by [`Sync::forget_notes`] with a fresh repository handle (the
    /// one in use may cache them, and a push would look for them).
    pub(super) spent_notes: RefCell<Vec<Oid>>,
}

impl Drop for Sync {
    /// Outcomes still in memory are written out (the dispatcher persists them before it stops; this
    /// covers the way out of an error), and a gc still running is waited for, so that none outlives
    /// the dispatcher.
    fn drop(&mut self) {
        if let Err(e) = self.persist() {
            eprintln!(
                "git-dispatch: could not write out {} outcome(s) recorded in memory: {e}; the journal \
                 recovers their runs at the next start",
                self.staging.commits()
            );
        }
        self.housekeeping.finish();
    }
}

impl Sync {
    /// Opens the bare clone at `path`, creating it on first use.
    pub(crate) fn open(
        path: &Path,
        url: &str,
        branch: &str,
        host: &str,
        access: Access,
    ) -> Result<Self, SyncError> {
        configure_libgit2();
        let workdir_err = |source| SyncError::Workdir {
            path: path.to_owned(),
            source,
        };
        let repo = if path.join("HEAD").exists() {
            Repository::open_bare(path).map_err(workdir_err)?
        } else {
            fs::create_dir_all(path)
                .map_err(|e| workdir_err(git2::Error::from_str(&e.to_string())))?;
            // No template: the sample hooks and the rest are of no use in this clone, and copying
            // them was a sixth of a first start.
            let mut options = git2::RepositoryInitOptions::new();
            options.bare(true).external_template(false);
            let repo = Repository::init_opts(path, &options).map_err(workdir_err)?;
            repo.remote_with_fetch(
                REMOTE,
                url,
                &format!("+refs/heads/{branch}:refs/remotes/{REMOTE}/{branch}"),
            )
            .map_err(workdir_err)?;
            repo
        };
        let found = repo
            .find_remote(REMOTE)
            .map_err(workdir_err)?
            .url()
            .unwrap_or_default()
            .to_owned();
        if found != url && crate::git::url::without_password(&found).0 == url {
            // Made before passwords were kept out of the workdir: forget the stored one.
            repo.remote_set_url(REMOTE, url).map_err(workdir_err)?;
        } else if found != url {
            return Err(SyncError::OtherRemote {
                path: path.to_owned(),
                found,
                wanted: url.to_owned(),
            });
        }
        let staging = Staging::attach(&repo).map_err(workdir_err)?;
        let stale = Arc::new(AtomicBool::new(false));
        Ok(Self {
            staging,
            repo,
            url: url.to_owned(),
            access,
            path: path.to_owned(),
            branch: branch.to_owned(),
            signature_name: "git-dispatch".to_owned(),
            signature_email: format!("git-dispatch@{host}"),
            written: RefCell::new(WrittenPacks::default()),
            housekeeping: Housekeeping::new(path.to_owned(), Arc::clone(&stale)),
            stale,
            spent_notes: RefCell::new(Vec::new()),
        })
    }

    /// Opens the workdir's repository afresh when packs it may have loaded were removed (merged at
    /// a push, or by `git repack`) and nothing is held in memory. libgit2 never forgets a pack it
    /// has loaded: each removed one kept its index mapped and its file open, 264 descriptors after
    /// 3000 requests on the benchmark, which a dispatcher running for days would have run out of.
    /// On a failure the repository in use stays, as it is still sound.
    pub(crate) fn reopen_if_stale(&mut self) {
        if self.staging.is_busy() || !self.stale.swap(false, Ordering::Relaxed) {
            return;
        }
        self.reopen();
    }

    /// Removes the loose object files of the spent notes (once `at_least` of them wait, and nothing
    /// is held in memory), and opens the repository afresh so that nothing cached names them.
    pub(crate) fn forget_notes(&mut self, at_least: usize) {
        if self.staging.is_busy() || self.spent_notes.borrow().len() < at_least.max(1) {
            return;
        }
        let objects = self.path.join("objects");
        let empty_tree = Oid::from_str(crate::git::refs::EMPTY_TREE).ok();
        for oid in self.spent_notes.take().into_iter().chain(empty_tree) {
            let hex = oid.to_string();
            let _ = fs::remove_file(objects.join(&hex[..2]).join(&hex[2..]));
        }
        self.reopen();
    }

    fn reopen(&mut self) {
        let reopened =
            Repository::open_bare(&self.path).and_then(|repo| Ok((Staging::attach(&repo)?, repo)));
        match reopened {
            Ok((staging, repo)) => {
                self.staging = staging;
                self.repo = repo;
            }
            Err(_) => self.stale.store(true, Ordering::Relaxed),
        }
    }

    /// The remote, as the transport of [`Access`] reaches it.
    pub(super) fn remote(&self) -> Remote<'_> {
        Remote::new(
            &self.repo,
            &self.path,
            &self.url,
            &self.access,
            &self.branch,
        )
    }

    /// The remote as seen from another repository of the workdir (`records.git`, at `git_dir`).
    pub(super) fn remote_from<'a>(&'a self, repo: &'a Repository, git_dir: &'a Path) -> Remote<'a> {
        Remote::new(repo, git_dir, &self.url, &self.access, &self.branch)
    }

    /// The folder `name` beside the workdir's clone.
    pub(super) fn beside(&self, name: &str) -> std::path::PathBuf {
        self.path.with_file_name(name)
    }

    /// The dispatcher's signature, as author and committer, at this moment.
    pub(super) fn signature(&self) -> Result<Signature<'static>, git2::Error> {
        Signature::now(&self.signature_name, &self.signature_email)
    }

    fn pack_dir(&self) -> PathBuf {
        self.path.join("objects").join("pack")
    }

    /// Forgets the packs written since the last push: a push walks the commits instead.
    fn forget_written(&self) {
        self.written.borrow_mut().clear();
        self.staging.forget_finished();
    }

    fn local_ref(&self) -> String {
        transport::local_ref(&self.branch)
    }

    fn no_branch(&self) -> SyncError {
        SyncError::NoBranch {
            url: self.url.clone(),
            branch: self.branch.clone(),
        }
    }

    /// The local tip: the remote's tip plus unpushed outcomes, those only in memory included. `None`
    /// before the first fetch.
    pub(crate) fn tip(&self) -> Option<Oid> {
        self.staging
            .tip()
            .or_else(|| self.repo.refname_to_id(&self.local_ref()).ok())
    }

    /// The remote's tip as last fetched or pushed.
    pub(crate) fn remote_tip(&self) -> Option<Oid> {
        self.repo
            .refname_to_id(&transport::remote_ref(&self.branch))
            .ok()
    }

    /// Fetches the branch into `refs/remotes/origin/<branch>`; returns the remote's tip.
    pub(crate) fn fetch(&self) -> Result<Oid, SyncError> {
        self.remote().fetch()
    }

    /// Brings the local branch onto the remote's tip, re-creating the dispatcher's own unpushed
    /// outcome commits on top of it in their order. Anything else that is only local is dropped.
    pub(crate) fn reconcile(&self) -> Result<Reconciled, SyncError> {
        self.reconcile_onto_remote(false)
    }

    /// Whether the remote's tip no longer descends from `seen` (a tip fetched or pushed before): the
    /// branch was rewritten.
    pub(crate) fn rewritten_since(&self, seen: Option<Oid>) -> Result<bool, SyncError> {
        let (Some(seen), Some(tip)) = (seen, self.remote_tip()) else {
            return Ok(false);
        };
        Ok(seen != tip && !self.repo.graph_descendant_of(tip, seen)?)
    }

    /// [`Sync::reconcile`] after the remote's branch was rewritten: a local branch ahead of it (the
    /// rewrite went back to an ancestor) is rebuilt the same way, so that only outcome commits are
    /// pushed again, never the rest of what the rewrite removed.
    pub(crate) fn reconcile_rewritten(&self) -> Result<Reconciled, SyncError> {
        self.reconcile_onto_remote(true)
    }

    fn reconcile_onto_remote(&self, rewritten: bool) -> Result<Reconciled, SyncError> {
        let Some(remote) = self.remote_tip() else {
            return Err(self.no_branch());
        };
        let Some(local) = self.tip() else {
            self.set_tip(remote, "git-dispatch: start from the remote")?;
            return Ok(Reconciled::default());
        };
        if local == remote || (!rewritten && self.repo.graph_descendant_of(local, remote)?) {
            return Ok(Reconciled::default());
        }
        let mut result = Reconciled::default();
        let mut base = remote;
        for oid in self.unpushed_commits()? {
            let commit = self.repo.find_commit(oid)?;
            let Some(key) = outcome_key(&commit) else {
                result.dropped += 1;
                continue;
            };
            let base_commit = self.repo.find_commit(base)?;
            if crate::layout::is_recorded(&base_commit.tree()?, &key) {
                // The remote already holds an outcome for this key: recording ours would be a second one.
                result.already_recorded.push(key);
                continue;
            }
            let mut edits = self.edits_of(&commit)?;
            let (before, now) = (commit.parent(0)?.tree()?, base_commit.tree()?);
            edits.retain(|edit| {
                let Edit::Remove { path } = edit else {
                    return true;
                };
                let blob = |tree: &git2::Tree<'_>| tree.get_path(Path::new(path)).map(|e| e.id());
                match (blob(&before), blob(&now)) {
                    (Ok(ran), Ok(there)) if ran != there => {
                        result.changed.push((key.clone(), path.clone()));
                        false
                    }
                    _ => true,
                }
            });
            let tree = self.apply(&base_commit, &edits)?;
            base = self.make_commit(
                &commit.author(),
                &commit.committer(),
                commit.message_raw().unwrap_or_default(),
                tree,
                &base_commit,
            )?;
            result.replayed += 1;
        }
        self.set_tip(
            base,
            "git-dispatch: re-create unpushed outcomes on the remote's tip",
        )?;
        Ok(result)
    }

    /// The local commits the remote does not have, oldest first.
    pub(crate) fn unpushed_commits(&self) -> Result<Vec<Oid>, SyncError> {
        let Some(local) = self.tip() else {
            return Ok(Vec::new());
        };
        let mut walk = self.repo.revwalk()?;
        walk.set_sorting(Sort::TOPOLOGICAL | Sort::REVERSE)?;
        walk.push(local)?;
        if let Some(remote) = self.remote_tip() {
            walk.hide(remote)?;
        }
        Ok(walk.collect::<Result<Vec<_>, _>>()?)
    }

    /// Points the local branch at `oid`, after writing out what is in memory: a ref on disk never
    /// names an object that is only in memory.
    fn set_tip(&self, oid: Oid, why: &str) -> Result<(), SyncError> {
        self.write_staged()?;
        self.repo.reference(&self.local_ref(), oid, true, why)?;
        self.staging.clear();
        Ok(())
    }

    /// Whether the outcomes recorded in memory are many or large enough to be written out now,
    /// whatever the push schedule.
    pub(crate) fn staging_full(&self) -> bool {
        self.staging.is_full()
    }

    /// Writes the outcomes recorded in memory to the workdir as one pack and moves the local branch
    /// to them. Returns how many outcome commits were written.
    pub(crate) fn persist(&self) -> Result<usize, SyncError> {
        let Some(tip) = self.staging.tip() else {
            return Ok(0);
        };
        let commits = self.staging.commits();
        self.set_tip(tip, "git-dispatch: record outcomes")?;
        Ok(commits)
    }

    /// Writes out what is in memory (see [`Staging::write_out`]); the pack is kept for the next push
    /// when it holds every commit since the last write-out, and the list is forgotten otherwise.
    fn write_staged(&self) -> Result<(), SyncError> {
        match self.staging.write_out(&self.repo, &self.pack_dir())? {
            Some(pack) => self.written.borrow_mut().push(pack),
            None => self.forget_written(),
        }
        Ok(())
    }

    /// What a commit changed against its first parent, as edits that can be applied elsewhere.
    fn edits_of(&self, commit: &Commit<'_>) -> Result<Vec<Edit>, SyncError> {
        let new = commit.tree()?;
        let old = match commit.parent(0) {
            Ok(parent) => Some(parent.tree()?),
            Err(_) => None,
        };
        let diff = self
            .repo
            .diff_tree_to_tree(old.as_ref(), Some(&new), None)?;
        let mut edits = Vec::new();
        for delta in diff.deltas() {
            let file = delta.new_file();
            let path = |f: &git2::DiffFile<'_>| {
                f.path()
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default()
            };
            if delta.status() == git2::Delta::Deleted {
                edits.push(Edit::Remove {
                    path: path(&delta.old_file()),
                });
            } else {
                let mode = match file.mode() {
                    git2::FileMode::BlobExecutable => FileMode::BlobExecutable,
                    git2::FileMode::Link => FileMode::Link,
                    _ => FileMode::Blob,
                };
                edits.push(Edit::Upsert {
                    path: path(&file),
                    oid: file.id(),
                    mode,
                });
            }
        }
        Ok(edits)
    }

    /// The tree of `base` with `edits` applied; the new trees go to memory (see [`tree_edit`]).
    fn apply(&self, base: &Commit<'_>, edits: &[Edit]) -> Result<Oid, SyncError> {
        let odb = self.repo.odb()?;
        let tree = tree_edit::apply(
            Some(base.tree_id()),
            edits,
            &mut |oid| Ok(odb.read(oid)?.data().to_vec()),
            &mut |tree| self.staging.put_tree(&tree),
        )?;
        Ok(tree)
    }

    /// Writes `bytes` as a blob (in memory, until [`Sync::persist`]).
    pub(crate) fn blob(&self, bytes: &[u8]) -> Result<Oid, SyncError> {
        Ok(self.staging.put(ObjectType::Blob, bytes)?)
    }

    /// Commits `edits` on the local tip with `message`, in memory until [`Sync::persist`]; returns the
    /// new tip.
    pub(crate) fn commit(&self, edits: &[Edit], message: &str) -> Result<Oid, SyncError> {
        let parent_oid = self.tip().ok_or_else(|| self.no_branch())?;
        let parent = self.repo.find_commit(parent_oid)?;
        let tree = self.apply(&parent, edits)?;
        let signature = self.signature()?;
        let oid = self.make_commit(&signature, &signature, message, tree, &parent)?;
        self.staging.staged(parent_oid, oid);
        Ok(oid)
    }

    /// A commit of `tree` on `parent`, in memory.
    fn make_commit(
        &self,
        author: &Signature<'_>,
        committer: &Signature<'_>,
        message: &str,
        tree: Oid,
        parent: &Commit<'_>,
    ) -> Result<Oid, SyncError> {
        let tree = self.repo.find_tree(tree)?;
        let buffer =
            self.repo
                .commit_create_buffer(author, committer, message, &tree, &[parent])?;
        Ok(self.staging.put(ObjectType::Commit, &buffer)?)
    }
}

/// The key an outcome commit records (its `Dispatch-Id` trailer); `None` for any other commit.
pub(crate) fn outcome_key(commit: &Commit<'_>) -> Option<String> {
    let message = commit.message_raw().ok()?;
    let trailers = git2::message_trailers_strs(message).ok()?;
    trailers
        .iter()
        .find(|(k, _)| *k == ID_TRAILER)
        .map(|(_, v)| v.to_owned())
}
