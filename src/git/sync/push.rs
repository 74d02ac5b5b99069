//! Pushing the branch: at once on the loop's thread ([`Sync::push`]), or as a [`PushJob`] for a
//! thread of its own over a network, from a ref of its own while the local branch moves on.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use git2::{Oid, Repository};

use super::{Sync, SyncError};
use crate::git::transport::{self, Remote};

impl Sync {
    /// One push of the local branch (outcomes in memory written out first), then housekeeping where
    /// it wrote objects (see [`Housekeeping::after_push`]).
    pub(crate) fn push(&self) -> Result<(), SyncError> {
        let Some(local) = self.prepare_push()? else {
            return Ok(());
        };
        let packs = self.written.take();
        let local_remote = self.remote().push(local, packs)?;
        self.housekeeping.after_push(local_remote);
        Ok(())
    }

    /// Whether [`Sync::begin_push`] applies: the remote is reached over a network, where a push
    /// of a few hundred outcomes takes 100–300 ms that the loop need not wait for.
    pub(crate) fn pushes_in_background(&self) -> bool {
        self.remote().is_network()
    }

    /// A push of the branch as it is now, to run on a thread of its own while the local branch
    /// moves on: the tip is held in [`PUSH_REF`], which the job pushes. `None` when there is no
    /// branch yet. [`Sync::end_push`] follows, on this thread, once the job is done.
    pub(crate) fn begin_push(&self) -> Result<Option<PushJob>, SyncError> {
        let Some(local) = self.prepare_push()? else {
            return Ok(None);
        };
        // Over `git://`, the pack written since the last push is sent as it is (opened here: a
        // repack after the push may remove it); elsewhere the transport packs the objects again.
        let pack = self.remote().chained_pack(&self.written.take(), local);
        self.repo
            .reference(PUSH_REF, local, true, "git-dispatch: to push")?;
        Ok(Some(PushJob {
            path: self.path.clone(),
            url: self.url.clone(),
            access: self.access.clone(),
            branch: self.branch.clone(),
            local,
            pack,
        }))
    }

    /// After a [`PushJob`] ended, whichever way.
    pub(crate) fn end_push(&self) {
        self.housekeeping.after_push(None);
    }

    /// Writes out what is in memory, merges the packs written since the last push, and returns
    /// the tip to push.
    fn prepare_push(&self) -> Result<Option<Oid>, SyncError> {
        self.persist()?;
        if self
            .written
            .borrow_mut()
            .merge(&self.repo, &self.pack_dir())
        {
            self.stale.store(true, Ordering::Relaxed);
        }
        self.staging.forget_finished();
        Ok(self.tip())
    }
}

/// The local ref a push on a thread of its own pushes from: the local branch moves on meanwhile.
const PUSH_REF: &str = "refs/git-dispatch/push";

/// A push of the branch, owned, for a thread of its own (see [`Sync::begin_push`]).
pub(crate) struct PushJob {
    path: PathBuf,
    url: String,
    access: transport::Access,
    branch: String,
    local: Oid,
    /// The pack to send as it is, and the remote's tip it chains from (see
    /// [`Remote::chained_pack`]).
    pack: Option<(Oid, std::fs::File)>,
}

impl PushJob {
    /// Pushes over a repository handle of its own; on success the remote-tracking branch is at
    /// what was pushed.
    pub(crate) fn run(self) -> Result<(), SyncError> {
        let repo = Repository::open_bare(&self.path)?;
        let remote = Remote::new(&repo, &self.path, &self.url, &self.access, &self.branch);
        if let Some((base, pack)) = self.pack
            && remote.push_pack(base, self.local, pack)?
        {
            return Ok(());
        }
        remote.push_from(PUSH_REF, self.local)
    }
}
