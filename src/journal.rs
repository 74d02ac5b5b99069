//! The local journal: one small file per run in flight, written (and synced) before the handler
//! starts and removed once the outcome is committed locally and written out to the workdir (outcome
//! commits are made in memory and written out as one pack per push, see `Sync::persist`), plus the
//! log of each attempt as it is captured. After a crash it tells the next start what was running, and its partial log.
//!
//! A journal entry whose outcome is already in the local branch is simply removed; one whose request
//! is still in the inbox becomes an `abandoned` outcome, or a next attempt for an idempotent kind with
//! retries left. Nothing else reads it.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A run in flight.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Entry {
    pub key: String,
    /// `requests/<name>` and its blob: the exact request that was running.
    pub request_path: String,
    pub request_blob: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// RFC 3339.
    pub started_at: String,
    /// The dispatcher's process id, to tell a crashed run from one of this process.
    pub dispatcher_pid: u32,
}

pub(crate) struct Journal {
    dir: PathBuf,
}

impl Journal {
    pub(crate) fn open(workdir: &Path) -> io::Result<Self> {
        let dir = workdir.join("journal");
        fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    fn entry_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    /// Where the output of `attempt` is captured.
    pub(crate) fn log_path(&self, key: &str, attempt: u32) -> PathBuf {
        self.dir.join(format!("{key}.{attempt}.log"))
    }

    /// Writes `entry` durably (a new file, synced, renamed into place, the folder synced).
    pub(crate) fn begin(&self, entry: &Entry) -> io::Result<()> {
        let path = self.entry_path(&entry.key);
        let tmp = path.with_extension("json.tmp");
        let mut file = File::create(&tmp)?;
        file.write_all(&serde_json::to_vec_pretty(entry).map_err(io::Error::other)?)?;
        file.sync_all()?;
        fs::rename(&tmp, &path)?;
        File::open(&self.dir)?.sync_all()
    }

    /// Forgets `key`: its entry and the logs of all its attempts.
    pub(crate) fn finish(&self, key: &str) -> io::Result<()> {
        match fs::remove_file(self.entry_path(key)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        for attempt in 1.. {
            match fs::remove_file(self.log_path(key, attempt)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Every entry; an unreadable one is reported, not skipped silently.
    pub(crate) fn entries(&self) -> io::Result<Vec<Result<Entry, (PathBuf, String)>>> {
        let mut entries = Vec::new();
        for item in fs::read_dir(&self.dir)? {
            let path = item?.path();
            if path.extension().is_some_and(|e| e == "json") {
                entries.push(
                    fs::read(&path)
                        .map_err(|e| e.to_string())
                        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
                        .map_err(|e| (path.clone(), e)),
                );
            }
        }
        Ok(entries)
    }
}
