//! The local transport: a remote that is a bare repository on this host (a path or `file://`),
//! reached through libgit2 and written directly instead of through libgit2's local transport.
//!
//! In: a [`Remote`] whose URL is a local path, and for a push the packs written since the last one.
//! Out: the objects the other side lacks copied over (the written packs as they are, or what
//! [`copy_objects`] finds), then the ref moved. The invariant: the remote's branch moves only from
//! the tip last fetched, with a compare-and-swap under Git's ref lock, so a remote that moved
//! meanwhile is a rejection, as over the network; and a ref never names an object the repository
//! does not hold. Like libgit2's own local push, this runs no hooks: a remote that needs them is
//! served over `git daemon`, SSH or HTTPS.

use std::path::Path;

use git2::{ErrorCode, Oid, Repository};

use super::Remote;
use crate::git::error::SyncError;
use crate::git::pack::PackFile;
use crate::git::written::WrittenPacks;

/// The remote as a bare repository on this host, when it is one (a local path or `file://`).
pub(super) fn open(remote: &Remote<'_>) -> Option<Repository> {
    let path = crate::git::url::local_path(remote.url)?;
    Repository::open_bare(path).ok()
}

/// A fetch from a bare repository on this host that moved on from the tip last fetched: the
/// objects of the new commits ([`copy_objects`]), then the remote-tracking branch. `None` when
/// this does not apply (the first fetch, a rewritten remote): the caller fetches as usual.
pub(super) fn fetch(remote: &Remote<'_>) -> Option<Result<Oid, SyncError>> {
    let origin = open(remote)?;
    let known = remote.remote_tip()?;
    let tip = origin.refname_to_id(&remote.local_ref()).ok()?;
    if tip == known {
        return Some(Ok(tip));
    }
    origin.graph_descendant_of(tip, known).ok()?.then_some(())?;
    let copied = copy_objects(&origin, remote.repo, tip, known).and_then(|()| {
        crate::failpoint::hit("fetch");
        remote
            .repo
            .reference(&remote.remote_ref(), tip, true, "git-dispatch: fetch")?;
        Ok(tip)
    });
    Some(copied.map_err(SyncError::from))
}

/// A push to a bare repository on this host, written directly: the objects the unpushed commits
/// add, then the branch moved from the tip last fetched to the local tip with a compare-and-swap
/// under Git's ref lock (a remote that moved meanwhile is a rejection, as over the network). Like
/// libgit2's own local push, this runs no hooks: a remote that needs them is served over
/// `git daemon`, SSH or HTTPS. `Sync::push` then runs `git gc --auto` in the remote, as
/// `git receive-pack` would, so the packs of pushes get merged.
///
/// The objects are the packs `Sync::persist` wrote since the last push, copied as they are,
/// when they chain from the remote's tip to the local one: every object an outcome commit makes
/// goes into those packs, and the rest of what it names (the request's blob) the remote's tip
/// holds. Otherwise (after a restart, or a reconcile) [`copy_objects`] finds what the remote
/// lacks by walking the changed folders of each commit, which took 74 ms for a push of 170
/// outcomes on the bench, time in which no request was started.
pub(super) fn push(
    remote: &Remote<'_>,
    origin: &Repository,
    local: Oid,
    packs: &WrittenPacks,
) -> Result<(), SyncError> {
    let refname = remote.local_ref();
    let rejected = |reason: String| remote.rejected(refname.clone(), reason);
    let Some(base) = remote.remote_tip() else {
        return Err(rejected("no tip of the remote was fetched yet".to_owned()));
    };
    if origin.refname_to_id(&refname).ok() != Some(base) {
        return Err(rejected("fetch first: the remote moved".to_owned()));
    }
    // The packs are copied from the workdir, where a `git repack` that started before one of
    // them was written may have merged it away meanwhile: the walk does then (and reports what
    // it cannot do).
    let dir = origin.path().join("objects").join("pack");
    let own = remote.git_dir.join("objects").join("pack");
    let copied = packs.chains(base, local)
        && packs
            .iter()
            .all(|written| copy_pack(&written.pack, &own, &dir).is_ok());
    if copied {
        origin.odb()?.refresh()?;
    } else {
        copy_objects(remote.repo, origin, local, base)?;
    }
    let moved =
        origin.reference_matching(&refname, local, true, base, "git-dispatch: push outcomes");
    if let Err(e) = moved {
        return Err(match e.code() {
            ErrorCode::Modified | ErrorCode::Locked | ErrorCode::NotFound => {
                rejected(format!("the remote moved meanwhile: {}", e.message()))
            }
            _ => e.into(),
        });
    }
    crate::failpoint::hit("push");
    remote.pushed(local)
}

/// [`PackFile::copy`], or the fail point `copy-pack`: the pack is gone.
fn copy_pack(pack: &PackFile, from: &Path, to: &Path) -> std::io::Result<()> {
    match crate::failpoint::fails("copy-pack") {
        true => Err(std::io::ErrorKind::NotFound.into()),
        false => pack.copy(from, to),
    }
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
