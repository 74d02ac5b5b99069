//! The dispatcher's side of Git: a bare clone in the workdir, fetch, reconcile, commit, push.
//!
//! Nothing is ever checked out: requests are read from the fetched commit's tree and outcomes are
//! written as new trees built in memory, so there is no index, no working tree and no lock file to go
//! stale. The local branch is the remote's tip plus the dispatcher's own outcome commits that are not
//! pushed yet; [`Sync::reconcile`] re-creates those on whatever the remote holds now (never a force
//! push, never a rewrite of anyone else's commit).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use git2::{
    Binding, Commit, Cred, CredentialType, Direction, ErrorCode, FetchOptions, FileMode,
    ObjectType, Oid, PushOptions, RemoteCallbacks, Repository, Signature, Sort,
};
use thiserror::Error;

use crate::git::pack::{Pack, PackFile};
use crate::git::pack_writer::PackWriter;
use crate::git::tree_edit::{self, Edit};
use crate::git::url::Password;

const REMOTE: &str = "origin";
/// A trailer every outcome commit carries: how the dispatcher recognises its own commits.
pub(crate) const ID_TRAILER: &str = "Dispatch-Id";
/// Credential callbacks are asked again after every failure; past this many, give up.
const MAX_CREDENTIAL_ATTEMPTS: u32 = 3;
/// Outcomes recorded in memory are written out once there are this many of them, or they wrote this
/// many bytes of blobs and trees, even when no push is due: this bounds the memory they take and
/// what a crash leaves to the journal. With 1000 requests queued, each outcome writes a new inbox
/// tree of up to 45 KB: 512 KiB took 1 MiB less of the heap than 1 MiB (11.0 against 12.1 MiB at
/// the peak, in three drains of 1000 each), at no measured cost in time.
const STAGE_MAX_COMMITS: usize = 256;
const STAGE_MAX_BYTES: usize = 512 << 10;
/// Trees smaller than this are stored whole in the packs of outcomes: a delta would save little.
const MIN_DELTA_BASE: usize = 1024;
/// Above the loose (1) and pack (2) backends: new objects go to memory first, and are found there.
const STAGE_PRIORITY: i32 = 1000;
/// More packs than this in the workdir are merged (see [`Sync::gc_auto`]). Each merge costs
/// about 0.4 s over 100,000 recorded outcomes however small the packs (`pack-objects
/// --stdin-packs` walks from their commits): 7.8 ms per request in drains of 100 there with a
/// limit of 8 packs, 5.3 ms with 24 (eight alternating drains each), while an object is looked up
/// in a few more packs.
const MAX_PACKS: usize = 24;

#[derive(Debug, Error)]
pub(crate) enum SyncError {
    #[error("workdir `{path}`: {source}")]
    Workdir {
        path: PathBuf,
        #[source]
        source: git2::Error,
    },
    #[error(
        "workdir `{path}` belongs to remote `{found}`, not `{wanted}`; use another --workdir or remove it"
    )]
    OtherRemote {
        path: PathBuf,
        found: String,
        wanted: String,
    },
    #[error("remote `{url}` could not be reached: {message}")]
    Unreachable { url: String, message: String },
    #[error("remote `{url}` has no branch `{branch}`; is it an inbox repository?")]
    NoBranch { url: String, branch: String },
    #[error("remote `{url}` rejected the push of `{refname}`: {reason}")]
    Rejected {
        url: String,
        refname: String,
        reason: String,
    },
    #[error("git: {0}")]
    Git(#[from] git2::Error),
}

impl SyncError {
    /// Whether trying again later may help (as opposed to a configuration problem).
    pub(crate) fn is_transient(&self) -> bool {
        matches!(
            self,
            SyncError::Unreachable { .. } | SyncError::Rejected { .. }
        )
    }
}

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

/// The environment variable that hands the password to the `git` transport's credential helper.
const PASSWORD_VAR: &str = "GIT_DISPATCH_REMOTE_PASSWORD";

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
    pub repo: Repository,
    /// Where new objects go until [`Sync::persist`] writes them out as one pack.
    staging: Staging,
    pub url: String,
    access: Access,
    /// The bare clone's folder, for the `git` command line transport.
    path: PathBuf,
    branch: String,
    signature_name: String,
    signature_email: String,
    /// The packs [`Sync::persist`] wrote since the last push, in order: over a local path, a push
    /// copies these bytes instead of packing the same objects again (see [`Sync::push_local`]).
    written: RefCell<Vec<WrittenPack>>,
    /// The thread running `git gc --auto` after a push (see [`Sync::gc_auto`]), if one was started.
    gc: RefCell<Option<std::thread::JoinHandle<()>>>,
    /// A round of housekeeping skipped while the last one ran (with the remote it would have
    /// tended): run when the dispatcher stops, so its last push is tended too.
    gc_skipped: RefCell<Option<Option<PathBuf>>>,
    /// Set when packs `repo` may have loaded were removed from the workdir (see
    /// [`Sync::reopen_if_stale`]).
    stale: Arc<AtomicBool>,
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
                self.staging.commits.get()
            );
        }
        if let Some(gc) = self.gc.get_mut().take() {
            let _ = gc.join();
        }
        if let Some(local_remote) = self.gc_skipped.get_mut().take() {
            self.gc_auto(local_remote);
            if let Some(gc) = self.gc.get_mut().take() {
                let _ = gc.join();
            }
        }
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
        Ok(Self {
            repo,
            staging,
            url: url.to_owned(),
            access,
            path: path.to_owned(),
            branch: branch.to_owned(),
            signature_name: "git-dispatch".to_owned(),
            signature_email: format!("git-dispatch@{host}"),
            written: RefCell::new(Vec::new()),
            gc: RefCell::new(None),
            gc_skipped: RefCell::new(None),
            stale: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Opens the workdir's repository afresh when packs it may have loaded were removed (merged at
    /// a push, or by `git repack`) and nothing is held in memory. libgit2 never forgets a pack it
    /// has loaded: each removed one kept its index mapped and its file open, 264 descriptors after
    /// 3000 requests on the benchmark, which a dispatcher running for days would have run out of.
    /// On a failure the repository in use stays, as it is still sound.
    pub(crate) fn reopen_if_stale(&mut self) {
        let busy = self.staging.tip.get().is_some() || !self.staging.pending.borrow().is_empty();
        if busy || !self.stale.swap(false, Ordering::Relaxed) {
            return;
        }
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

    /// Forgets the packs written since the last push: a push walks the commits instead.
    fn forget_written(&self) {
        self.written.borrow_mut().clear();
        self.staging.pack.borrow_mut().forget_finished();
    }

    /// Merges the packs written since the last push into one (see [`PackFile::merge`]), which then
    /// replaces them in the workdir and is what a local push copies: each push adds one pack to
    /// the remote and to the workdir, not one per write-out (35 for a push of 500 outcomes on the
    /// benchmark, where the workdir's `git repack` took 0.2 s of a core every 24 and the remote's
    /// `git gc --auto` would rewrite its whole history every second push). Best effort: when the
    /// merged pack cannot be written, the small ones stay.
    fn merge_written(&self) {
        let mut written = self.written.borrow_mut();
        if written.len() < 2 {
            return;
        }
        let parts: Vec<&PackFile> = written.iter().map(|w| &w.pack).collect();
        let dir = self.path.join("objects").join("pack");
        let Ok(Some(merged)) = PackFile::merge(&parts, &dir) else {
            return;
        };
        if self.repo.odb().and_then(|o| o.refresh()).is_err() {
            return;
        }
        for part in written.iter() {
            let _ = part.pack.remove_from(&dir);
        }
        self.stale.store(true, Ordering::Relaxed);
        let (base, tip) = (written[0].base, written[written.len() - 1].tip);
        *written = vec![WrittenPack {
            base,
            tip,
            pack: merged,
        }];
    }

    fn local_ref(&self) -> String {
        format!("refs/heads/{}", self.branch)
    }

    fn remote_ref(&self) -> String {
        format!("refs/remotes/{REMOTE}/{}", self.branch)
    }

    /// The local tip: the remote's tip plus unpushed outcomes, those only in memory included. `None`
    /// before the first fetch.
    pub(crate) fn tip(&self) -> Option<Oid> {
        self.staging
            .tip
            .get()
            .or_else(|| self.repo.refname_to_id(&self.local_ref()).ok())
    }

    /// The remote's tip as last fetched or pushed.
    pub(crate) fn remote_tip(&self) -> Option<Oid> {
        self.repo.refname_to_id(&self.remote_ref()).ok()
    }

    /// Looks at the remote's head without fetching anything: cheap enough to poll.
    pub(crate) fn probe(&self) -> Result<Option<Oid>, SyncError> {
        let wanted = format!("refs/heads/{}", self.branch);
        if self.access.transport == Transport::Cli {
            let out = self.git(&["ls-remote", REMOTE, &wanted])?;
            return Ok(out
                .split_whitespace()
                .next()
                .and_then(|oid| Oid::from_str(oid).ok()));
        }
        let mut remote = self.repo.find_remote(REMOTE)?;
        let tried = Tried::default();
        let connection = remote
            .connect_auth(Direction::Fetch, Some(self.callbacks(&tried)), None)
            .map_err(|e| self.unreachable(&e, &tried))?;
        let head = connection
            .list()
            .map_err(|e| self.unreachable(&e, &tried))?
            .iter()
            .find(|h| h.name() == wanted)
            .map(git2::RemoteHead::oid);
        Ok(head)
    }

    /// Fetches the branch into `refs/remotes/origin/<branch>`; returns the remote's tip.
    pub(crate) fn fetch(&self) -> Result<Oid, SyncError> {
        let refspec = format!("+refs/heads/{0}:refs/remotes/{REMOTE}/{0}", self.branch);
        if self.access.transport == Transport::Cli {
            self.git(&["fetch", "--quiet", "--no-tags", REMOTE, &refspec])?;
            crate::failpoint::hit("fetch");
            return self.remote_tip().ok_or_else(|| SyncError::NoBranch {
                url: self.url.clone(),
                branch: self.branch.clone(),
            });
        }
        if let Some(fetched) = self.fetch_local() {
            return fetched;
        }
        let mut remote = self.repo.find_remote(REMOTE)?;
        let tried = Tried::default();
        let mut options = FetchOptions::new();
        options.remote_callbacks(self.callbacks(&tried));
        remote
            .download(&[&refspec], Some(&mut options))
            .map_err(|e| self.unreachable(&e, &tried))?;
        crate::failpoint::hit("fetch");
        remote
            .update_tips(
                None,
                git2::RemoteUpdateFlags::UPDATE_FETCHHEAD,
                git2::AutotagOption::None,
                None,
            )
            .map_err(|e| self.unreachable(&e, &tried))?;
        remote.disconnect()?;
        self.remote_tip().ok_or_else(|| SyncError::NoBranch {
            url: self.url.clone(),
            branch: self.branch.clone(),
        })
    }

    /// A libgit2 failure to reach the remote, with what libgit2's SSH leaves unsaid: the methods
    /// offered when authentication failed, where an unknown host key was looked for, and what it
    /// does not support.
    fn unreachable(&self, e: &git2::Error, tried: &Tried) -> SyncError {
        let mut message = e.message().to_owned();
        if let Some(path) = crate::git::url::local_path(&self.url).filter(|p| !p.exists()) {
            message = format!("the path `{}` does not exist", path.display());
        }
        if e.class() == git2::ErrorClass::Ssh {
            let lower = message.to_lowercase();
            if lower.contains("hostkey") || lower.contains("host key") {
                message.push_str(&format!(
                    "; libgit2 looks for the host key in `{}` only (add it there, e.g. with \
                     `ssh-keyscan`), or use --git-transport cli, where OpenSSH reads the known \
                     hosts and ~/.ssh/config of the account's home",
                    libgit2_known_hosts().display()
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
        SyncError::Unreachable {
            url: self.url.clone(),
            message,
        }
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
            return Err(SyncError::NoBranch {
                url: self.url.clone(),
                branch: self.branch.clone(),
            });
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
        self.staging.commits.get() >= STAGE_MAX_COMMITS
            || self.staging.bytes.get() >= STAGE_MAX_BYTES
    }

    /// Writes the outcomes recorded in memory to the workdir as one pack and moves the local branch
    /// to them. Returns how many outcome commits were written.
    pub(crate) fn persist(&self) -> Result<usize, SyncError> {
        let Some(tip) = self.staging.tip.get() else {
            return Ok(0);
        };
        let commits = self.staging.commits.get();
        self.set_tip(tip, "git-dispatch: record outcomes")?;
        Ok(commits)
    }

    /// One pack of every object in memory (outcome commits, and those [`Sync::reconcile`] re-created),
    /// written as they were made (see [`crate::git::pack`]), then an empty store.
    ///
    /// A pack that could not be written (a full disk) stays pending, with the objects in memory, and
    /// is written first the next time: the branch never moves to a commit that is not on disk.
    fn write_staged(&self) -> Result<(), SyncError> {
        let mut pending = self.staging.pending.borrow_mut();
        {
            let mut writer = self.staging.pack.borrow_mut();
            self.staging.whole.borrow_mut().clear();
            self.staging.delta_of.borrow_mut().clear();
            if !writer.is_empty() {
                pending.push(writer.finish());
            }
        }
        let dir = self.path.join("objects").join("pack");
        for pack in pending.iter() {
            let written = match crate::failpoint::fails("write-pack") {
                true => Err(std::io::Error::other("fail point `write-pack`")),
                false => pack.write_to(&dir),
            };
            written.map_err(|e| {
                git2::Error::from_str(&format!(
                    "could not write a pack in `{}`: {e}",
                    dir.display()
                ))
            })?;
        }
        if !pending.is_empty() {
            self.repo.odb()?.refresh()?;
        }
        self.staging.mempack().reset()?;
        let packs = std::mem::take(&mut *pending);
        match (self.staging.base.get(), self.staging.tip.get()) {
            // One pack of all the commits since the last write-out: a push can copy it.
            (Some(base), Some(tip)) if packs.len() == 1 => {
                let pack = packs.into_iter().next().expect("one pack").into_file();
                self.written
                    .borrow_mut()
                    .push(WrittenPack { base, tip, pack });
            }
            _ => self.forget_written(),
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
        let parent_oid = self.tip().ok_or_else(|| SyncError::NoBranch {
            url: self.url.clone(),
            branch: self.branch.clone(),
        })?;
        let parent = self.repo.find_commit(parent_oid)?;
        let tree = self.apply(&parent, edits)?;
        let signature = Signature::now(&self.signature_name, &self.signature_email)?;
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

    /// One push of the local branch (outcomes in memory written out first), then housekeeping where
    /// it wrote objects (see [`Sync::gc_auto`]).
    pub(crate) fn push(&self) -> Result<(), SyncError> {
        self.persist()?;
        self.merge_written();
        // Whatever this push does with them, the packs written so far are its business only.
        let packs = self.written.take();
        self.staging.pack.borrow_mut().forget_finished();
        let Some(local) = self.tip() else {
            return Ok(());
        };
        let mut local_remote = None;
        if self.access.transport == Transport::Cli {
            self.push_cli(local)?;
        } else if let Some(remote) = self.local_remote() {
            self.push_local(&remote, local, packs)?;
            local_remote = Some(remote.path().to_owned());
        } else {
            self.push_libgit2(local)?;
        }
        self.gc_auto(local_remote);
        Ok(())
    }

    /// A push through libgit2's transports. A ref the server refuses is an error even though libgit2
    /// reports success for it.
    fn push_libgit2(&self, local: Oid) -> Result<(), SyncError> {
        let mut remote = self.repo.find_remote(REMOTE)?;
        let tried = Tried::default();
        let refused: RefCell<Option<(String, String)>> = RefCell::new(None);
        let mut cbs = self.callbacks(&tried);
        cbs.push_update_reference(|refname, status| {
            match status {
                Some(status) => {
                    *refused.borrow_mut() = Some((refname.to_owned(), status.to_owned()))
                }
                None => crate::failpoint::hit("push"),
            }
            Ok(())
        });
        let mut options = PushOptions::new();
        options.remote_callbacks(cbs);
        let refspec = format!("{0}:{0}", self.local_ref());
        let result = remote.push(&[&refspec], Some(&mut options));
        drop(options);
        if let Some((refname, reason)) = refused.into_inner() {
            return Err(SyncError::Rejected {
                url: self.url.clone(),
                refname,
                reason,
            });
        }
        if let Err(e) = result {
            return Err(if e.code() == ErrorCode::NotFastForward {
                SyncError::Rejected {
                    url: self.url.clone(),
                    refname: self.local_ref(),
                    reason: e.message().to_owned(),
                }
            } else {
                self.unreachable(&e, &tried)
            });
        }
        self.repo
            .reference(&self.remote_ref(), local, true, "git-dispatch: pushed")?;
        Ok(())
    }
}

/// Process-wide libgit2 settings, made once: cache trees up to 4 MiB (the inbox, `processed/` and
/// `logs/` trees are read on every request; libgit2 caches only trees under 4 KiB by default) in a
/// cache of 512 KiB (more only fills with dead trees and costs memory: 80 MiB peak for 1000 requests
/// with a 24 MiB cache, 36–37 MiB with 4 MiB, 35–36 MiB with 2 MiB, 33.4–33.9 with 1 MiB and
/// 32.5–33.5 with 512 KiB, and no more CPU time; caching no large tree at all took 3 MiB more, as
/// the same trees were read and freed again and again), map
/// packs in windows of 1 MiB up to 2 MiB in all (the default maps whole packs, up to 8 GiB, and
/// mapped pages count in the resident memory: 42.9 MiB peak over 100,000 outcomes with the default,
/// 30.2 with 8 MiB; no more CPU time either), skip re-hashing every object read from our own object
/// store, and bound how long a silent server can hold a fetch or push. The first call also
/// initialises libgit2, which loads the system's CA certificates for HTTPS whatever the remote
/// (about 20 ms, a third of a first start): `Daemon::open` makes it on a thread of its own.
pub(crate) fn configure_libgit2() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        git2::opts::strict_hash_verification(false);
        // SAFETY: called once, before any repository is opened by this process.
        unsafe {
            // Bounded: every outcome makes new trees, and a large cache only fills with dead ones
            // (a parsed tree takes a few times its size in memory).
            let _ = git2::opts::set_cache_object_limit(git2::ObjectType::Tree, 4 << 20);
            let _ = git2::opts::set_cache_object_limit(git2::ObjectType::Commit, 1 << 20);
            let _ = git2::opts::set_cache_max_size(512 << 10);
            let _ = git2::opts::set_mwindow_size(1 << 20);
            let _ = git2::opts::set_mwindow_mapped_limit(2 << 20);
            let _ = git2::opts::set_server_connect_timeout_in_milliseconds(15_000);
            let _ = git2::opts::set_server_timeout_in_milliseconds(120_000);
        }
    });
}

/// Where libgit2 looks for SSH host keys: `.ssh/known_hosts` in `$HOME` (OpenSSH reads the home of
/// the account instead).
fn libgit2_known_hosts() -> PathBuf {
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

/// The key an outcome commit records (its `Dispatch-Id` trailer); `None` for any other commit.
pub(crate) fn outcome_key(commit: &Commit<'_>) -> Option<String> {
    let message = commit.message_raw().ok()?;
    let trailers = git2::message_trailers_strs(message).ok()?;
    trailers
        .iter()
        .find(|(k, _)| *k == ID_TRAILER)
        .map(|(_, v)| v.to_owned())
}

impl Sync {
    /// Callbacks with a bounded credentials callback (libgit2 calls it again after every failure,
    /// forever otherwise); `tried` keeps which methods were offered, for the error.
    fn callbacks<'a>(&'a self, tried: &'a Tried) -> RemoteCallbacks<'a> {
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
            if let Some(password) = self
                .access
                .password
                .as_ref()
                .filter(|_| allowed.contains(CredentialType::USER_PASS_PLAINTEXT))
            {
                methods.push(format!("the password in the URL for `{user}`"));
                Cred::userpass_plaintext(user, &password.0)
            } else if allowed.contains(CredentialType::SSH_KEY) {
                if let Some(key) = &self.access.ssh_key {
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

    /// Runs the system `git` on the bare clone; never prompts.
    fn git(&self, args: &[&str]) -> Result<String, SyncError> {
        let output = self
            .git_command(args)
            .output()
            .map_err(|e| SyncError::Unreachable {
                url: self.url.clone(),
                message: format!("could not run `git`: {e}"),
            })?;
        if !output.status.success() {
            return Err(SyncError::Unreachable {
                url: self.url.clone(),
                message: format!(
                    "`git {}` failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The system `git` on the bare clone. It never prompts: not for credentials, and ssh runs in
    /// batch mode (its host key and passphrase prompts go to the terminal, which
    /// `GIT_TERMINAL_PROMPT` does not cover) unless `GIT_SSH_COMMAND`, `GIT_SSH` or
    /// `core.sshCommand` say how to run it. A password from the URL is handed to `git` by a
    /// credential helper of its own that reads it from the environment.
    fn git_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("git");
        command.env("GIT_TERMINAL_PROMPT", "0");
        let own_ssh = ["GIT_SSH_COMMAND", "GIT_SSH"]
            .iter()
            .any(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty()))
            || self
                .repo
                .config()
                .and_then(|c| c.get_string("core.sshCommand"))
                .is_ok_and(|c| !c.is_empty());
        if !own_ssh {
            command.env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes");
        }
        if let Some(password) = &self.access.password {
            command
                .args(["-c", "credential.helper="])
                .arg("-c")
                .arg(format!(
                    "credential.helper=!f() {{ test \"$1\" = get && printf 'password=%s\\n' \"${PASSWORD_VAR}\"; }}; f"
                ))
                .env(PASSWORD_VAR, &password.0);
        }
        command.arg("--git-dir").arg(&self.path).args(args);
        command
    }

    /// A push with the system `git`; `--porcelain` says for each ref whether the server took it.
    /// The remote as a bare repository on this host, when it is one (a local path or `file://`).
    fn local_remote(&self) -> Option<Repository> {
        let path = crate::git::url::local_path(&self.url)?;
        Repository::open_bare(path).ok()
    }

    /// A push to a bare repository on this host, written directly: the objects the unpushed commits
    /// add, then the branch moved from the tip last fetched to
    /// the local tip with a compare-and-swap under Git's ref lock (a remote that moved meanwhile is a
    /// rejection, as over the network). Like libgit2's own local push, this runs no hooks: a remote
    /// that needs them is served over `git daemon`, SSH or HTTPS. [`Sync::push`] then runs
    /// `git gc --auto` in the remote, as `git receive-pack` would, so the packs of pushes get merged.
    ///
    /// The objects are the packs [`Sync::persist`] wrote since the last push, copied as they are,
    /// when they chain from the remote's tip to the local one: every object an outcome commit makes
    /// goes into those packs, and the rest of what it names (the request's blob) the remote's tip
    /// holds. Otherwise (after a restart, or a reconcile) [`copy_objects`] finds what the remote
    /// lacks by walking the changed folders of each commit, which took 74 ms for a push of 170
    /// outcomes on the bench, time in which no request was started.
    fn push_local(
        &self,
        remote: &Repository,
        local: Oid,
        packs: Vec<WrittenPack>,
    ) -> Result<(), SyncError> {
        let refname = self.local_ref();
        let rejected = |reason: String| SyncError::Rejected {
            url: self.url.clone(),
            refname: refname.clone(),
            reason,
        };
        let Some(base) = self.remote_tip() else {
            return Err(rejected("no tip of the remote was fetched yet".to_owned()));
        };
        if remote.refname_to_id(&refname).ok() != Some(base) {
            return Err(rejected("fetch first: the remote moved".to_owned()));
        }
        // The packs are copied from the workdir, where a `git repack` that started before one of
        // them was written may have merged it away meanwhile: the walk does then (and reports what
        // it cannot do).
        let dir = remote.path().join("objects").join("pack");
        let own = self.path.join("objects").join("pack");
        let copied = chain(&packs, base, local)
            && packs
                .iter()
                .all(|written| copy_pack(&written.pack, &own, &dir).is_ok());
        if copied {
            remote.odb()?.refresh()?;
        } else {
            copy_objects(&self.repo, remote, local, base)?;
        }
        let moved =
            remote.reference_matching(&refname, local, true, base, "git-dispatch: push outcomes");
        if let Err(e) = moved {
            return Err(match e.code() {
                ErrorCode::Modified | ErrorCode::Locked | ErrorCode::NotFound => {
                    rejected(format!("the remote moved meanwhile: {}", e.message()))
                }
                _ => e.into(),
            });
        }
        crate::failpoint::hit("push");
        self.repo
            .reference(&self.remote_ref(), local, true, "git-dispatch: pushed")?;
        Ok(())
    }

    /// Housekeeping after a push, in the background, one round at a time (skipped while the last
    /// one runs, and then run once more when the dispatcher stops), and best effort as in
    /// receive-pack (a failure leaves more packs, no more). In the workdir, `git repack -d --geometric=2` once it holds more than [`MAX_PACKS`] packs: it gains
    /// one at every push (the outcomes written out) and every fetch, libgit2 looks an object up in
    /// each pack in turn, and a geometric repack merges only the small ones, so it writes what they
    /// hold, not the history (gc's own limit, 50 packs, would rewrite the history into one pack);
    /// then `git gc --auto` for loose objects (the `git` transport's fetches leave some). In a
    /// local-path remote, which no receive-pack tends, `git gc --auto` as receive-pack runs it.
    /// Each command runs in the foreground of a thread that waits for it: a detached gc would be
    /// re-parented to the dispatcher (a child subreaper) and never reaped.
    fn gc_auto(&self, local_remote: Option<PathBuf>) {
        let mut slot = self.gc.borrow_mut();
        if slot.as_ref().is_some_and(|gc| !gc.is_finished()) {
            self.gc_skipped.replace(Some(local_remote));
            return;
        }
        self.gc_skipped.replace(None);
        if let Some(done) = slot.take() {
            let _ = done.join();
        }
        let git = |git_dir: &Path, args: &[&str]| {
            let _ = Command::new("git")
                .arg("--git-dir")
                .arg(git_dir)
                .args(args)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        };
        let workdir = self.path.clone();
        let stale = Arc::clone(&self.stale);
        let spawned = std::thread::Builder::new()
            .name("gc".to_owned())
            .spawn(move || {
                if pack_count(&workdir) > MAX_PACKS {
                    git(&workdir, &["repack", "-d", "-q", "--geometric=2"]);
                    stale.store(true, Ordering::Relaxed);
                }
                git(
                    &workdir,
                    &[
                        "-c",
                        "gc.autoDetach=false",
                        "-c",
                        "gc.autoPackLimit=0",
                        "gc",
                        "--auto",
                        "--quiet",
                    ],
                );
                if let Some(remote) = local_remote {
                    git(
                        &remote,
                        &["-c", "gc.autoDetach=false", "gc", "--auto", "--quiet"],
                    );
                }
            });
        *slot = spawned.ok();
    }

    /// A fetch from a bare repository on this host that moved on from the tip last fetched: the
    /// objects of the new commits ([`copy_objects`]), then the remote-tracking branch. `None` when
    /// this does not apply (the first fetch, a rewritten remote): the caller fetches as usual.
    fn fetch_local(&self) -> Option<Result<Oid, SyncError>> {
        let remote = self.local_remote()?;
        let known = self.remote_tip()?;
        let tip = remote.refname_to_id(&self.local_ref()).ok()?;
        if tip == known {
            return Some(Ok(tip));
        }
        remote.graph_descendant_of(tip, known).ok()?.then_some(())?;
        let copied = copy_objects(&remote, &self.repo, tip, known).and_then(|()| {
            crate::failpoint::hit("fetch");
            self.repo
                .reference(&self.remote_ref(), tip, true, "git-dispatch: fetch")?;
            Ok(tip)
        });
        Some(copied.map_err(SyncError::from))
    }

    fn push_cli(&self, local: Oid) -> Result<(), SyncError> {
        let refspec = format!("{0}:{0}", self.local_ref());
        let output = self
            .git_command(&["push", "--porcelain", REMOTE, &refspec])
            .output()
            .map_err(|e| SyncError::Unreachable {
                url: self.url.clone(),
                message: format!("could not run `git`: {e}"),
            })?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        // `!<tab>from:to<tab>[rejected] (fetch first)` for a ref the server refused.
        if let Some(line) = stdout.lines().find(|l| l.starts_with('!')) {
            let mut fields = line.split('\t').skip(1);
            let refname = fields.next().unwrap_or_default().to_owned();
            let reason = fields.next().unwrap_or_default();
            return Err(SyncError::Rejected {
                url: self.url.clone(),
                refname,
                reason: format!("{reason} {}", stderr.trim()).trim().to_owned(),
            });
        }
        if !output.status.success() {
            return Err(SyncError::Unreachable {
                url: self.url.clone(),
                message: stderr.trim().to_owned(),
            });
        }
        crate::failpoint::hit("push");
        self.repo
            .reference(&self.remote_ref(), local, true, "git-dispatch: pushed")?;
        Ok(())
    }
}

/// Whether `packs` hold every object the commits from `base` (excluded) to `tip` add: a chain of
/// packs of outcome commits from one to the other (a reconcile, whose commits are not outcome
/// commits made on the local tip, clears the list).
fn chain(packs: &[WrittenPack], base: Oid, tip: Oid) -> bool {
    let mut at = base;
    for pack in packs {
        if pack.base != at {
            return false;
        }
        at = pack.tip;
    }
    at == tip
}

/// [`PackFile::copy`], or the fail point `copy-pack`: the pack is gone.
fn copy_pack(pack: &PackFile, from: &Path, to: &Path) -> std::io::Result<()> {
    match crate::failpoint::fails("copy-pack") {
        true => Err(std::io::ErrorKind::NotFound.into()),
        false => pack.copy(from, to),
    }
}

/// How many packs the repository at `git_dir` holds.
fn pack_count(git_dir: &Path) -> usize {
    fs::read_dir(git_dir.join("objects").join("pack")).map_or(0, |dir| {
        dir.filter_map(Result::ok)
            .filter(|e| e.file_name().as_encoded_bytes().ends_with(b".pack"))
            .count()
    })
}

/// Copies into `to` the objects that commit `tip` of `from` and its ancestors add to `base`, an
/// ancestor that `to` holds with everything it reaches. Only the folders that differ from each
/// commit's first parent are read, so the cost follows the change, not the size of the trees;
/// libgit2's pack builder instead walks every object of `base` to leave them out (0.4 s at 100,000
/// outcomes, on every push and fetch). What `to` already holds is left out; the rest is written into
/// `to` as one pack.
fn copy_objects(
    from: &Repository,
    to: &Repository,
    tip: Oid,
    base: Oid,
) -> Result<(), git2::Error> {
    let target = to.odb()?;
    let mut pack = from.packbuilder()?;
    let mut walk = from.revwalk()?;
    walk.push(tip)?;
    walk.hide(base)?;
    for commit in walk {
        let commit = from.find_commit(commit?)?;
        if !target.exists(commit.id()) {
            pack.insert_object(commit.id(), None)?;
        }
        let parent = match commit.parent(0) {
            Ok(parent) => Some(parent.tree()?),
            Err(_) => None,
        };
        insert_changed(from, &target, &mut pack, &commit.tree()?, parent.as_ref())?;
    }
    write_pack(&pack_bytes(&mut pack)?, &target)
}

/// What `pack` holds, as the bytes of one pack file (none when it is empty).
fn pack_bytes(pack: &mut git2::PackBuilder<'_>) -> Result<Vec<u8>, git2::Error> {
    let mut bytes = Vec::new();
    if pack.object_count() > 0 {
        pack.foreach(|chunk| {
            bytes.extend_from_slice(chunk);
            true
        })?;
    }
    Ok(bytes)
}

/// Writes a pack file's `bytes` into `odb` (indexed there; nothing when there are none).
fn write_pack(bytes: &[u8], odb: &git2::Odb<'_>) -> Result<(), git2::Error> {
    if bytes.is_empty() {
        return Ok(());
    }
    let mut writer = odb.packwriter()?;
    std::io::Write::write_all(&mut writer, bytes)
        .map_err(|e| git2::Error::from_str(&format!("writing a pack: {e}")))?;
    writer.commit()?;
    Ok(())
}

/// Adds to `pack` what `tree` holds and `parent` does not and `target` lacks, going into every folder
/// that differs from the parent's: a tree `target` holds is still looked into, as it may be the
/// dangling part of a broken transfer; one the parent has is complete in `target`.
fn insert_changed(
    repo: &Repository,
    target: &git2::Odb<'_>,
    pack: &mut git2::PackBuilder<'_>,
    tree: &git2::Tree<'_>,
    parent: Option<&git2::Tree<'_>>,
) -> Result<(), git2::Error> {
    if parent.is_some_and(|p| p.id() == tree.id()) {
        return Ok(());
    }
    if !target.exists(tree.id()) {
        pack.insert_object(tree.id(), None)?;
    }
    for entry in tree {
        let before = parent.and_then(|p| p.get_name_bytes(entry.name_bytes()));
        if before.as_ref().is_some_and(|b| b.id() == entry.id()) {
            continue;
        }
        match entry.kind() {
            Some(git2::ObjectType::Tree) => {
                let old = match before.filter(|b| b.kind() == Some(git2::ObjectType::Tree)) {
                    Some(b) => Some(repo.find_tree(b.id())?),
                    None => None,
                };
                insert_changed(
                    repo,
                    target,
                    pack,
                    &repo.find_tree(entry.id())?,
                    old.as_ref(),
                )?;
            }
            Some(git2::ObjectType::Blob) if !target.exists(entry.id()) => {
                pack.insert_object(entry.id(), None)?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// A pack [`Sync::persist`] wrote: the objects of the outcome commits from `base` (excluded) to
/// `tip`.
struct WrittenPack {
    base: Oid,
    tip: Oid,
    pack: PackFile,
}

/// The in-memory object store (libgit2's mempack backend) where outcome commits are made, and what
/// was committed there since it was last written out.
///
/// Writing each outcome's dozen objects (two blobs, the trees down the shard folders, the commit)
/// as loose files cost more than anything else the dispatcher does per request: a file created, a
/// link and an unlink each, and the files read back for the next request. They are written as one
/// pack per push instead. The local branch moves only once they are on disk, and a run's journal
/// entry is closed only then, so a crash loses nothing the journal does not hold.
struct Staging {
    /// Owned and freed by the repository's object database, which lives as long as `Sync::repo`.
    backend: <git2::Mempack<'static> as Binding>::Raw,
    /// The same objects as a pack, made as they come.
    pack: RefCell<PackWriter>,
    /// Packs finished but not on disk yet (their writing failed).
    pending: RefCell<Vec<Pack>>,
    /// The trees stored whole in that pack and large enough to be worth a delta, with their bytes;
    /// and for each tree in it, the whole one it is a delta of (itself when whole).
    whole: RefCell<HashMap<Oid, tree_edit::Parsed>>,
    delta_of: RefCell<HashMap<Oid, Oid>>,
    /// The newest staged commit: the local tip while something is staged.
    tip: Cell<Option<Oid>>,
    /// The parent of the oldest staged commit.
    base: Cell<Option<Oid>>,
    commits: Cell<usize>,
    bytes: Cell<usize>,
}

/// The head of libgit2's `git_odb_backend` (`git2/sys/odb_backend.h`), as far as `write`; the layout
/// is libgit2's public interface for object database backends, at version 1 since libgit2 0.20.
#[repr(C)]
struct BackendHead {
    version: std::ffi::c_uint,
    odb: *mut std::ffi::c_void,
    read: *const std::ffi::c_void,
    read_prefix: *const std::ffi::c_void,
    read_header: *const std::ffi::c_void,
    write: Option<
        unsafe extern "C" fn(
            <git2::Mempack<'static> as Binding>::Raw,
            <Oid as Binding>::Raw,
            *const std::ffi::c_void,
            usize,
            std::ffi::c_int,
        ) -> std::ffi::c_int,
    >,
}

impl Staging {
    fn attach(repo: &Repository) -> Result<Self, git2::Error> {
        let backend = repo.odb()?.add_new_mempack_backend(STAGE_PRIORITY)?.raw();
        // SAFETY: the mempack backend is a live `git_odb_backend`, which begins as `BackendHead`.
        let head = unsafe { &*backend.cast::<BackendHead>() };
        if head.version != 1 || head.write.is_none() {
            return Err(git2::Error::from_str(
                "libgit2's in-memory object store has an unknown layout",
            ));
        }
        Ok(Self {
            backend,
            pack: RefCell::new(PackWriter::default()),
            pending: RefCell::new(Vec::new()),
            whole: RefCell::new(HashMap::new()),
            delta_of: RefCell::new(HashMap::new()),
            tip: Cell::new(None),
            base: Cell::new(None),
            commits: Cell::new(0),
            bytes: Cell::new(0),
        })
    }

    /// Stores an object in memory and returns its id. It goes to the mempack backend directly:
    /// `git_odb_write` would first look for it in every backend and, as a new object is in none,
    /// list the pack folder again for each one (`git_odb__freshen`), a tenth of the main thread's
    /// time. An object that is also on disk is then in both places, which Git allows.
    fn put(&self, kind: ObjectType, bytes: &[u8]) -> Result<Oid, git2::Error> {
        let oid = Oid::hash_object(kind, bytes)?;
        self.insert(oid, kind, bytes)?;
        Ok(oid)
    }

    /// [`Staging::put`] for a tree made by [`tree_edit::apply`]. In the pack it is a delta of the
    /// whole tree its versions in this pack started from (for `requests/`, the backlog at the last
    /// write-out, less the requests taken since), so that reading any version applies one delta:
    /// libgit2 keeps every base it met on a chain of deltas, up to 16 MiB for each pack, and chains
    /// of versions took 13 MiB more of the heap on the 1000-request bench.
    fn put_tree(&self, tree: &tree_edit::NewTree) -> Result<(), git2::Error> {
        self.to_mempack(tree.oid, ObjectType::Tree, &tree.bytes)?;
        let mut pack = self.pack.borrow_mut();
        if pack.contains(tree.oid) {
            return Ok(());
        }
        let mut delta_of = self.delta_of.borrow_mut();
        let mut whole = self.whole.borrow_mut();
        let root = tree.base.and_then(|base| delta_of.get(&base).copied());
        if let Some((root, base)) = root.and_then(|root| Some((root, whole.get(&root)?))) {
            let pieces = tree_edit::diff(base, &tree.bytes)?;
            if pack.add_delta(tree.oid, root, base.bytes.len(), &pieces, tree.bytes.len()) {
                delta_of.insert(tree.oid, root);
                return Ok(());
            }
        }
        pack.add(tree.oid, ObjectType::Tree, &tree.bytes);
        if tree.bytes.len() >= MIN_DELTA_BASE {
            delta_of.insert(tree.oid, tree.oid);
            whole.insert(tree.oid, tree_edit::Parsed::new(tree.bytes.clone())?);
        }
        Ok(())
    }

    fn insert(&self, oid: Oid, kind: ObjectType, bytes: &[u8]) -> Result<(), git2::Error> {
        self.to_mempack(oid, kind, bytes)?;
        self.pack.borrow_mut().add(oid, kind, bytes);
        Ok(())
    }

    fn to_mempack(&self, oid: Oid, kind: ObjectType, bytes: &[u8]) -> Result<(), git2::Error> {
        // SAFETY: as in `attach`, which checked that `write` is set; the backend copies the bytes.
        let rc = unsafe {
            let write = (*self.backend.cast::<BackendHead>())
                .write
                .expect("checked in attach");
            write(
                self.backend,
                oid.raw(),
                bytes.as_ptr().cast(),
                bytes.len(),
                kind.raw(),
            )
        };
        if rc < 0 {
            return Err(git2::Error::last_error(rc));
        }
        self.bytes.set(self.bytes.get() + bytes.len());
        Ok(())
    }

    fn mempack(&self) -> git2::Mempack<'_> {
        // SAFETY: the backend belongs to the object database of `Sync::repo`, which owns it until the
        // repository is freed; the returned value borrows `self`, which `Sync` drops first.
        unsafe { git2::Mempack::from_raw(self.backend) }
    }

    fn staged(&self, parent: Oid, commit: Oid) {
        if self.tip.get().is_none() {
            self.base.set(Some(parent));
        }
        self.tip.set(Some(commit));
        self.commits.set(self.commits.get() + 1);
    }

    fn clear(&self) {
        self.tip.set(None);
        self.base.set(None);
        self.commits.set(0);
        self.bytes.set(0);
    }
}
