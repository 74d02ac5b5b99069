//! Unit tests of the journal: entries, their start marks and notes, and the spare files.

use super::*;

const BOOT: &str = "this-boot";

fn entry() -> Entry {
    Entry {
        key: "k".to_owned(),
        request_path: "requests/k.yml".to_owned(),
        request_blob: "0".repeat(40),
        attempt: 1,
        started_at: Some("2026-11-21T00:00:00Z".to_owned()),
        boot_id: None,
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

/// `entry()` of `key`, as prepared: not started.
fn unstarted(key: &str) -> Entry {
    Entry {
        key: key.to_owned(),
        request_path: format!("requests/{key}.yml"),
        started_at: None,
        ..entry()
    }
}

/// What the journal of `BOOT` lists once `key` started at `entry()`'s time.
fn started(key: &str) -> Entry {
    Entry {
        started_at: entry().started_at,
        boot_id: Some(BOOT.to_owned()),
        ..unstarted(key)
    }
}

fn open(workdir: &Path, boot: &str) -> Journal {
    Journal::open_at_boot(workdir, boot.to_owned()).unwrap()
}

fn listed(journal: &Journal) -> Vec<Entry> {
    journal.entries().unwrap().into_iter().flatten().collect()
}

fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).unwrap().ino()
}

/// Prepares `key` and marks it started, as a run does.
fn start(journal: &Journal, key: &str) {
    let prepared = journal.prepare(&unstarted(key)).unwrap();
    assert!(prepared.is_some(), "`{key}` has no entry yet");
    journal.begin(&started(key), prepared).unwrap();
}

#[test]
fn an_entry_reads_back_with_its_start_mark_and_outcome_note_and_without_a_torn_one() {
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

    let mut prepared = serde_json::to_vec(&unstarted("k")).unwrap();
    prepared.extend_from_slice(b"\n    ");
    let mark = br#"{"started_at":"2026-11-21T00:00:00Z"}"#;
    let marked = [
        &prepared[..],
        mark,
        b"   ",
        &serde_json::to_vec(&note()).unwrap(),
    ]
    .concat();
    let read = parse_entry(&marked).unwrap();
    assert_eq!(read.started_at, entry().started_at, "the mark's time");
    assert_eq!(read.outcome, Some(note()), "the note after the mark");
    assert_eq!(parse_entry(&prepared).unwrap().started_at, None);
}

#[test]
fn an_entry_written_pretty_by_an_earlier_version_still_reads_as_started() {
    // Earlier versions wrote `started_at` into the entry, which they synced before the start.
    let pretty = serde_json::to_vec_pretty(&entry()).unwrap();
    let read = parse_entry(&pretty).unwrap();
    assert_eq!(read, entry());
    assert!(read.may_have_started(BOOT));
}

#[test]
fn a_prepared_entry_is_a_run_only_once_marked_started_or_seen_from_another_boot() {
    let workdir = tempfile::tempdir().unwrap();
    let journal = open(workdir.path(), BOOT);
    let prepared = journal
        .prepare(&unstarted("k"))
        .unwrap()
        .expect("no entry yet");
    let bytes = fs::read(journal.entry_path("k")).unwrap();
    assert_eq!(
        bytes.len() as u64,
        ENTRY_BLOCK,
        "a prepared entry fills one block"
    );
    assert!(
        bytes[bytes.len() - MARK_ROOM..].iter().all(|b| *b == b' '),
        "the mark's room is left blank"
    );
    assert!(listed(&journal).is_empty(), "prepared, not started");
    assert!(
        journal.entries().unwrap().is_empty(),
        "nor an unreadable entry"
    );
    assert_eq!(
        listed(&open(workdir.path(), "another-boot")),
        vec![Entry {
            boot_id: Some(BOOT.to_owned()),
            ..unstarted("k")
        }],
        "after a restart of the machine the mark may be lost: it may have started"
    );

    journal.begin(&started("k"), Some(prepared)).unwrap();
    assert_eq!(listed(&journal), vec![started("k")]);
    assert_eq!(
        fs::read(journal.entry_path("k")).unwrap().len() as u64,
        ENTRY_BLOCK,
        "the mark is written in its room"
    );
    journal.recorded("k", &note(), &[None]).unwrap();
    assert_eq!(listed(&journal)[0].outcome, Some(note()));
}

#[test]
fn a_start_keeps_only_the_runs_that_may_have_started() {
    let workdir = tempfile::tempdir().unwrap();
    let journal = open(workdir.path(), BOOT);
    start(&journal, "ran");
    journal
        .prepare(&unstarted("waited"))
        .unwrap()
        .expect("no entry yet");
    let waited_log = journal.new_log("waited", 1);
    fs::write(&waited_log, b"").unwrap();
    drop(journal);

    // The dispatcher died: the same boot knows `waited` never started.
    let journal = open(workdir.path(), BOOT);
    assert_eq!(listed(&journal), vec![started("ran")]);
    assert!(!journal.entry_path("waited").exists());
    assert!(!waited_log.exists(), "its log goes too");
    let spares = fs::read_dir(workdir.path().join("journal/spare-entries")).unwrap();
    assert_eq!(spares.count(), 1, "its entry file is a spare");

    // After a restart of the machine, a prepared entry may be of a run that started.
    journal
        .prepare(&unstarted("cut"))
        .unwrap()
        .expect("no entry yet");
    drop(journal);
    let journal = open(workdir.path(), "another-boot");
    let mut keys: Vec<String> = listed(&journal).into_iter().map(|e| e.key).collect();
    keys.sort();
    assert_eq!(keys, ["cut", "ran"]);
}

#[test]
fn an_entry_too_long_for_a_block_keeps_room_for_its_mark() {
    let workdir = tempfile::tempdir().unwrap();
    let journal = open(workdir.path(), BOOT);
    let long = Entry {
        request_path: format!("requests/{}.yml", "x".repeat(2000)),
        ..unstarted("long")
    };
    let prepared = journal.prepare(&long).unwrap().expect("no entry yet");
    let len = fs::metadata(journal.entry_path("long")).unwrap().len();
    assert!(len > ENTRY_BLOCK, "{len}");
    journal
        .begin(
            &Entry {
                started_at: entry().started_at,
                ..long.clone()
            },
            Some(prepared),
        )
        .unwrap();
    let read = listed(&journal);
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].request_path, long.request_path);
    assert_eq!(read[0].started_at, entry().started_at);
}

#[test]
fn a_finished_runs_entry_and_log_are_emptied_and_reused_by_the_next_run() {
    let workdir = tempfile::tempdir().unwrap();
    let journal = open(workdir.path(), BOOT);
    start(&journal, "first");
    let log = journal.new_log("first", 1);
    fs::write(&log, "output of first\n").unwrap();
    let inodes = [inode(&journal.entry_path("first")), inode(&log)];

    journal.finish("first").unwrap();
    assert!(!journal.entry_path("first").exists());
    assert!(!log.exists());

    let log = journal.new_log("second", 1);
    start(&journal, "second");
    let mut reused = [inode(&journal.entry_path("second")), inode(&log)];
    reused.sort_unstable();
    let mut inodes = inodes;
    inodes.sort_unstable();
    assert_eq!(reused, inodes, "the second run's files are the first run's");
    assert_eq!(fs::read(&log).unwrap(), b"", "a reused log starts empty");
    assert_eq!(
        fs::read(journal.entry_path("second")).unwrap().len() as u64,
        ENTRY_BLOCK,
        "the entry is written over the blank spare"
    );
    assert_eq!(listed(&journal), vec![started("second")]);
}

#[test]
fn a_run_that_never_starts_gives_its_files_back_and_a_next_attempt_replaces_the_entry() {
    let workdir = tempfile::tempdir().unwrap();
    let journal = open(workdir.path(), BOOT);
    let log = journal.new_log("k", 1);
    let prepared = journal
        .prepare(&unstarted("k"))
        .unwrap()
        .expect("no entry yet");
    journal.unprepare(prepared, "k").unwrap();
    assert!(!journal.entry_path("k").exists());
    assert!(!log.exists(), "its log goes back too");

    start(&journal, "k");
    assert!(
        journal.prepare(&unstarted("k")).unwrap().is_none(),
        "a key with an entry keeps it"
    );
    let second = Entry {
        attempt: 2,
        ..started("k")
    };
    journal.begin(&second, None).unwrap();
    assert_eq!(listed(&journal), vec![second]);
}

#[test]
fn an_entry_of_another_key_in_a_reused_file_is_unreadable_not_that_keys_run() {
    let workdir = tempfile::tempdir().unwrap();
    let journal = open(workdir.path(), BOOT);
    // What a crash between moving a spare into place and writing it could leave, had the
    // spare not been emptied.
    let mut stale = serde_json::to_vec(&Entry {
        key: "old".to_owned(),
        ..entry()
    })
    .unwrap();
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
    let workdir = tempfile::tempdir().unwrap();
    let journal = open(workdir.path(), BOOT);
    start(&journal, "stuck");
    let log = journal.new_log("stuck", 1);
    fs::write(&log, "output\n").unwrap();

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
