//! The local journal: one small file per run in flight, written (and synced) before the handler
//! starts and removed once the outcome is committed locally and written out to the workdir (outcome
//! commits are made in memory and written out as one pack per push, see `Sync::persist`), plus the
//! log of each attempt as it is captured. After a crash it tells the next start what was running,
//! and its partial log.
//!
//! A first attempt's entry is written and synced while its run waits for its `--jobs` slot
//! ([`Journal::prepare`]); once the run has the slot, a start mark with the time is written into
//! the room left for it at the entry's end, without a sync ([`Journal::begin`]), and the handler
//! starts. A dispatcher that died leaves its page cache behind: within the same boot of the kernel
//! (its `boot_id`, kept in the entry) a prepared entry without a mark is of a run that never
//! started, and goes back to the spares at the next start. After a restart of the machine the mark
//! may have been lost, so a prepared entry of another boot counts as a run that may have started.
//! The handler thus still starts only after an entry that can say so is on disk, and the sync is
//! no longer between one handler's end and the next one's start.
//!
//! Once a run's outcome is committed in memory, a note appended to its entry says what was
//! committed (the message, the status file; the logs are the attempts' log files), so that a crash
//! before the outcomes are written out loses no outcome: the next start commits it again.
//!
//! A journal entry whose outcome is already in the local branch is simply removed; one whose request
//! is still in the inbox is committed again from its note when there is one, and otherwise becomes
//! an `abandoned` outcome, or a next attempt for an idempotent kind with retries left. Nothing else
//! reads it.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::run::spare::Spares;

/// A first entry written and synced before its run may start (see [`Journal::prepare`]).
pub(crate) struct Prepared {
    path: PathBuf,
    file: File,
    /// Where the start mark goes: the last [`MARK_ROOM`] bytes of the file as prepared.
    mark_at: u64,
}

/// The start mark ([`Journal::begin`]): a JSON document of its own after the entry's.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Mark {
    started_at: String,
}

/// The room left at the end of a prepared entry for its start mark.
const MARK_ROOM: usize = 64;

/// A run in flight.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Entry {
    pub key: String,
    /// `requests/<name>` and its blob: the exact request that was running.
    pub request_path: String,
    pub request_blob: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// RFC 3339; `None` in a prepared entry without its start mark.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// The kernel's boot id when the entry was prepared (see the module's doc).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// The dispatcher's process id, to tell a crashed run from one of this process.
    pub dispatcher_pid: u32,
    /// The outcome, once it is committed in memory (the entry's second document).
    #[serde(skip)]
    pub outcome: Option<Recorded>,
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
    /// The follow-ups the outcome commit adds to `requests/`: (id, YAML).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub follow_ups: Vec<(String, String)>,
}

impl Entry {
    /// What interrupted its attempt, for the outcome of a run a stopped dispatcher left.
    pub(crate) fn interrupted(&self) -> String {
        match &self.started_at {
            Some(at) => format!(
                "the dispatcher stopped while attempt {} ran (started {at})",
                self.attempt
            ),
            None => format!(
                "the machine restarted while attempt {} was starting or running (whether its \
                 handler started is not known: the start mark, written without a sync, may be lost)",
                self.attempt
            ),
        }
    }

    /// Whether its handler may have started, as seen during the kernel's boot `boot_id`.
    fn may_have_started(&self, boot_id: &str) -> bool {
        self.started_at.is_some() || self.boot_id.as_deref() != Some(boot_id)
    }
}

pub(crate) struct Journal {
    dir: PathBuf,
    /// Spare log files, and spare entry files (blank, [`ENTRY_BLOCK`] bytes).
    spares: Spares,
    entry_spares: Spares,
    /// The kernel's boot id.
    boot_id: String,
}

/// The length of a spare entry file: an entry no longer than this overwrites one in place.
const ENTRY_BLOCK: u64 = 1024;

impl Journal {
    /// Opens the journal of `workdir`. Entries of runs that never started (blank reservations, and
    /// prepared entries of this boot without a start mark: their dispatcher stopped before) go,
    /// their files back to the spares.
    pub(crate) fn open(workdir: &Path) -> io::Result<Self> {
        Self::open_at_boot(workdir, crate::failpoint::boot_id())
    }

    fn open_at_boot(workdir: &Path, boot_id: String) -> io::Result<Self> {
        let dir = workdir.join("journal");
        fs::create_dir_all(&dir)?;
        let spares = Spares::open(dir.join("spare"))?;
        let entry_spares = Spares::open_blank(dir.join("spare-entries"), ENTRY_BLOCK)?;
        let journal = Self {
            dir,
            spares,
            entry_spares,
            boot_id,
        };
        for path in journal.entry_files()? {
            let bytes = fs::read(&path)?;
            let unstarted = is_blank(&bytes)
                || parse_entry(&bytes).is_ok_and(|e| !e.may_have_started(&journal.boot_id));
            if unstarted {
                let key = path.file_stem().unwrap_or_default().to_string_lossy();
                journal.forget(&key, true)?;
            }
        }
        Ok(journal)
    }

    fn entry_files(&self) -> io::Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        for item in fs::read_dir(&self.dir)? {
            let path = item?.path();
            if path.extension().is_some_and(|e| e == "json") {
                files.push(path);
            }
        }
        Ok(files)
    }

    fn entry_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    /// Where the output of `attempt` is captured.
    pub(crate) fn log_path(&self, key: &str, attempt: u32) -> PathBuf {
        self.dir.join(format!("{key}.{attempt}.log"))
    }

    /// [`Journal::log_path`], with an empty spare file moved there when there is one (the caller
    /// truncates what is there and writes the log into it).
    pub(crate) fn new_log(&self, key: &str, attempt: u32) -> PathBuf {
        let path = self.log_path(key, attempt);
        self.spares.take(&path);
        path
    }

    /// Gives back a log file [`Journal::new_log`] made for an attempt that never started.
    pub(crate) fn recycle_log(&self, path: &Path) -> io::Result<()> {
        self.spares.keep(path)
    }

    /// Notes that `key`'s outcome is committed in memory. `rewrite` has one item per attempt: `None`
    /// where the attempt's log file holds the outcome's log already (what the handler wrote), else
    /// the bytes the outcome holds instead (a dispatcher's error text, a partial log with its note),
    /// which are written to the log file first. The note is appended to the entry in one write, so a
    /// crash leaves the entry whole, with or without it; it is not synced: a note lost with a power
    /// cut leaves the run to be recorded `abandoned`, as it would have been without it. Nothing is
    /// noted for a key without an entry.
    pub(crate) fn recorded(
        &self,
        key: &str,
        recorded: &Recorded,
        rewrite: &[Option<&[u8]>],
    ) -> io::Result<()> {
        let mut entry = match fs::OpenOptions::new()
            .append(true)
            .open(self.entry_path(key))
        {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for (i, bytes) in rewrite.iter().enumerate() {
            if let Some(bytes) = bytes {
                fs::write(self.log_path(key, i as u32 + 1), bytes)?;
            }
        }
        let mut note = serde_json::to_vec(recorded).map_err(io::Error::other)?;
        note.push(b'\n');
        entry.write_all(&note)
    }

    /// The logs of an outcome noted in `entry`, one per attempt; `None` when one cannot be read.
    pub(crate) fn recorded_logs(&self, entry: &Entry) -> Option<Vec<Vec<u8>>> {
        let recorded = entry.outcome.as_ref()?;
        (1..=recorded.logs)
            .map(|attempt| fs::read(self.log_path(&entry.key, attempt)))
            .collect::<io::Result<Vec<_>>>()
            .ok()
    }

    /// Writes `entry`, its key's first, and syncs it and the folder, before its run may start: a
    /// run prepares its entry while it waits for its slot. `None` when the key has an entry already
    /// (a run recovered at a later attempt): [`Journal::begin`] writes it then. The entry holds
    /// this boot's id and no start time, and room for the start mark is left after it. An entry
    /// that fits overwrites a blank spare in place, so that only its data needs syncing.
    pub(crate) fn prepare(&self, entry: &Entry) -> io::Result<Option<Prepared>> {
        let path = self.entry_path(&entry.key);
        if path.exists() {
            return Ok(None);
        }
        let entry = Entry {
            started_at: None,
            boot_id: Some(self.boot_id.clone()),
            ..entry.clone()
        };
        let mut bytes = serde_json::to_vec(&entry).map_err(io::Error::other)?;
        bytes.push(b'\n');
        let len = (bytes.len() + MARK_ROOM).max(ENTRY_BLOCK as usize);
        bytes.resize(len, b' ');
        // A spare is blank and [`ENTRY_BLOCK`] long: an entry as long keeps its size and blocks.
        let (file, in_place) = match self.entry_spares.take(&path) {
            true => (
                fs::OpenOptions::new().write(true).open(&path)?,
                len as u64 == ENTRY_BLOCK,
            ),
            false => (File::create_new(&path)?, false),
        };
        let written = file.write_all_at(&bytes, 0).and_then(|()| {
            if crate::failpoint::fails("sync-entry") {
                return Err(io::Error::other("fail point `sync-entry`"));
            }
            match in_place {
                true => file.sync_data()?,
                false => {
                    file.set_len(len as u64)?;
                    file.sync_all()?;
                }
            }
            File::open(&self.dir)?.sync_all()
        });
        if let Err(e) = written {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        Ok(Some(Prepared {
            path,
            file,
            mark_at: (len - MARK_ROOM) as u64,
        }))
    }

    /// Gives back the entry file of a run that never started, with the log files of its key.
    pub(crate) fn unprepare(&self, prepared: Prepared, key: &str) -> io::Result<()> {
        drop(prepared.file);
        self.forget(key, true)
    }

    /// Notes that `entry`'s attempt starts now, its `started_at` set, just before its handler does.
    /// Into the entry `prepared` for it, the start mark alone is written, not synced (see the
    /// module's doc). Otherwise (a next attempt, or a run recovered at a later one) the whole entry
    /// is written durably and replaces the last by a rename, so that a crash never loses the
    /// earlier attempts.
    pub(crate) fn begin(&self, entry: &Entry, prepared: Option<Prepared>) -> io::Result<()> {
        let path = self.entry_path(&entry.key);
        if let Some(Prepared {
            path: at,
            file,
            mark_at,
        }) = prepared
        {
            debug_assert_eq!(at, path);
            let started_at = entry.started_at.clone().unwrap_or_default();
            let mark = serde_json::to_vec(&Mark { started_at }).map_err(io::Error::other)?;
            debug_assert!(mark.len() <= MARK_ROOM);
            return file.write_all_at(&mark, mark_at);
        }
        let mut bytes = serde_json::to_vec(entry).map_err(io::Error::other)?;
        bytes.push(b'\n');
        let tmp = path.with_extension("json.tmp");
        let mut file = File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, &path)?;
        File::open(&self.dir)?.sync_all()
    }

    /// Forgets `key`: its entry, its outcome and the logs of all its attempts. Their files are
    /// emptied and kept for the next runs.
    pub(crate) fn finish(&self, key: &str) -> io::Result<()> {
        self.forget(key, true)
    }

    /// [`Journal::finish`] for a run that may still hold its files open (one the watchdog recorded
    /// while its thread was stuck): they are removed, not put back into use, where it could write
    /// into another run's.
    pub(crate) fn discard(&self, key: &str) -> io::Result<()> {
        self.forget(key, false)
    }

    fn forget(&self, key: &str, recycle: bool) -> io::Result<()> {
        let entry = self.entry_path(key);
        let forgotten = match recycle {
            true => self.entry_spares.keep(&entry),
            false => fs::remove_file(&entry),
        };
        let forget = |path: &Path| match recycle {
            true => self.spares.keep(path),
            false => fs::remove_file(path),
        };
        match forgotten {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        for attempt in 1.. {
            match forget(&self.log_path(key, attempt)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Every entry of a run that may have started; an unreadable one is reported, not skipped
    /// silently. A blank file, or a prepared entry of this boot without its start mark, is a run
    /// not started ([`Journal::prepare`]), not an entry.
    pub(crate) fn entries(&self) -> io::Result<Vec<Result<Entry, (PathBuf, String)>>> {
        let mut entries = Vec::new();
        for path in self.entry_files()? {
            let stem = path.file_stem().unwrap_or_default().to_string_lossy();
            let entry = match fs::read(&path) {
                Ok(bytes) if is_blank(&bytes) => continue,
                Ok(bytes) => match parse_entry(&bytes) {
                    Ok(entry) if !entry.may_have_started(&self.boot_id) => continue,
                    Ok(entry) if entry.key != stem => {
                        Err(format!("an entry of `{}`, left in a spare file", entry.key))
                    }
                    parsed => parsed,
                },
                Err(e) => Err(e.to_string()),
            };
            entries.push(entry.map_err(|e| (path.clone(), e)));
        }
        Ok(entries)
    }
}

/// An entry file of spaces (or empty): a reservation, or a spare.
fn is_blank(bytes: &[u8]) -> bool {
    bytes.iter().all(u8::is_ascii_whitespace)
}

/// An entry file: the entry, its start mark when it has one, then the outcome's note when there
/// is a whole one.
fn parse_entry(bytes: &[u8]) -> Result<Entry, String> {
    let mut documents =
        serde_json::Deserializer::from_slice(bytes).into_iter::<serde_json::Value>();
    let first = documents
        .next()
        .ok_or_else(|| "empty".to_owned())?
        .map_err(|e| e.to_string())?;
    let mut entry: Entry = serde_json::from_value(first).map_err(|e| e.to_string())?;
    let mut next = documents.next().and_then(Result::ok);
    if let Some(mark) = next
        .clone()
        .and_then(|v| serde_json::from_value::<Mark>(v).ok())
    {
        entry.started_at = Some(mark.started_at);
        next = documents.next().and_then(Result::ok);
    }
    entry.outcome = next.and_then(|note| serde_json::from_value(note).ok());
    Ok(entry)
}

#[cfg(test)]
#[path = "journal_tests.rs"]
mod tests;
