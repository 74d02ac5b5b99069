//! The local journal: one small file per run in flight, written (and synced) before the handler
//! starts and removed once the outcome is committed locally and written out to the workdir (outcome
//! commits are made in memory and written out as one pack per push, see `Sync::persist`), plus the
//! log of each attempt as it is captured. After a crash it tells the next start what was running, and its partial log.
//!
//! Once a run's outcome is committed in memory, a second file says what was committed (the message,
//! the status file; the logs are the attempts' log files), so that a crash before the outcomes are
//! written out loses no outcome: the next start commits it again.
//!
//! A journal entry whose outcome is already in the local branch is simply removed; one whose request
//! is still in the inbox is committed again from that second file when there is one, and otherwise
//! becomes an `abandoned` outcome, or a next attempt for an idempotent kind with retries left.
//! Nothing else reads it.

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

/// An outcome committed in memory and not yet written out to the workdir: what it takes to commit it
/// again. The log of attempt N is the journal's log file N.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Recorded {
    pub kind: Option<String>,
    pub state: String,
    pub message: String,
    pub status_json: String,
    /// Whether the request goes to `processed/` (it is a file, not a symlink or a folder).
    pub request_is_file: bool,
    /// How many attempts' logs the outcome holds.
    pub logs: u32,
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

    fn recorded_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.outcome"))
    }

    /// Notes that `key`'s outcome is committed in memory, with `logs` (one per attempt) as its logs:
    /// a log file that differs from what the outcome holds (a dispatcher's error text, a partial log
    /// with its note) is written again first. Not synced: a marker lost with a power cut leaves the
    /// run to be recorded `abandoned`, as it would have been without it.
    pub(crate) fn recorded(
        &self,
        key: &str,
        recorded: &Recorded,
        logs: &[&[u8]],
    ) -> io::Result<()> {
        for (i, bytes) in logs.iter().enumerate() {
            let path = self.log_path(key, i as u32 + 1);
            if fs::read(&path).ok().as_deref() != Some(*bytes) {
                fs::write(&path, bytes)?;
            }
        }
        fs::write(
            self.recorded_path(key),
            serde_json::to_vec(recorded).map_err(io::Error::other)?,
        )
    }

    /// What `key`'s outcome was when it was committed in memory, if it was, with its logs.
    pub(crate) fn recorded_outcome(&self, key: &str) -> Option<(Recorded, Vec<Vec<u8>>)> {
        let recorded: Recorded =
            serde_json::from_slice(&fs::read(self.recorded_path(key)).ok()?).ok()?;
        let logs = (1..=recorded.logs)
            .map(|attempt| fs::read(self.log_path(key, attempt)))
            .collect::<io::Result<Vec<_>>>()
            .ok()?;
        Some((recorded, logs))
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

    /// Forgets `key`: its entry, its outcome and the logs of all its attempts.
    pub(crate) fn finish(&self, key: &str) -> io::Result<()> {
        for path in [self.entry_path(key), self.recorded_path(key)] {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
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
