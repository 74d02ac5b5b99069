//! The dispatcher's scratch folder on the host (`$TMPDIR/git-dispatch-XXXXXX`): the handlers'
//! snapshots and each run's request copy and working directory. It is removed when the dispatcher
//! exits; the one of a dispatcher killed by SIGKILL is removed by the next dispatcher of the same
//! user that starts on the host.
//!
//! A dispatcher holds an flock on its folder's `owner.lock` for as long as it lives (the kernel drops
//! it when the process dies), so a folder whose lock can be taken belongs to no live dispatcher. The
//! lock file is locked before it takes its name, so no sweep ever finds a live folder's lock free.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// The start of a scratch folder's name.
const PREFIX: &str = "git-dispatch-";
/// The file a live dispatcher holds locked in its scratch folder.
const OWNER: &str = "owner.lock";

/// A scratch folder, removed on drop.
#[derive(Debug)]
pub(crate) struct Scratch {
    dir: tempfile::TempDir,
    /// Held for its flock: the folder is in use while it is.
    _owner: File,
}

impl Scratch {
    /// Creates a scratch folder in the temporary folder, with `mode`, marked as in use.
    pub(crate) fn create(mode: u32) -> io::Result<Self> {
        Self::create_in(&std::env::temp_dir(), mode)
    }

    fn create_in(tmp: &Path, mode: u32) -> io::Result<Self> {
        let dir = tempfile::Builder::new().prefix(PREFIX).tempdir_in(tmp)?;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(mode))?;
        let unnamed = dir.path().join(format!(".{OWNER}"));
        let owner = File::options()
            .write(true)
            .create_new(true)
            .open(&unnamed)?;
        owner.lock()?;
        fs::rename(&unnamed, dir.path().join(OWNER))?;
        Ok(Self { dir, _owner: owner })
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Removes the scratch folders in the temporary folder that this user's dispatchers left when
    /// they were killed; returns how many. Folders in use, of other users, or without an `owner.lock`
    /// (not a dispatcher's, or one so old it did not mark its folders) are left alone.
    pub(crate) fn sweep() -> usize {
        sweep_in(&std::env::temp_dir())
    }
}

fn sweep_in(tmp: &Path) -> usize {
    let Ok(entries) = fs::read_dir(tmp) else {
        return 0;
    };
    let me = nix::unistd::geteuid().as_raw();
    let mut removed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let ours = entry.file_name().to_string_lossy().starts_with(PREFIX)
            && fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir() && m.uid() == me);
        let Some(owner) = ours.then(|| File::open(path.join(OWNER)).ok()).flatten() else {
            continue;
        };
        // Free: its dispatcher is gone. Held until the folder is removed, so that a second sweep
        // at the same moment leaves it to this one.
        if owner.try_lock().is_ok() && fs::remove_dir_all(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_folder_goes_and_one_in_use_or_unmarked_stays() {
        let tmp = tempfile::tempdir().unwrap();
        let make = |name: &str, owner: bool| {
            let dir = tmp.path().join(name);
            fs::create_dir_all(dir.join("runs/x")).unwrap();
            fs::write(dir.join("runs/x/request.yml"), "kind: echo\n").unwrap();
            if owner {
                File::create(dir.join(OWNER)).unwrap();
            }
            dir
        };
        let free = make("git-dispatch-free", true);
        let used = make("git-dispatch-used", true);
        let unmarked = make("git-dispatch-unmarked", false);
        let other = make("other-free", true);
        let held = File::open(used.join(OWNER)).unwrap();
        held.lock().unwrap();

        assert_eq!(sweep_in(tmp.path()), 1);

        assert!(!free.exists());
        assert!(used.join("runs/x/request.yml").exists());
        assert!(unmarked.exists());
        assert!(other.exists());
    }

    #[test]
    fn a_live_scratch_folder_survives_a_sweep_and_goes_when_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let scratch = Scratch::create_in(tmp.path(), 0o711).unwrap();
        let path = scratch.path().to_owned();
        assert_eq!(sweep_in(tmp.path()), 0);
        assert!(path.join(OWNER).exists());
        drop(scratch);
        assert!(!path.exists());
    }
}
