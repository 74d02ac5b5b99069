//! The packs of outcomes written to the workdir since the last push, which a push to a local path
//! copies as they are instead of packing the same objects again.
//!
//! In: each pack [`crate::git::staging::Staging::write_out`] wrote, with the commits it holds (from
//! `base`, excluded, to `tip`). Out: the list a push takes ([`WrittenPacks::chains`] says whether it
//! holds everything from the remote's tip to the local one), merged first into one pack
//! ([`WrittenPacks::merge`]). The invariant: the list is in the order written, and anything that
//! breaks the chain (a reconcile, a pack written in two parts) clears it.

use std::path::Path;

use git2::{Oid, Repository};

use crate::git::pack::PackFile;

/// A pack `Sync::persist` wrote: the objects of the outcome commits from `base` (excluded) to
/// `tip`.
pub(crate) struct WrittenPack {
    pub base: Oid,
    pub tip: Oid,
    pub pack: PackFile,
}

/// The packs written since the last push, in order.
#[derive(Default)]
pub(crate) struct WrittenPacks(Vec<WrittenPack>);

impl WrittenPacks {
    pub(crate) fn push(&mut self, pack: WrittenPack) {
        self.0.push(pack);
    }

    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }

    /// The pack, when there is exactly one (as after [`WrittenPacks::merge`]).
    pub(crate) fn only(&self) -> Option<&WrittenPack> {
        match self.0.as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &WrittenPack> {
        self.0.iter()
    }

    /// Whether these packs hold every object the commits from `base` (excluded) to `tip` add: a
    /// chain of packs of outcome commits from one to the other (a reconcile, whose commits are not
    /// outcome commits made on the local tip, clears the list).
    pub(crate) fn chains(&self, base: Oid, tip: Oid) -> bool {
        let mut at = base;
        for pack in &self.0 {
            if pack.base != at {
                return false;
            }
            at = pack.tip;
        }
        at == tip
    }

    /// Merges these packs, whose files are in `pack_dir` of `repo`, into one (see
    /// [`PackFile::merge`]), which then replaces them there and here: each push adds one pack to the
    /// remote and to the workdir, not one per write-out (35 for a push of 500 outcomes on the
    /// benchmark, where the workdir's `git repack` took 0.2 s of a core every 24 and the remote's
    /// `git gc --auto` would rewrite its whole history every second push). Best effort: when the
    /// merged pack cannot be written, the small ones stay. Returns whether packs `repo` may have
    /// loaded were removed.
    pub(crate) fn merge(&mut self, repo: &Repository, pack_dir: &Path) -> bool {
        if self.0.len() < 2 {
            return false;
        }
        let parts: Vec<&PackFile> = self.0.iter().map(|w| &w.pack).collect();
        let Ok(Some(merged)) = PackFile::merge(&parts, pack_dir) else {
            return false;
        };
        if repo.odb().and_then(|o| o.refresh()).is_err() {
            return false;
        }
        for part in &self.0 {
            let _ = part.pack.remove_from(pack_dir);
        }
        let (base, tip) = (self.0[0].base, self.0[self.0.len() - 1].tip);
        self.0 = vec![WrittenPack {
            base,
            tip,
            pack: merged,
        }];
        true
    }
}
