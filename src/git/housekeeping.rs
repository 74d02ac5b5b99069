//! Housekeeping after a push: `git repack --geometric=2` and `git gc --auto` in the workdir, and
//! `git gc --auto` in a remote on a local path, in the background, one round at a time.
//!
//! In: a push that wrote objects (with the local remote it wrote into, if any). Out: fewer packs
//! and loose objects, and the `stale` flag set when packs the workdir's repository may have loaded
//! were removed (so `Sync` reopens it). The invariant: best effort as in receive-pack (a failure
//! leaves more packs, no more), never two rounds at once, and none outlives the dispatcher.

use std::cell::RefCell;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

/// More packs than this in the workdir are merged (see [`Housekeeping::after_push`]). Each merge
/// costs about 0.4 s over 100,000 recorded outcomes however small the packs (`pack-objects
/// --stdin-packs` walks from their commits): 7.8 ms per request in drains of 100 there with a
/// limit of 8 packs, 5.3 ms with 24 (eight alternating drains each), while an object is looked up
/// in a few more packs.
const MAX_PACKS: usize = 24;

/// The housekeeping of one workdir.
pub(crate) struct Housekeeping {
    /// The workdir's bare clone.
    workdir: PathBuf,
    /// Set when packs were removed from the workdir (shared with `Sync`, which reopens the
    /// repository then).
    stale: Arc<AtomicBool>,
    /// The thread running the current round, if one was started.
    gc: RefCell<Option<JoinHandle<()>>>,
    /// A round skipped while the last one ran (with the remote it would have tended): run when the
    /// dispatcher stops, so its last push is tended too.
    skipped: RefCell<Option<Option<PathBuf>>>,
}

impl Housekeeping {
    pub(crate) fn new(workdir: PathBuf, stale: Arc<AtomicBool>) -> Self {
        Self {
            workdir,
            stale,
            gc: RefCell::new(None),
            skipped: RefCell::new(None),
        }
    }

    /// Housekeeping after a push, in the background, one round at a time (skipped while the last
    /// one runs, and then run once more when the dispatcher stops), and best effort as in
    /// receive-pack (a failure leaves more packs, no more). In the workdir, `git repack -d
    /// --geometric=2` once it holds more than [`MAX_PACKS`] packs: it gains one at every push (the
    /// outcomes written out) and every fetch, libgit2 looks an object up in each pack in turn, and
    /// a geometric repack merges only the small ones, so it writes what they hold, not the history
    /// (gc's own limit, 50 packs, would rewrite the history into one pack); then `git gc --auto`
    /// for loose objects (the `git` transport's fetches leave some). In a local-path remote, which
    /// no receive-pack tends, `git gc --auto` as receive-pack runs it. Each command runs in the
    /// foreground of a thread that waits for it: a detached gc would be re-parented to the
    /// dispatcher (a child subreaper) and never reaped.
    pub(crate) fn after_push(&self, local_remote: Option<PathBuf>) {
        let mut slot = self.gc.borrow_mut();
        if slot.as_ref().is_some_and(|gc| !gc.is_finished()) {
            self.skipped.replace(Some(local_remote));
            return;
        }
        self.skipped.replace(None);
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
        let workdir = self.workdir.clone();
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

    /// Waits for the round running, then runs the one skipped meanwhile, if any, and waits for it.
    pub(crate) fn finish(&mut self) {
        if let Some(gc) = self.gc.get_mut().take() {
            let _ = gc.join();
        }
        if let Some(local_remote) = self.skipped.get_mut().take() {
            self.after_push(local_remote);
            if let Some(gc) = self.gc.get_mut().take() {
                let _ = gc.join();
            }
        }
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
