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
//!
//! The refs under `refs/dispatch/` are read from the remote's ref store, and written in one libgit2
//! transaction that locks each ref before reading it, so an update is applied only if the ref
//! still holds its `expect` while no other writer (git or libgit2) can move it.

use std::path::Path;
use std::time::{Duration, Instant};

use git2::{ErrorCode, Oid, Repository};

use super::Remote;
use crate::git::error::SyncError;
use crate::git::pack::PackFile;
use crate::git::refs::{Look, RefOutcome, RefUpdate};
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

/// The branch's head and every ref under `refs/dispatch/` of the bare repository `origin`.
pub(super) fn look(remote: &Remote<'_>, origin: &Repository) -> Look {
    let branch = remote.local_ref();
    let mut refs: Vec<(String, Oid)> = Vec::new();
    refs.extend(
        origin
            .refname_to_id(&branch)
            .ok()
            .map(|oid| (branch.clone(), oid)),
    );
    if let Ok(dispatch) = origin.references_glob("refs/dispatch/*") {
        for reference in dispatch.flatten() {
            let oid = reference.resolve().ok().and_then(|r| r.target());
            if let (Ok(name), Some(oid)) = (reference.name(), oid) {
                refs.push((name.to_owned(), oid));
            }
        }
    }
    Look::from_refs(
        &branch,
        refs.iter().map(|(name, oid)| (name.as_str(), *oid)),
    )
}

/// Applies each of `updates` to the bare repository `origin` whose ref holds its `expect`: the
/// notes copied first, then one transaction that locks every ref, reads it under the lock, and
/// moves or deletes those that match. A ref another writer holds locked is waited for a moment,
/// then refused.
pub(super) fn update_dispatch_refs(
    remote: &Remote<'_>,
    origin: &Repository,
    updates: &[RefUpdate],
) -> Result<Vec<RefOutcome>, SyncError> {
    for new in updates.iter().filter_map(|u| u.new) {
        copy_note(remote.repo, origin, new)?;
    }
    let mut outcomes = Vec::with_capacity(updates.len());
    let mut transaction = origin.transaction()?;
    let mut changed = Vec::new();
    for (i, update) in updates.iter().enumerate() {
        if let Err(e) = lock(&mut transaction, &update.name) {
            outcomes.push(RefOutcome::Refused(format!(
                "`{}`: {}",
                update.name,
                e.message()
            )));
            continue;
        }
        let current = origin.refname_to_id(&update.name).ok();
        if current != update.expect {
            outcomes.push(RefOutcome::Lost { current });
            continue;
        }
        match update.new {
            _ if update.new == current => {}
            Some(new) => transaction.set_target(&update.name, new, None, "git-dispatch")?,
            None => transaction.remove(&update.name)?,
        }
        outcomes.push(RefOutcome::Updated);
        changed.push(i);
    }
    if let Err(e) = transaction.commit() {
        for i in changed {
            outcomes[i] = RefOutcome::Refused(format!("`{}`: {}", updates[i].name, e.message()));
        }
    }
    Ok(outcomes)
}

/// How long a ref another writer holds locked is waited for, as `git` waits for a ref lock
/// (`core.filesRefLockTimeout`, 100 ms by default): a writer holds it for a moment only.
const LOCK_WAIT: Duration = Duration::from_millis(500);

/// Locks `name` in `transaction`, waiting up to [`LOCK_WAIT`] for another writer's lock to go.
fn lock(transaction: &mut git2::Transaction<'_>, name: &str) -> Result<(), git2::Error> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        match transaction.lock_ref(name) {
            Err(e) if e.code() == ErrorCode::Locked && start.elapsed() < LOCK_WAIT => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            locked => return locked,
        }
    }
}

/// Copies the note `oid` (a commit and its tree, which is empty) from `from` into `to`, as loose
/// objects, unless `to` holds it (or `from` does not). `to` must be a handle without an in-memory store, where a write
/// goes to the object files.
pub(super) fn copy_note(from: &Repository, to: &Repository, oid: Oid) -> Result<(), SyncError> {
    let (source, target) = (from.odb()?, to.odb()?);
    if target.exists(oid) {
        return Ok(());
    }
    let Ok(commit) = from.find_commit(oid) else {
        return Ok(()); // Gone from `from` too: the caller finds it missing.
    };
    let tree = commit.tree_id();
    for object in [tree, oid] {
        if !target.exists(object) {
            let read = source.read(object)?;
            target.write(read.kind(), read.data())?;
        }
    }
    Ok(())
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
