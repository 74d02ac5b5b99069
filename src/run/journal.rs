//! The local journal: one small file per run in flight, written (and synced) before the handler
//! starts and removed once the outcome is committed locally and written out to the workdir (outcome
//! commits are made in memory and written out as one pack per push, see `Sync::persist`), plus the
//! log of each attempt as it is captured. After a crash it tells the next start what was running,
//! and its partial log.
//!
//! Once a run's outcome is committed in memory, a second JSON document appended to its entry says
//! what was committed (the message, the status file; the logs are the attempts' log files), so that
//! a crash before the outcomes are written out loses no outcome: the next start commits it again.
//!
//! A journal entry whose outcome is already in the local branch is simply removed; one whose request
//! is still in the inbox is committed again from that second document when there is one, and otherwise
//! becomes an `abandoned` outcome, or a next attempt for an idempotent kind with retries left.
//! Nothing else reads it.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use serde::{Deserialize, Serialize};

use crate::run::spare::Spares;

/// A first entry's file put in its place before the run may start (see [`Journal::reserve`]).
pub(crate) struct Reserved {
    path: PathBuf,
    file: File,
}

/// A first entry written and being synced on the journal's own thread (see [`Journal::begin`]).
/// The handler is started meanwhile, but waits at `gate` (`spawn::Spec::gate`), which yields 1
/// once the entry is on disk and 0 when it could not be synced.
pub(crate) struct Syncing {
    pub gate: io::PipeReader,
    result: mpsc::Receiver<io::Result<()>>,
}

impl Syncing {
    /// How the sync went.
    pub(crate) fn wait(self) -> io::Result<()> {
        self.result
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("the journal's sync thread is gone")))
    }
}

/// An entry file to sync, the gate to open after, and where to say how it went.
type SyncJob = (File, io::PipeWriter, mpsc::Sender<io::Result<()>>);

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

pub(crate) struct Journal {
    dir: PathBuf,
    /// Spare log files, and spare entry files (blank, [`ENTRY_BLOCK`] bytes).
    spares: Spares,
    entry_spares: Spares,
    /// The thread that syncs first entries ([`Syncing`]).
    syncer: mpsc::Sender<SyncJob>,
}

/// The length of a spare entry file: an entry no longer than this overwrites one in place.
const ENTRY_BLOCK: u64 = 1024;

impl Journal {
    /// Opens the journal of `workdir`. Entry files still blank (reserved by a dispatcher that
    /// stopped before their runs started) go back to the spares.
    pub(crate) fn open(workdir: &Path) -> io::Result<Self> {
        let dir = workdir.join("journal");
        fs::create_dir_all(&dir)?;
        let spares = Spares::open(dir.join("spare"))?;
        let entry_spares = Spares::open_blank(dir.join("spare-entries"), ENTRY_BLOCK)?;
        let (syncer, jobs) = mpsc::channel::<SyncJob>();
        std::thread::Builder::new()
            .name("journal-sync".to_owned())
            .spawn(move || {
                for (file, mut gate, result) in jobs {
                    let synced = match crate::failpoint::fails("sync-entry") {
                        true => Err(io::Error::other("fail point `sync-entry`")),
                        false => file.sync_data(),
                    };
                    let _ = gate.write_all(&[u8::from(synced.is_ok())]);
                    let _ = result.send(synced);
                }
            })?;
        let journal = Self {
            dir,
            spares,
            entry_spares,
            syncer,
        };
        for path in journal.entry_files()? {
            if is_blank(&fs::read(&path)?) {
                journal.entry_spares.keep(&path)?;
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

    /// Puts a blank file in the place of `key`'s entry and syncs the folder, so that
    /// [`Journal::begin`] then only writes and syncs the entry's data. A run reserves its entry
    /// while it waits for its slot, which takes the rename and the folder's sync out of the time
    /// between one handler's end and the next one's start. `None` when `key` has an entry already
    /// (a run recovered at a later attempt). A blank entry file says nothing: [`Journal::entries`]
    /// skips it, and [`Journal::open`] takes back those a crash left.
    pub(crate) fn reserve(&self, key: &str) -> io::Result<Option<Reserved>> {
        let path = self.entry_path(key);
        if path.exists() {
            return Ok(None);
        }
        let file = match self.entry_spares.take(&path) {
            true => fs::OpenOptions::new().write(true).open(&path)?,
            false => {
                let mut file = File::create_new(&path)?;
                file.write_all(&[b' '; ENTRY_BLOCK as usize])?;
                file
            }
        };
        File::open(&self.dir)?.sync_all()?;
        Ok(Some(Reserved { path, file }))
    }

    /// Gives back the entry file of a run that never started, with the log files of its key.
    pub(crate) fn unreserve(&self, reserved: Reserved, key: &str) -> io::Result<()> {
        drop(reserved.file);
        self.forget(key, true)
    }

    /// Writes `entry` durably (the file and the folder synced), into the file `reserved` for it
    /// when there is one. A first entry is written in place: the handler starts only once it is
    /// on disk, so an entry a crash left torn is of a run that never started, and
    /// [`Journal::entries`] reports it as unreadable. A next attempt's entry replaces the last one
    /// by a rename, so that a crash never loses the earlier attempts.
    ///
    /// An entry written over its reserved file, whose name is durable already, is synced on the
    /// journal's thread while the handler is made ready to start (about 150 µs each on the
    /// benchmark machine): the caller starts the handler with the returned [`Syncing`]'s gate.
    pub(crate) fn begin(
        &self,
        entry: &Entry,
        reserved: Option<Reserved>,
    ) -> io::Result<Option<Syncing>> {
        let path = self.entry_path(&entry.key);
        let mut bytes = serde_json::to_vec(entry).map_err(io::Error::other)?;
        bytes.push(b'\n');
        if let Some(Reserved { path: at, file }) = reserved {
            debug_assert_eq!(at, path);
            let Some(file) = write_in_place(file, bytes)? else {
                return Ok(None);
            };
            let (reader, writer) = io::pipe()?;
            let (sender, result) = mpsc::channel();
            if let Err(mpsc::SendError((file, _, _))) = self.syncer.send((file, writer, sender)) {
                file.sync_data()?;
                return Ok(None);
            }
            return Ok(Some(Syncing {
                gate: reader,
                result,
            }));
        }
        if path.exists() {
            let tmp = path.with_extension("json.tmp");
            let mut file = File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            fs::rename(&tmp, &path)?;
        } else if self.entry_spares.take(&path) {
            if let Some(file) =
                write_in_place(fs::OpenOptions::new().write(true).open(&path)?, bytes)?
            {
                file.sync_data()?;
            }
        } else {
            let mut file = File::create_new(&path)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
        }
        File::open(&self.dir)?.sync_all()?;
        Ok(None)
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

    /// Every entry; an unreadable one is reported, not skipped silently. A blank file is a
    /// reservation ([`Journal::reserve`]), not an entry.
    pub(crate) fn entries(&self) -> io::Result<Vec<Result<Entry, (PathBuf, String)>>> {
        let mut entries = Vec::new();
        for path in self.entry_files()? {
            let stem = path.file_stem().unwrap_or_default().to_string_lossy();
            let entry = match fs::read(&path) {
                Ok(bytes) if is_blank(&bytes) => continue,
                Ok(bytes) => parse_entry(&bytes).and_then(|entry| match entry.key == stem {
                    true => Ok(entry),
                    false => Err(format!("an entry of `{}`, left in a spare file", entry.key)),
                }),
                Err(e) => Err(e.to_string()),
            };
            entries.push(entry.map_err(|e| (path.clone(), e)));
        }
        Ok(entries)
    }
}

/// Writes a first entry over a blank spare. A spare is blank, but one a crash left half-blanked may
/// still hold another run's entry: [`Journal::entries`] tells it by its key. An entry that fits is
/// padded with spaces to the spare's length (the note comes after them; readers skip whitespace),
/// so the file keeps its size and blocks and only its data needs syncing: the file is returned for
/// the caller to sync it. Otherwise it is synced whole here. Its name is the caller's to make
/// durable.
fn write_in_place(file: File, mut bytes: Vec<u8>) -> io::Result<Option<File>> {
    use std::os::unix::fs::FileExt;
    if bytes.len() as u64 <= ENTRY_BLOCK && file.metadata()?.len() == ENTRY_BLOCK {
        bytes.resize(ENTRY_BLOCK as usize, b' ');
        file.write_all_at(&bytes, 0)?;
        return Ok(Some(file));
    }
    file.write_all_at(&bytes, 0)?;
    file.set_len(bytes.len() as u64)?;
    file.sync_all()?;
    Ok(None)
}

/// An entry file of spaces (or empty): a reservation, or a spare.
fn is_blank(bytes: &[u8]) -> bool {
    bytes.iter().all(u8::is_ascii_whitespace)
}

/// An entry file: the entry, then the outcome's note when there is a whole one.
fn parse_entry(bytes: &[u8]) -> Result<Entry, String> {
    let mut documents =
        serde_json::Deserializer::from_slice(bytes).into_iter::<serde_json::Value>();
    let first = documents
        .next()
        .ok_or_else(|| "empty".to_owned())?
        .map_err(|e| e.to_string())?;
    let mut entry: Entry = serde_json::from_value(first).map_err(|e| e.to_string())?;
    entry.outcome = documents
        .next()
        .and_then(Result::ok)
        .and_then(|note| serde_json::from_value(note).ok());
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            key: "k".to_owned(),
            request_path: "requests/k.yml".to_owned(),
            request_blob: "0".repeat(40),
            attempt: 1,
            started_at: "2026-11-21T00:00:00Z".to_owned(),
            dispatcher_pid: 1,
            outcome: None,
        }
    }

    fn note() -> Recorded {
        Recorded {
            kind: Some("echo".to_owned()),
            state: "succeeded".to_owned(),
            message: "dispatch: k succeeded\n".to_owned(),
            status_json: "{}\n".to_owned(),
            request_is_file: true,
            logs: 1,
            follow_ups: vec![(
                "k.then-1".to_owned(),
                "id: k.then-1\nkind: echo\n".to_owned(),
            )],
        }
    }

    #[test]
    fn an_entry_reads_back_with_its_outcome_note_and_without_a_torn_one() {
        let mut bytes = serde_json::to_vec(&entry()).unwrap();
        bytes.push(b'\n');
        assert_eq!(parse_entry(&bytes).unwrap(), entry());

        let whole = [bytes.clone(), serde_json::to_vec(&note()).unwrap()].concat();
        assert_eq!(parse_entry(&whole).unwrap().outcome, Some(note()));

        let torn = &whole[..whole.len() - 5];
        assert_eq!(
            parse_entry(torn).unwrap(),
            entry(),
            "a torn note is ignored"
        );
        assert!(
            parse_entry(&bytes[..bytes.len() / 2]).is_err(),
            "a torn entry"
        );
    }

    #[test]
    fn an_entry_written_pretty_by_an_earlier_version_still_reads() {
        let pretty = serde_json::to_vec_pretty(&entry()).unwrap();
        assert_eq!(parse_entry(&pretty).unwrap(), entry());
    }

    fn entry_of(key: &str) -> Entry {
        Entry {
            key: key.to_owned(),
            request_path: format!("requests/{key}.yml"),
            ..entry()
        }
    }

    fn inode(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(path).unwrap().ino()
    }

    /// A journal in a fresh workdir with a run of `key` begun and its first log written.
    fn journal_with_a_run(key: &str) -> (tempfile::TempDir, Journal, PathBuf) {
        let workdir = tempfile::tempdir().unwrap();
        let journal = Journal::open(workdir.path()).unwrap();
        journal.begin(&entry_of(key), None).unwrap();
        let log = journal.new_log(key, 1);
        fs::write(&log, format!("output of {key}\n")).unwrap();
        (workdir, journal, log)
    }

    #[test]
    fn a_finished_runs_entry_and_log_are_emptied_and_reused_by_the_next_run() {
        let (_workdir, journal, log) = journal_with_a_run("first");
        let inodes = [inode(&journal.entry_path("first")), inode(&log)];

        journal.finish("first").unwrap();
        assert!(!journal.entry_path("first").exists());
        assert!(!log.exists());

        let log = journal.new_log("second", 1);
        let reserved = journal.reserve("second").unwrap();
        assert!(
            reserved.is_some(),
            "a key without an entry gets one reserved"
        );
        journal.begin(&entry_of("second"), reserved).unwrap();
        let mut reused = [inode(&journal.entry_path("second")), inode(&log)];
        reused.sort_unstable();
        let mut inodes = inodes;
        inodes.sort_unstable();
        assert_eq!(reused, inodes, "the second run's files are the first run's");
        assert_eq!(fs::read(&log).unwrap(), b"", "a reused log starts empty");
        let entry = fs::read(journal.entry_path("second")).unwrap();
        assert_eq!(
            entry.len() as u64,
            ENTRY_BLOCK,
            "the entry is written over the blank spare"
        );
        let entries: Vec<Entry> = journal.entries().unwrap().into_iter().flatten().collect();
        assert_eq!(entries, vec![entry_of("second")]);
        // The outcome's note goes after the padding and reads back.
        journal.recorded("second", &note(), &[None]).unwrap();
        let entries: Vec<Entry> = journal.entries().unwrap().into_iter().flatten().collect();
        assert_eq!(entries[0].outcome, Some(note()));
    }

    #[test]
    fn an_entry_reserved_without_a_spare_is_written_over_its_blank_in_place() {
        let workdir = tempfile::tempdir().unwrap();
        let journal = Journal::open(workdir.path()).unwrap();
        let reserved = journal.reserve("k").unwrap().expect("no entry yet");
        if let Some(syncing) = journal.begin(&entry(), Some(reserved)).unwrap() {
            syncing.wait().unwrap();
        }
        let bytes = fs::read(journal.entry_path("k")).unwrap();
        assert_eq!(bytes.len() as u64, ENTRY_BLOCK, "the entry is not in place");
        assert_eq!(parse_entry(&bytes).unwrap(), entry());
    }

    #[test]
    fn a_reserved_entry_is_no_entry_and_goes_back_to_the_spares_unused() {
        let (workdir, journal, _log) = journal_with_a_run("first");
        journal.finish("first").unwrap();
        assert!(
            journal.reserve("first").unwrap().is_some(),
            "a finished key has no entry"
        );
        let log = journal.new_log("second", 1);
        let reserved = journal.reserve("second").unwrap().expect("no entry yet");
        assert!(journal.entry_path("second").exists());
        assert!(
            journal.entries().unwrap().is_empty(),
            "a blank file is not an entry, nor an unreadable one"
        );
        journal.unreserve(reserved, "second").unwrap();
        assert!(!journal.entry_path("second").exists());
        assert!(!log.exists(), "its log goes back too");

        // A crash leaves `first`'s reservation: the next start takes it back.
        drop(journal);
        let journal = Journal::open(workdir.path()).unwrap();
        assert!(!journal.entry_path("first").exists());
        let spares = fs::read_dir(workdir.path().join("journal").join("spare-entries"))
            .unwrap()
            .count();
        assert_eq!(spares, 2, "both reservations' files are spares");
        let mut begun = entry_of("third");
        begun.attempt = 2;
        journal.begin(&begun, None).unwrap();
        assert!(
            journal.reserve("third").unwrap().is_none(),
            "a key with an entry keeps it"
        );
        assert_eq!(journal.entries().unwrap().into_iter().flatten().count(), 1);
    }

    #[test]
    fn an_entry_of_another_key_in_a_reused_file_is_unreadable_not_that_keys_run() {
        let workdir = tempfile::tempdir().unwrap();
        let journal = Journal::open(workdir.path()).unwrap();
        // What a crash between moving a spare into place and writing it could leave, had the
        // spare not been emptied.
        let mut stale = serde_json::to_vec(&entry_of("old")).unwrap();
        stale.push(b'\n');
        fs::write(journal.entry_path("new"), stale).unwrap();

        let entries = journal.entries().unwrap();
        assert_eq!(entries.len(), 1);
        let (path, error) = entries[0].as_ref().unwrap_err();
        assert_eq!(path, &journal.entry_path("new"));
        assert!(error.contains("`old`"), "{error}");
    }

    #[test]
    fn a_discarded_run_leaves_no_spare() {
        let (workdir, journal, log) = journal_with_a_run("stuck");

        journal.discard("stuck").unwrap();

        assert!(!journal.entry_path("stuck").exists());
        assert!(!log.exists());
        let spares = ["journal/spare", "journal/spare-entries"]
            .iter()
            .map(|dir| fs::read_dir(workdir.path().join(dir)).unwrap().count())
            .sum::<usize>();
        assert_eq!(
            spares, 0,
            "the files of a run that may still hold them were recycled"
        );
    }
}
