//! The staging of outcome commits: where the objects of the commits the dispatcher makes go until
//! they are written out to the workdir as one pack.
//!
//! In: blobs, trees (from [`tree_edit::apply`]) and commits, each stored both in libgit2's
//! in-memory object store ([`MemoryStore`], where the repository reads them back) and in the pack
//! being made ([`PackWriter`]). Out: at [`Staging::write_out`], that pack in `objects/pack` and an
//! empty store.
//!
//! Why: writing each outcome's dozen objects (two blobs, the trees down the shard folders, the
//! commit) as loose files cost more than anything else the dispatcher does per request: a file
//! created, a link and an unlink each, and the files read back for the next request. They are
//! written as one pack per push instead.
//!
//! The invariant: the local branch moves only once they are on disk, and a run's journal entry is
//! closed only then, so a crash loses nothing the journal does not hold. A pack that could not be
//! written stays pending, its objects in memory, and is written first the next time.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::Path;

use git2::{ObjectType, Oid, Repository};

use crate::git::mempack::MemoryStore;
use crate::git::pack::Pack;
use crate::git::pack_writer::PackWriter;
use crate::git::tree_edit;
use crate::git::written::WrittenPack;

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

/// The in-memory object store where outcome commits are made, and what was committed there since it
/// was last written out.
pub(crate) struct Staging {
    /// The objects themselves, where the repository finds them.
    store: MemoryStore,
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

impl Staging {
    /// An empty staging area on `repo`'s object database (see [`MemoryStore`] for how long it may be
    /// used).
    pub(crate) fn attach(repo: &Repository) -> Result<Self, git2::Error> {
        Ok(Self {
            store: MemoryStore::attach(repo, STAGE_PRIORITY)?,
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

    /// The newest staged commit, if anything is staged.
    pub(crate) fn tip(&self) -> Option<Oid> {
        self.tip.get()
    }

    /// How many commits are staged.
    pub(crate) fn commits(&self) -> usize {
        self.commits.get()
    }

    /// Whether anything is held in memory: staged commits, or packs not written yet.
    pub(crate) fn is_busy(&self) -> bool {
        self.tip.get().is_some() || !self.pending.borrow().is_empty()
    }

    /// Whether what is staged is many or large enough to be written out now.
    pub(crate) fn is_full(&self) -> bool {
        self.commits.get() >= STAGE_MAX_COMMITS || self.bytes.get() >= STAGE_MAX_BYTES
    }

    /// Stores an object in memory and returns its id. It goes to the mempack backend directly (see
    /// [`crate::git::mempack`] for why). An object that is also on disk is then in both places, which
    /// Git allows.
    pub(crate) fn put(&self, kind: ObjectType, bytes: &[u8]) -> Result<Oid, git2::Error> {
        let oid = Oid::hash_object(kind, bytes)?;
        self.insert(oid, kind, bytes)?;
        Ok(oid)
    }

    /// [`Staging::put`] for a tree made by [`tree_edit::apply`]. In the pack it is a delta of the
    /// whole tree its versions in this pack started from (for `requests/`, the backlog at the last
    /// write-out, less the requests taken since), so that reading any version applies one delta:
    /// libgit2 keeps every base it met on a chain of deltas, up to 16 MiB for each pack, and chains
    /// of versions took 13 MiB more of the heap on the 1000-request bench.
    pub(crate) fn put_tree(&self, tree: &tree_edit::NewTree) -> Result<(), git2::Error> {
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
        self.store.write(oid, kind, bytes)?;
        self.bytes.set(self.bytes.get() + bytes.len());
        Ok(())
    }

    /// Notes that `commit`, made on `parent`, is the new tip.
    pub(crate) fn staged(&self, parent: Oid, commit: Oid) {
        if self.tip.get().is_none() {
            self.base.set(Some(parent));
        }
        self.tip.set(Some(commit));
        self.commits.set(self.commits.get() + 1);
    }

    /// Lets the objects of packs finished so far be added to the next one again (see
    /// [`PackWriter::forget_finished`]).
    pub(crate) fn forget_finished(&self) {
        self.pack.borrow_mut().forget_finished();
    }

    /// One pack of every object in memory, written into `pack_dir` (`repo`'s `objects/pack`) as they were made
    /// (see [`crate::git::pack_writer`]), then an empty store. Returns that pack when it holds every
    /// commit since the last write-out, which a push can then copy.
    ///
    /// A pack that could not be written (a full disk) stays pending, with the objects in memory, and
    /// is written first the next time: the branch never moves to a commit that is not on disk.
    pub(crate) fn write_out(
        &self,
        repo: &Repository,
        dir: &Path,
    ) -> Result<Option<WrittenPack>, git2::Error> {
        let mut pending = self.pending.borrow_mut();
        {
            let mut writer = self.pack.borrow_mut();
            self.whole.borrow_mut().clear();
            self.delta_of.borrow_mut().clear();
            if !writer.is_empty() {
                pending.push(writer.finish());
            }
        }
        for pack in pending.iter() {
            let written = match crate::failpoint::fails("write-pack") {
                true => Err(std::io::Error::other("fail point `write-pack`")),
                false => pack.write_to(dir),
            };
            written.map_err(|e| {
                git2::Error::from_str(&format!(
                    "could not write a pack in `{}`: {e}",
                    dir.display()
                ))
            })?;
        }
        if !pending.is_empty() {
            repo.odb()?.refresh()?;
        }
        self.store.reset()?;
        let packs = std::mem::take(&mut *pending);
        Ok(match (self.base.get(), self.tip.get()) {
            // One pack of all the commits since the last write-out: a push can copy it.
            (Some(base), Some(tip)) if packs.len() == 1 => {
                let pack = packs.into_iter().next().expect("one pack").into_file();
                Some(WrittenPack { base, tip, pack })
            }
            _ => None,
        })
    }

    /// Forgets the staged commits once the branch points at them (or elsewhere).
    pub(crate) fn clear(&self) {
        self.tip.set(None);
        self.base.set(None);
        self.commits.set(0);
        self.bytes.set(0);
    }
}
