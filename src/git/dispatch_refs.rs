//! The refs under `refs/dispatch/` on the remote (claims and heartbeats, see
//! [`crate::claim::protocol`]): looked at, written with a compare-and-swap, and read back.
//!
//! In: [`RefUpdate`]s (a ref, the oid it must still hold, the oid it is to hold) and the notes
//! [`Sync::note`] makes. Out: [`Look`] (the branch's head and every `refs/dispatch/` ref, in one
//! round trip) and one [`RefOutcome`] per update, from one push.
//!
//! The invariant: an update is applied only if the remote's ref still holds its `expect` at the
//! moment the remote moves it, so of several dispatchers racing for one ref exactly one wins.
//! libgit2 pushes only the updates whose advertised value is their `expect` and sends that value
//! as the old one, which `git receive-pack` checks under its ref lock; the `git` command line
//! pushes with `--force-with-lease=<ref>:<expect>`; a bare repository on this host is written in a
//! libgit2 transaction that locks each ref before reading it. Notes are written to the workdir's
//! object files, never only to the in-memory store, so that every transport can send them.

use std::path::Path;

use git2::{ErrorClass, ErrorCode, Oid, Reference, Repository};

use crate::claim::protocol::PREFIX;
use crate::git::error::SyncError;
use crate::git::refs::{Look, RefOutcome, RefUpdate};
use crate::git::sync::Sync;
use crate::git::transport::REMOTE;

impl Sync {
    /// The branch's head and every ref under refs/dispatch/ on the remote, in one look.
    pub(crate) fn look(&self) -> Result<Look, SyncError> {
        self.remote().look()
    }

    /// A commit with the empty tree and no parent carrying `message`, written where every
    /// transport can send it (not only the in-memory store): through a second handle on the
    /// workdir, whose object database has no in-memory store, so it goes to the object files.
    pub(crate) fn note(&self, message: &str) -> Result<Oid, SyncError> {
        let disk = Repository::open_bare(self.repo.path())?;
        let tree = disk.find_tree(disk.treebuilder(None)?.write()?)?;
        let signature = self.signature()?;
        Ok(disk.commit(None, &signature, &signature, message, &tree, &[])?)
    }

    /// One push applying every update whose remote ref is still its `expect`; one outcome per
    /// update, in their order. Err only when the remote could not be reached. `new` must be in the
    /// workdir's object files (a [`Sync::note`]). An update that is refused is looked at again
    /// (one more round trip, only then): a ref that moved meanwhile is [`RefOutcome::Lost`].
    pub(crate) fn update_dispatch_refs(
        &self,
        updates: &[RefUpdate],
    ) -> Result<Vec<RefOutcome>, SyncError> {
        let mut outcomes: Vec<Option<RefOutcome>> = updates
            .iter()
            .enumerate()
            .map(|(i, update)| self.refusal(update, &updates[..i]).map(RefOutcome::Refused))
            .collect();
        let sent: Vec<RefUpdate> = updates
            .iter()
            .zip(&outcomes)
            .filter(|(_, outcome)| outcome.is_none())
            .map(|(update, _)| update.clone())
            .collect();
        if sent.is_empty() {
            return Ok(outcomes.into_iter().flatten().collect());
        }
        let results = self.remote().update_dispatch_refs(&sent);
        // Sent or not, the notes are not needed here again (a retry writes new ones): they are
        // removed later, with a fresh repository handle (see `Sync::forget_notes`).
        self.spent_notes
            .borrow_mut()
            .extend(sent.iter().filter_map(|u| u.new));
        let mut results = results?;
        if crate::failpoint::fails("claims-unanswered") {
            return Err(SyncError::Unreachable {
                url: self.url.clone(),
                message: "fail point `claims-unanswered`: the report of the updates was lost"
                    .to_owned(),
            });
        }
        if results.iter().any(|r| matches!(r, RefOutcome::Refused(_))) {
            // A refusal of a ref that no longer holds its `expect` is a race lost at the remote's
            // lock (or a lease that was stale): say who won. Without a look, it stays a refusal.
            if let Ok(look) = self.look() {
                for (result, update) in results.iter_mut().zip(&sent) {
                    let current = look.dispatch.get(&update.name).copied();
                    if matches!(result, RefOutcome::Refused(_)) && current != update.expect {
                        *result = RefOutcome::Lost { current };
                    }
                }
            }
        }
        let mut results = results.into_iter();
        for outcome in outcomes.iter_mut().filter(|o| o.is_none()) {
            *outcome = Some(results.next().unwrap_or_else(|| {
                RefOutcome::Refused("the transport did not report this update".to_owned())
            }));
        }
        Ok(outcomes.into_iter().flatten().collect())
    }

    /// The message of commit `oid`, which the remote's ref `name` held; fetched when not here.
    /// A ref that no longer names `oid` on the remote (and whose commit is not here) is an error
    /// of [`ErrorCode::NotFound`]; a commit larger than [`MAX_NOTE`] (no dispatcher writes one) is
    /// an error of [`ErrorCode::Invalid`], and is not read.
    pub(crate) fn note_message(&self, name: &str, oid: Oid) -> Result<String, SyncError> {
        let mut messages = self.note_messages(&[(name, oid)])?;
        messages.pop().expect("one message per note asked for")
    }

    /// [`Sync::note_message`] of each of `notes`, with one round trip for all those not here. Err
    /// only when the remote could not be reached.
    pub(crate) fn note_messages(
        &self,
        notes: &[(&str, Oid)],
    ) -> Result<Vec<Result<String, SyncError>>, SyncError> {
        let missing = missing(&self.repo, notes);
        self.remote().fetch_notes(&missing)?;
        // Read once (the caller keeps what it needs): removed later with the spent notes.
        self.spent_notes
            .borrow_mut()
            .extend(missing.iter().map(|(_, oid)| *oid));
        Ok(messages(&self.repo, notes))
    }

    /// [`Sync::note_messages`] for records read again and again (the heartbeats and claims the
    /// page shows): fetched into a repository of their own beside the workdir's clone,
    /// `records.git`, made afresh once it holds more than [`MAX_RECORD_FILES`] packs or folders
    /// of loose objects. A fetch over a network writes a pack each time, which the clone would
    /// keep until its next repack.
    pub(crate) fn read_records(
        &self,
        notes: &[(&str, Oid)],
    ) -> Result<Vec<Result<String, SyncError>>, SyncError> {
        let path = self.beside("records.git");
        let repo = records_repo(&path, &self.url)?;
        let missing = missing(&repo, notes);
        self.remote_from(&repo, &path).fetch_notes(&missing)?;
        Ok(messages(&repo, notes))
    }

    /// Why `update` is not sent at all (`earlier` are the updates before it in the same call).
    fn refusal(&self, update: &RefUpdate, earlier: &[RefUpdate]) -> Option<String> {
        let name = &update.name;
        if !name.starts_with(PREFIX) || !Reference::is_valid_name(name) {
            return Some(format!("`{name}` is not a valid ref under `{PREFIX}`"));
        }
        if earlier.iter().any(|e| e.name == *name) {
            return Some(format!("`{name}` is updated twice in one call"));
        }
        match update.new {
            Some(new) if self.repo.find_commit(new).is_err() => {
                Some(format!("commit {new} for `{name}` is not in the workdir"))
            }
            _ => None,
        }
    }
}

/// The most bytes a note's commit may have to be read: a claim of [`MAX_BATCH`] requests with long
/// ids and paths is well below it. A larger one (pushed by hand) is not read at all.
///
/// [`MAX_BATCH`]: crate::claim::ledger::MAX_BATCH
pub(crate) const MAX_NOTE: usize = 1 << 20;

/// The message of commit `oid` in `repo`, if it holds it (an object of another type reads as an
/// empty message); `Err(size)` when the commit is larger than [`MAX_NOTE`], told by the object's
/// header before anything of it is read.
pub(crate) fn message_of(repo: &Repository, oid: Oid) -> Option<Result<String, usize>> {
    let (size, kind) = repo.odb().ok()?.read_header(oid).ok()?;
    if kind != git2::ObjectType::Commit {
        // Held, but no record: read as one that says nothing.
        return Some(Ok(String::new()));
    }
    if size > MAX_NOTE {
        return Some(Err(size));
    }
    let commit = repo.find_commit(oid).ok()?;
    Some(Ok(
        String::from_utf8_lossy(commit.message_raw_bytes()).into_owned()
    ))
}

/// The most packs (and their indexes) or folders of loose objects `records.git` may hold before
/// it is made afresh.
const MAX_RECORD_FILES: usize = 64;

/// `records.git` at `path`, fetching from `url`; made afresh when it grew past
/// [`MAX_RECORD_FILES`].
fn records_repo(path: &Path, url: &str) -> Result<Repository, SyncError> {
    let count = |dir: &Path| std::fs::read_dir(dir).map_or(0, Iterator::count);
    let objects = path.join("objects");
    if count(&objects) > MAX_RECORD_FILES || count(&objects.join("pack")) > MAX_RECORD_FILES {
        let _ = std::fs::remove_dir_all(path);
    }
    if path.join("HEAD").exists() {
        return Ok(Repository::open_bare(path)?);
    }
    let mut options = git2::RepositoryInitOptions::new();
    options.bare(true).external_template(false);
    let repo = Repository::init_opts(path, &options)?;
    repo.remote(REMOTE, url)?;
    Ok(repo)
}

/// Those of `notes` whose commit `repo` does not hold.
fn missing<'a>(repo: &Repository, notes: &[(&'a str, Oid)]) -> Vec<(&'a str, Oid)> {
    notes
        .iter()
        .filter(|(_, oid)| message_of(repo, *oid).is_none())
        .copied()
        .collect()
}

/// The message of each of `notes` in `repo`: [`ErrorCode::NotFound`] where it does not hold the
/// commit (or holds something else under that oid), [`ErrorCode::Invalid`] where it is too large.
fn messages(repo: &Repository, notes: &[(&str, Oid)]) -> Vec<Result<String, SyncError>> {
    notes
        .iter()
        .map(|(name, oid)| match message_of(repo, *oid) {
            Some(message) => Ok(message.map_err(|size| too_large(name, size))?),
            None => Err(SyncError::Git(git2::Error::new(
                ErrorCode::NotFound,
                ErrorClass::Reference,
                format!("`{name}` on the remote no longer names commit {oid}"),
            ))),
        })
        .collect()
}

fn too_large(name: &str, size: usize) -> git2::Error {
    git2::Error::new(
        ErrorCode::Invalid,
        ErrorClass::Object,
        format!(
            "`{name}` names a commit of {size} bytes, more than the {MAX_NOTE} a record may have; \
             it is not read"
        ),
    )
}
