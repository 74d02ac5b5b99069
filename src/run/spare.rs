//! Files reused instead of made anew: each request's journal entry and logs are emptied when the
//! request is done and moved back into use for a later one. Making and freeing inodes for them was
//! the largest single cost of a drain on this project's benchmark machine: on a file system without
//! a journal (ext4 there), every new inode is searched for past the recently freed ones
//! (`recently_deleted`), which took a quarter of the dispatcher's CPU time with four inodes made
//! and freed per request, and 4 % once the journal's two were reused; moving files by `rename`
//! allocates nothing. (Reusing the request copy too, the third, measured no faster.)
//!
//! Logs are emptied to nothing. Journal entries are blanked instead: made a fixed number of spaces
//! long, so that the next entry overwrites them in place and syncing it writes the data alone (69
//! against 152 µs a sync on the benchmark machine, where the size and the blocks changed).
//!
//! On an ext4 with a journal (a 2 GiB file-backed one, default `mkfs.ext4` options) both still pay:
//! alternating drains of 1000 `echo` requests (`run --until-empty --jobs 1`, a fresh world of the
//! benchmark's `mkworld.sh` each, the workdir on that file system, `sync` before each), with and
//! without the mechanism in one build, four pairs each on a shared host (load 5-7 on 2 cores).
//! With every spare against none: 0.91, 0.71, 0.92, 0.84 of the time (median 0.88). With the blank
//! entry spares against new entry files (log spares kept in both): 0.62, 0.51, 0.74, 0.98 (median
//! 0.68; likely as a new entry's first data sync allocates its blocks, a metadata change the
//! journal must commit). The two sets ran minutes apart: compare within a pair only.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Emptied files kept in a folder of their own.
pub(crate) struct Spares {
    dir: PathBuf,
    /// The spare files, and the number the next one is named by.
    free: Mutex<(Vec<PathBuf>, u64)>,
    /// How long a kept file is made, of spaces; none: emptied.
    blank: Option<u64>,
}

/// More spare files than this are removed: more than the runs a write-out finishes at once.
const MAX_SPARES: usize = 1024;

impl Spares {
    /// Spares emptied to nothing.
    pub(crate) fn open(dir: PathBuf) -> io::Result<Self> {
        Self::open_with(dir, None)
    }

    /// Spares made `len` spaces long.
    pub(crate) fn open_blank(dir: PathBuf, len: u64) -> io::Result<Self> {
        Self::open_with(dir, Some(len))
    }

    fn open_with(dir: PathBuf, blank: Option<u64>) -> io::Result<Self> {
        fs::create_dir_all(&dir)?;
        let mut files = Vec::new();
        let mut next = 0;
        for item in fs::read_dir(&dir)? {
            let path = item?.path();
            let number = path
                .file_name()
                .and_then(|n| n.to_str()?.parse::<u64>().ok());
            match number {
                Some(n) if files.len() < MAX_SPARES => {
                    next = next.max(n + 1);
                    files.push(path);
                }
                _ => fs::remove_file(&path)?,
            }
        }
        Ok(Self {
            dir,
            free: Mutex::new((files, next)),
            blank,
        })
    }

    /// Moves a spare file to `path`; `false` when there is none (or it could not be moved).
    pub(crate) fn take(&self, path: &Path) -> bool {
        let spare = self
            .free
            .lock()
            .expect("no thread panics holding it")
            .0
            .pop();
        spare.is_some_and(|spare| fs::rename(spare, path).is_ok())
    }

    /// Empties (or blanks) the file at `path` and keeps it as a spare, or removes it when there are
    /// enough.
    pub(crate) fn keep(&self, path: &Path) -> io::Result<()> {
        let mut free = self.free.lock().expect("no thread panics holding it");
        if free.0.len() >= MAX_SPARES {
            return fs::remove_file(path);
        }
        let file = fs::OpenOptions::new().write(true).open(path)?;
        match self.blank {
            None => file.set_len(0)?,
            Some(len) => {
                file.set_len(len)?;
                let spaces = vec![b' '; usize::try_from(len).expect("a small length")];
                std::os::unix::fs::FileExt::write_all_at(&file, &spaces, 0)?;
            }
        }
        let spare = self.dir.join(free.1.to_string());
        fs::rename(path, &spare)?;
        free.1 += 1;
        free.0.push(spare);
        Ok(())
    }
}
