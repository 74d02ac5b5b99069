//! Crash recovery: the dispatcher SIGKILLs itself at each fail point (after a fetch, with a run's
//! journal entry prepared, a journaled take, while a handler runs, after a commit, in a push, before outcomes in memory are written out) or fails
//! to write a pack or sync a journal entry, and a restart on the same workdir records each request
//! exactly once, under its id, without running a non-idempotent handler twice.

use std::collections::BTreeMap;
use std::fs;

use serde_json::Value;

use super::port_daemon::PortDaemon;
use super::{
    CRASH_NOTE, DEADLINE, assert_each_recorded_once, assert_local_branch_is_the_remote,
    counting_handler, git_dir, outcome_ids, runs,
};
use crate::support::{Checkout, RunOutput, World, add_kinds, log_file, sha256_hex};

const CRASH_FILES: [&str; 3] = ["crash-a.yml", "crash-b.yml", "crash-c.yml"];

/// What a crash-and-restart left.
struct Crashed {
    world: World,
    /// A fresh clone of the remote after the restart.
    clone: Checkout,
    /// Each request file's (record key, status).
    once: BTreeMap<String, (String, Value)>,
    /// The outcomes the remote held right after the crash, before the restart.
    pushed_before_restart: Vec<String>,
}

/// Three requests of a kind that is not idempotent (though it has a retry) and shares one resource (so
/// one handler runs at a time), each in its own commit so `crash-a` is taken first; a run that SIGKILLs
/// itself at `stage`; a run without the fail point. Then: each request recorded exactly once under its
/// id, and the dispatcher's branch is the remote's.
fn crash_then_restart(stage: &str, over_git_daemon: bool) -> Crashed {
    crash_then_restart_on(stage, over_git_daemon, None)
}

/// [`crash_then_restart`], the restart as after a restart of the machine when `boot` is given: the
/// kernel's boot id it sees (`GIT_DISPATCH_BOOT_ID`, test builds only).
fn crash_then_restart_on(stage: &str, over_git_daemon: bool, boot: Option<&str>) -> Crashed {
    let world = World::new().build();
    add_kinds(
        &world,
        &[("tally", &counting_handler(&world, ""), "  retries: 1\n")],
    );
    for file in CRASH_FILES {
        world.submit(file, "kind: tally\n");
    }
    let daemon = over_git_daemon.then(|| PortDaemon::serve(&world));
    let url = daemon
        .as_ref()
        .map_or_else(|| world.remote_arg().to_owned(), PortDaemon::url);

    let mut crashing = world.run_command(&url, &["--until-empty"]);
    crashing.env("GIT_DISPATCH_FAILPOINT", stage);
    let crashed = world.spawn(crashing).wait(DEADLINE);
    assert_eq!(
        crashed.signal,
        Some(9),
        "the run armed with fail point `{stage}` did not die by SIGKILL\n{crashed}"
    );
    let pushed_before_restart = outcome_ids(&world, &world.remote);

    let mut restart = world.run_command(&url, &["--until-empty"]);
    if let Some(boot) = boot {
        restart.env("GIT_DISPATCH_BOOT_ID", boot);
    }
    world.output(restart).assert_exit(0);

    let clone = world.clone_from(&url);
    let once = assert_each_recorded_once(&clone, &CRASH_FILES);
    for (file, (key, _)) in &once {
        assert_eq!(
            key,
            file.trim_end_matches(".yml"),
            "`{file}` is recorded under its id"
        );
    }
    assert_local_branch_is_the_remote(&world);
    Crashed {
        world,
        clone,
        once,
        pushed_before_restart,
    }
}

impl Crashed {
    /// The status of `key`'s outcome after the restart.
    fn status(&self, key: &str) -> &Value {
        self.once
            .values()
            .find(|(k, _)| k == key)
            .map(|(_, status)| status)
            .unwrap_or_else(|| panic!("no outcome for `{key}`"))
    }

    /// Each of `keys` succeeded once, except at most one that the crash interrupted while its handler
    /// ran: that one is `abandoned` with the crash note and was not run again.
    fn assert_at_most_one_interrupted(&self, keys: &[&str]) {
        let mut abandoned = Vec::new();
        for key in keys {
            let status = self.status(key);
            if status["state"] == "abandoned" {
                self.assert_abandoned(key);
                abandoned.push(*key);
            } else {
                self.assert_succeeded_once(key);
            }
        }
        assert!(
            abandoned.len() <= 1,
            "more than one run was interrupted by one crash: {abandoned:?}"
        );
    }

    /// The crash came before anything was pushed.
    fn assert_nothing_pushed_before_restart(&self) {
        assert_eq!(
            self.pushed_before_restart,
            Vec::<String>::new(),
            "outcomes reached the remote before the crash"
        );
    }

    /// `key` succeeded at its first attempt and its handler ran exactly once.
    fn assert_succeeded_once(&self, key: &str) {
        let status = self.status(key);
        assert_eq!(status["state"], "succeeded", "`{key}`: {status:#}");
        assert_eq!(status["attempts"], 1, "`{key}`: {status:#}");
        assert_eq!(
            runs(&self.world, key),
            ["1"],
            "`{key}` did not run exactly once"
        );
    }

    /// `key` is `abandoned` after attempt 1 with the crash in its error and at the end of its log, and
    /// its handler was not run again (the kind is not idempotent).
    fn assert_abandoned(&self, key: &str) {
        let status = self.status(key);
        assert_eq!(status["state"], "abandoned", "`{key}`: {status:#}");
        assert_eq!(status["attempts"], 1, "`{key}`: {status:#}");
        let error = status["error"].as_str().expect("abandoned has an error");
        assert!(
            error.contains("the dispatcher stopped while attempt 1 ran"),
            "`{key}`: error: {error}"
        );
        let log = self
            .clone
            .read_string(&log_file(key, 1))
            .expect("the partial log is committed");
        let last = log
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        assert!(
            last.starts_with(CRASH_NOTE),
            "`{key}`: the log does not end with the crash note:\n{log}"
        );
        assert!(
            runs(&self.world, key).len() <= 1,
            "`{key}`: the interrupted handler was run again: {:?}",
            runs(&self.world, key)
        );
    }
}

#[test]
fn crash_after_a_fetch_downloaded_loses_and_repeats_nothing() {
    let crashed = crash_then_restart("fetch", false);
    crashed.assert_nothing_pushed_before_restart();
    for key in ["crash-a", "crash-b", "crash-c"] {
        crashed.assert_succeeded_once(key);
    }
}

#[test]
fn crash_after_a_run_was_journaled_records_it_abandoned_without_running_it() {
    let crashed = crash_then_restart("taken", false);
    crashed.assert_nothing_pushed_before_restart();
    crashed.assert_abandoned("crash-a");
    assert_eq!(
        runs(&crashed.world, "crash-a"),
        Vec::<String>::new(),
        "the handler ran although the crash came before it started"
    );
    crashed.assert_succeeded_once("crash-b");
    crashed.assert_succeeded_once("crash-c");
}

#[test]
fn crash_while_a_run_waits_for_its_slot_with_its_entry_on_disk_runs_it_once_on_restart() {
    // The first run's journal entry is written and synced before it takes its slot; only the start
    // mark, unsynced, comes after. Within the same boot of the machine the restart knows the run
    // never started.
    let crashed = crash_then_restart("prepared", false);
    crashed.assert_nothing_pushed_before_restart();
    for key in ["crash-a", "crash-b", "crash-c"] {
        crashed.assert_succeeded_once(key);
    }
}

#[test]
fn a_run_prepared_before_a_restart_of_the_machine_is_abandoned_not_run() {
    // After a power cut the unsynced start mark may be lost: a prepared entry of another boot may be
    // of a run that started, so it is never run again.
    let crashed = crash_then_restart_on("prepared", false, Some("another-boot"));
    crashed.assert_nothing_pushed_before_restart();
    // The run taken first died prepared; the one taken beside it may have been prepared too.
    let mut abandoned = Vec::new();
    for key in ["crash-a", "crash-b"] {
        let status = crashed.status(key);
        if status["state"] != "abandoned" {
            crashed.assert_succeeded_once(key);
            continue;
        }
        let error = status["error"].as_str().expect("abandoned has an error");
        assert!(
            error.contains("the machine restarted while attempt 1 was starting or running"),
            "`{key}`: {error}"
        );
        assert_eq!(
            runs(&crashed.world, key),
            Vec::<String>::new(),
            "`{key}`: the handler ran although the crash came before it started"
        );
        abandoned.push(key);
    }
    assert!(
        !abandoned.is_empty(),
        "no prepared run was taken for one that may have started"
    );
    crashed.assert_succeeded_once("crash-c");
}

#[test]
fn crash_while_a_handler_runs_records_it_abandoned_with_its_partial_log() {
    let crashed = crash_then_restart("running", false);
    crashed.assert_nothing_pushed_before_restart();
    crashed.assert_abandoned("crash-a");
    crashed.assert_succeeded_once("crash-b");
    crashed.assert_succeeded_once("crash-c");
}

#[test]
fn crash_after_an_outcome_was_committed_pushes_it_once_on_restart() {
    let crashed = crash_then_restart("committed", true);
    crashed.assert_nothing_pushed_before_restart();
    // The outcome committed before the crash is pushed as it was, not run again.
    crashed.assert_succeeded_once("crash-a");
    // The dispatcher records an outcome while the next request already runs, so that one may have
    // been interrupted by the crash: it is then `abandoned`, never run twice.
    crashed.assert_at_most_one_interrupted(&["crash-b", "crash-c"]);
}

#[test]
fn crash_before_an_outcome_with_the_dispatchers_own_log_was_written_out_keeps_that_log() {
    // A handler that cannot start gets a log the dispatcher writes (the error), not the handler's
    // output: the journal keeps that text too, so the outcome committed again after a crash holds it.
    let world = World::new().build();
    add_kinds(&world, &[("broken", "#!/nonexistent/interpreter\n", "")]);
    world.submit("unstartable.yml", "kind: broken\n");
    let mut crashing = world.run_command(world.remote_arg(), &["--until-empty"]);
    crashing.env("GIT_DISPATCH_FAILPOINT", "recorded");
    let crashed = world.spawn(crashing).wait(DEADLINE);
    assert_eq!(crashed.signal, Some(9), "{crashed}");
    assert_eq!(outcome_ids(&world, &world.remote), Vec::<String>::new());

    world.run(&[]).assert_exit(0);

    let clone = world.fresh_clone();
    assert_each_recorded_once(&clone, &["unstartable.yml"]);
    let status = clone.status("unstartable");
    assert_eq!(status["state"], "failed", "{status:#}");
    let log = clone
        .read_string(&log_file("unstartable", 1))
        .expect("the log is committed");
    assert!(
        log.contains("could not start handler"),
        "the log is not the dispatcher's error: {log:?}"
    );
    assert_eq!(
        status["log_sha256"],
        sha256_hex(log.as_bytes()),
        "{status:#}"
    );
}

#[test]
fn crash_before_outcomes_in_memory_were_written_out_commits_them_again_on_restart() {
    // Outcome commits are made in memory and written out at the next push: a crash in between
    // loses the commit, and the journal gives it back as it was (state, exit code, log), not as
    // `abandoned`, without running the handler again.
    let crashed = crash_then_restart("recorded", false);
    crashed.assert_nothing_pushed_before_restart();
    crashed.assert_succeeded_once("crash-a");
    let (_, status) = crashed
        .once
        .values()
        .find(|(k, _)| k == "crash-a")
        .expect("an outcome for `crash-a`");
    assert_eq!(status["exit_code"], 0, "{status:#}");
    assert_eq!(status["log"], log_file("crash-a", 1), "{status:#}");
    let log = crashed
        .clone
        .read_string(&log_file("crash-a", 1))
        .expect("the log is committed");
    assert_eq!(log, "attempt 1 of crash-a\n");
    assert_eq!(
        status["log_sha256"],
        sha256_hex(log.as_bytes()),
        "{status:#}"
    );
    crashed.assert_at_most_one_interrupted(&["crash-b", "crash-c"]);
    let journal: Vec<_> = fs::read_dir(crashed.world.work.join("journal"))
        .expect("the journal folder")
        .map(|e| e.expect("a journal entry").file_name())
        .filter(|name| name != "spare" && name != "spare-entries")
        .collect();
    assert!(journal.is_empty(), "left in the journal: {journal:?}");
    // Finished runs' files are kept for reuse: logs emptied, entries blanked.
    for spare in fs::read_dir(crashed.world.work.join("journal/spare")).expect("the spare folder") {
        let spare = spare.expect("a spare file").path();
        let len = fs::metadata(&spare).expect("a spare file").len();
        assert_eq!(len, 0, "`{}` is not empty", spare.display());
    }
    let entries = crashed.world.work.join("journal/spare-entries");
    for spare in fs::read_dir(entries).expect("the spare entries folder") {
        let spare = spare.expect("a spare file").path();
        let bytes = fs::read(&spare).expect("a spare file");
        assert!(
            !bytes.is_empty() && bytes.iter().all(|&b| b == b' '),
            "`{}` is not blank",
            spare.display()
        );
    }
}

/// A crash at `push` (the remote took the ref update, the push did not return): what the remote took
/// is not recorded again; a handler that was running at that moment (the dispatcher pushes while the
/// next request runs) is `abandoned`, at most one as they share a resource; everything else succeeded.
fn assert_crash_in_push_recorded_nothing_twice(crashed: &Crashed) {
    assert!(
        !crashed.pushed_before_restart.is_empty(),
        "the remote holds no outcome although the crash came after it accepted a push"
    );
    let mut abandoned = Vec::new();
    for (key, status) in crashed.once.values() {
        if crashed.pushed_before_restart.contains(key) || status["state"] != "abandoned" {
            crashed.assert_succeeded_once(key);
        } else {
            crashed.assert_abandoned(key);
            abandoned.push(key.clone());
        }
    }
    assert!(
        abandoned.len() <= 1,
        "more than one run was interrupted by one crash: {abandoned:?}"
    );
}

#[test]
fn crash_after_the_server_accepted_a_push_records_nothing_twice() {
    assert_crash_in_push_recorded_nothing_twice(&crash_then_restart("push", true));
}

#[test]
fn crash_after_a_local_remote_accepted_a_push_records_nothing_twice() {
    assert_crash_in_push_recorded_nothing_twice(&crash_then_restart("push", false));
}

/// A world with the counting kind `tally` and one request of it per name in `files` (in that
/// order, sharing one resource), and what a `--until-empty` run with fail point `stage` did.
fn tallies_run_at_fail_point(files: &[&str], stage: &str) -> (World, RunOutput) {
    let world = World::new().build();
    add_kinds(&world, &[("tally", &counting_handler(&world, ""), "")]);
    for file in files {
        world.submit(file, "kind: tally\n");
    }
    let mut run = world.run_command(world.remote_arg(), &["--until-empty"]);
    run.env("GIT_DISPATCH_FAILPOINT", stage);
    let out = world.spawn(run).wait(DEADLINE);
    (world, out)
}

#[test]
fn stale_branch_lock_left_by_a_crash_does_not_stop_the_restart() {
    // A SIGKILL while libgit2 moves the dispatcher's branch leaves `refs/heads/main.lock` in the bare
    // clone (scripts/soak.sh hits this with random kills). No fail point stops exactly there, so the
    // test crashes after a commit and then leaves the lock file such a kill leaves. Only the process
    // holding `dispatcher.lock` may touch the workdir, so the lock cannot belong to anyone alive.
    let (world, crashed) =
        tallies_run_at_fail_point(&["locked-a.yml", "locked-b.yml"], "committed");
    assert_eq!(crashed.signal, Some(9), "{crashed}");
    // What such a kill leaves (seen in a soak run): an empty lock file next to the branch.
    let lock = world.work.join("repo.git/refs/heads/main.lock");
    fs::write(&lock, "").expect("leave a stale lock");

    world.run(&[]).assert_exit(0);

    let clone = world.fresh_clone();
    assert_each_recorded_once(&clone, &["locked-a.yml", "locked-b.yml"]);
    assert_eq!(clone.status("locked-a")["state"], "succeeded");
    assert_eq!(
        runs(&world, "locked-a"),
        ["1"],
        "`locked-a` did not run exactly once"
    );
    // `locked-b` may have been running when the crash hit (outcomes are recorded while the next
    // request runs): then it is `abandoned`; either way it ran at most once.
    let b = clone.status("locked-b");
    match b["state"].as_str() {
        Some("succeeded") => assert_eq!(runs(&world, "locked-b"), ["1"]),
        Some("abandoned") => assert!(runs(&world, "locked-b").len() <= 1),
        other => panic!("`locked-b` is {other:?}: {b:#}"),
    }
    assert_local_branch_is_the_remote(&world);
}

#[test]
fn a_pack_of_outcomes_that_cannot_be_written_leaves_the_branch_on_disk_and_loses_nothing() {
    // The fail point makes every write of a pack of outcomes fail, as a full disk would: the
    // dispatcher stops with the error, its branch still names a commit it has on disk (the retry at
    // exit must not move it to the commits in memory), and a restart records each request once
    // from the journal, without running it again (one whose handler the stop cut short is
    // `abandoned`, as after a crash).
    let (world, failed) = tallies_run_at_fail_point(&["full-a.yml", "full-b.yml"], "write-pack");
    assert!(
        failed.code.is_some_and(|code| code != 0),
        "the dispatcher did not fail: {failed}"
    );
    assert!(failed.stderr.contains("could not write a pack"), "{failed}");
    let work = world.work.join("repo.git");
    let tip = git_dir(&world, &work, &["rev-parse", "refs/heads/main"]);
    git_dir(
        &world,
        &work,
        &["cat-file", "-e", &format!("{tip}^{{tree}}")],
    );
    assert!(
        outcome_ids(&world, &world.remote).is_empty(),
        "outcomes reached the remote"
    );

    world.run(&[]).assert_exit(0);

    let clone = world.fresh_clone();
    assert_each_recorded_once(&clone, &["full-a.yml", "full-b.yml"]);
    assert_eq!(clone.status("full-a")["state"], "succeeded");
    assert_eq!(runs(&world, "full-a"), ["1"], "`full-a` did not run once");
    match clone.status("full-b")["state"].as_str() {
        Some("succeeded") => assert_eq!(runs(&world, "full-b"), ["1"]),
        Some("abandoned") => assert!(runs(&world, "full-b").len() <= 1, "`full-b` ran again"),
        state => panic!("`full-b` is {state:?}"),
    }
    assert_local_branch_is_the_remote(&world);
}

#[test]
fn a_journal_entry_that_cannot_be_synced_starts_no_handler_and_the_restart_runs_it() {
    // The handler is started while its entry is synced, but waits for the sync: when it fails (the
    // fail point, as a failing disk would), the handler never runs, the dispatcher stops with the
    // error, and the entry goes, so that a restart runs the request once.
    let (world, failed) = tallies_run_at_fail_point(&["sync-a.yml"], "sync-entry");
    assert!(
        failed.code.is_some_and(|code| code != 0),
        "the dispatcher did not fail: {failed}"
    );
    assert!(
        failed.stderr.contains("fail point `sync-entry`"),
        "{failed}"
    );
    assert_eq!(
        runs(&world, "sync-a"),
        Vec::<String>::new(),
        "the handler ran although its entry was not synced:\n{failed}"
    );
    assert!(
        outcome_ids(&world, &world.remote).is_empty(),
        "an outcome reached the remote:\n{failed}"
    );

    world.run(&[]).assert_exit(0);

    let clone = world.fresh_clone();
    assert_each_recorded_once(&clone, &["sync-a.yml"]);
    assert_eq!(clone.status("sync-a")["state"], "succeeded");
    assert_eq!(runs(&world, "sync-a"), ["1"], "`sync-a` did not run once");
}
