//! Reliability: whatever happens to the dispatcher or the remote, no request is lost and none is recorded
//! twice. The dispatcher is crashed at each fail point (`GIT_DISPATCH_FAILPOINT`, debug builds) and
//! restarted on the same workdir; attempts are retried with their own logs; a push refused by a hook or
//! a remote that goes away leaves the outcome committed locally until it can be pushed; hostile files in
//! the inbox are each recorded once as `rejected`; a second dispatcher cannot share a workdir.
//!
//! Every test asserts on a fresh clone of the remote; the crash tests also compare the dispatcher's own
//! branch (`WORK/repo.git`) with the remote's, which is how an unpushed outcome would show. Where a real
//! server matters the remote is served by `PortDaemon` (below) rather than the harness's `GitDaemon`:
//! it can come back on the same port, and killing it really closes the port.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::{
    Checkout, DEFAULT_INDEX, RunOutput, World, add_kinds, free_port, git_command, log_file,
    processed, sha256_hex, wait_until,
};

/// How long a dispatcher process of these tests may run before it is killed and the test fails.
const DEADLINE: Duration = Duration::from_secs(40);

/// The start of the note the dispatcher appends to the log of an attempt a crash interrupted.
const CRASH_NOTE: &str = "[git-dispatch: the dispatcher stopped while attempt 1 ran";

/// `handlers/<name>`: appends `$DISPATCH_ATTEMPT` to `markers/runs-<id>` (so a test can count runs),
/// prints one line, then runs `tail` (shell, may be empty).
fn counting_handler(world: &World, tail: &str) -> String {
    format!(
        "#!/bin/sh\necho \"$DISPATCH_ATTEMPT\" >> '{}/runs-'\"$DISPATCH_ID\"\n\
         echo \"attempt $DISPATCH_ATTEMPT of $DISPATCH_ID\"\n{tail}",
        world.markers.display()
    )
}

/// How many times the counting handler ran for `id` (the attempt numbers it saw).
fn runs(world: &World, id: &str) -> Vec<String> {
    fs::read_to_string(world.markers.join(format!("runs-{id}")))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// `git --git-dir DIR args...` in the world's hermetic environment; trimmed stdout.
fn git_dir(world: &World, dir: &Path, args: &[&str]) -> String {
    let mut cmd = git_command(&world.home, &world.root);
    cmd.arg("--git-dir").arg(dir).args(args);
    let out = cmd.output().expect("spawn git");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
}

/// The `Dispatch-Id` trailers of `refs/heads/main` in the bare repository `dir`, newest first.
fn outcome_ids(world: &World, dir: &Path) -> Vec<String> {
    git_dir(
        world,
        dir,
        &[
            "log",
            "--format=%(trailers:key=Dispatch-Id,valueonly,separator=)",
            "refs/heads/main",
        ],
    )
    .lines()
    .map(str::trim)
    .filter(|id| !id.is_empty())
    .map(str::to_owned)
    .collect()
}

/// The dispatcher's local branch is the remote's: every outcome it recorded is pushed, and it keeps no
/// commit of its own.
fn assert_local_branch_is_the_remote(world: &World) {
    let local = git_dir(
        world,
        &world.work.join("repo.git"),
        &["rev-parse", "refs/heads/main"],
    );
    let remote = git_dir(world, &world.remote, &["rev-parse", "refs/heads/main"]);
    assert_eq!(
        local, remote,
        "the dispatcher's branch is not the remote's (unpushed or stray commits)"
    );
}

/// Every `processed/*.status.json` of `clone`, grouped by its `request` field (`requests/<file>`).
fn statuses_by_request(clone: &Checkout) -> BTreeMap<String, Vec<(String, Value)>> {
    let mut by_request: BTreeMap<String, Vec<(String, Value)>> = BTreeMap::new();
    for (key, status) in clone.statuses() {
        let request = status["request"]
            .as_str()
            .unwrap_or_else(|| panic!("status `{key}` has no `request`: {status:#}"))
            .to_owned();
        by_request.entry(request).or_default().push((key, status));
    }
    by_request
}

/// The exactly-once invariants on a fresh clone: the inbox is empty; each of `files` (names in
/// `requests/`) has exactly one status and there are no others; each status has exactly one outcome
/// commit and no commit records a key twice. Returns each file's (key, status).
fn assert_each_recorded_once(
    clone: &Checkout,
    files: &[&str],
) -> BTreeMap<String, (String, Value)> {
    assert_eq!(clone.ls("requests"), [".gitkeep"], "the inbox is not empty");
    let by_request = statuses_by_request(clone);
    let expected: BTreeSet<String> = files.iter().map(|f| format!("requests/{f}")).collect();
    let recorded: BTreeSet<String> = by_request.keys().cloned().collect();
    assert_eq!(recorded, expected, "requests recorded vs submitted");
    let mut once = BTreeMap::new();
    for (request, mut statuses) in by_request {
        assert_eq!(
            statuses.len(),
            1,
            "`{request}` has {} statuses: {statuses:#?}",
            statuses.len()
        );
        let file = request.trim_start_matches("requests/").to_owned();
        once.insert(file, statuses.pop().expect("length checked"));
    }

    let ids = clone.trailers("Dispatch-Id");
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(
        unique.len(),
        ids.len(),
        "an id has two outcome commits: {ids:?}"
    );
    let keys: BTreeSet<&String> = once.values().map(|(key, _)| key).collect();
    assert_eq!(unique, keys, "outcome commits vs status files");
    once
}

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

    world.run_via(&url, &[]).assert_exit(0);

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
    /// Each of `keys` succeeded once, except at most one that the crash interrupted while its handler
    /// ran: that one is `abandoned` with the crash note and was not run again.
    fn assert_at_most_one_interrupted(&self, keys: &[&str]) {
        let mut abandoned = Vec::new();
        for key in keys {
            let (_, status) = self
                .once
                .values()
                .find(|(k, _)| k == key)
                .unwrap_or_else(|| panic!("no outcome for `{key}`"));
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
        let (_, status) = self
            .once
            .values()
            .find(|(k, _)| k == key)
            .unwrap_or_else(|| panic!("no outcome for `{key}`"));
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
        let (_, status) = self
            .once
            .values()
            .find(|(k, _)| k == key)
            .unwrap_or_else(|| panic!("no outcome for `{key}`"));
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
fn idempotent_kind_interrupted_by_a_crash_runs_again_as_attempt_2() {
    let world = World::new().build();
    add_kinds(
        &world,
        &[(
            "redo",
            &counting_handler(&world, ""),
            "  idempotent: true\n  retries: 1\n  retry_backoff: 100ms\n",
        )],
    );
    world.submit("redo-me.yml", "kind: redo\n");

    let mut crashing = world.run_command(world.remote_arg(), &["--until-empty"]);
    crashing.env("GIT_DISPATCH_FAILPOINT", "running");
    let crashed = world.spawn(crashing).wait(DEADLINE);
    assert_eq!(crashed.signal, Some(9), "{crashed}");
    world.run(&[]).assert_exit(0);

    let clone = world.fresh_clone();
    assert_each_recorded_once(&clone, &["redo-me.yml"]);
    let status = clone.status("redo-me");
    assert_eq!(status["state"], "succeeded", "{status:#}");
    assert_eq!(status["attempts"], 2, "{status:#}");
    assert_eq!(status["log"], log_file("redo-me", 2), "{status:#}");
    let first = clone
        .read_string(&log_file("redo-me", 1))
        .expect("attempt 1's partial log is committed");
    let last = first
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    assert!(
        last.starts_with(CRASH_NOTE),
        "attempt 1's log does not end with the crash note:\n{first}"
    );
    let second = clone
        .read_string(&log_file("redo-me", 2))
        .expect("attempt 2's log is committed");
    assert!(second.contains("attempt 2 of redo-me"), "log:\n{second}");
    assert_eq!(
        runs(&world, "redo-me").last().map(String::as_str),
        Some("2"),
        "the last run was not attempt 2"
    );
    assert_local_branch_is_the_remote(&world);
}

#[test]
fn failed_attempt_is_retried_with_its_own_log_until_it_succeeds() {
    let world = World::new().build();
    add_kinds(
        &world,
        &[(
            "flaky",
            &counting_handler(&world, "[ \"$DISPATCH_ATTEMPT\" -ge 2 ]\n"),
            "  retries: 2\n  retry_backoff: 100ms\n",
        )],
    );
    world.submit("wobbly.yml", "kind: flaky\n");

    world.run(&[]).assert_exit(0);

    let clone = world.fresh_clone();
    assert_each_recorded_once(&clone, &["wobbly.yml"]);
    let status = clone.status("wobbly");
    assert_eq!(status["state"], "succeeded", "{status:#}");
    assert_eq!(status["attempts"], 2, "{status:#}");
    assert_eq!(status["log"], log_file("wobbly", 2), "{status:#}");
    let first = clone
        .read_string(&log_file("wobbly", 1))
        .expect("attempt 1's log");
    assert!(first.contains("attempt 1 of wobbly"), "log 1:\n{first}");
    assert!(
        !first.contains("attempt 2"),
        "log 1 holds attempt 2:\n{first}"
    );
    let second = clone
        .read_string(&log_file("wobbly", 2))
        .expect("attempt 2's log");
    assert!(second.contains("attempt 2 of wobbly"), "log 2:\n{second}");
    assert!(
        !second.contains("attempt 1"),
        "log 2 holds attempt 1:\n{second}"
    );
    assert_eq!(
        clone.read(&log_file("wobbly", 3)),
        None,
        "a third attempt ran"
    );
    assert_eq!(runs(&world, "wobbly"), ["1", "2"]);
}

#[test]
fn always_failing_handler_is_failed_after_its_retries() {
    let world = World::new().build();
    add_kinds(
        &world,
        &[(
            "doomed",
            &counting_handler(&world, "exit 4\n"),
            "  retries: 1\n  retry_backoff: 100ms\n",
        )],
    );
    world.submit("hopeless.yml", "kind: doomed\n");

    world.run(&[]).assert_exit(0);

    let clone = world.fresh_clone();
    assert_each_recorded_once(&clone, &["hopeless.yml"]);
    let status = clone.status("hopeless");
    assert_eq!(status["state"], "failed", "{status:#}");
    assert_eq!(status["attempts"], 2, "{status:#}");
    assert_eq!(status["exit_code"], 4, "{status:#}");
    for attempt in [1, 2] {
        let log = log_file("hopeless", attempt);
        let text = clone
            .read_string(&log)
            .unwrap_or_else(|| panic!("no `{log}`"));
        assert!(
            text.contains(&format!("attempt {attempt} of hopeless")),
            "`{log}`:\n{text}"
        );
    }
    assert_eq!(
        clone.read(&log_file("hopeless", 3)),
        None,
        "a third attempt ran"
    );
    assert_eq!(runs(&world, "hopeless"), ["1", "2"]);
}

#[test]
fn rejected_request_is_never_run_or_retried() {
    let world = World::new().build();
    add_kinds(
        &world,
        &[(
            "patient",
            &counting_handler(&world, ""),
            "  retries: 3\n  retry_backoff: 100ms\n",
        )],
    );
    world.submit("painted.yml", "kind: patient\ncolour: blue\n");

    world.run(&[]).assert_exit(0);

    let clone = world.fresh_clone();
    assert_each_recorded_once(&clone, &["painted.yml"]);
    // The request's envelope is invalid, so it is recorded under `<stem>~N`: find it by its file.
    let (key, status) = clone.rejected_for("painted.yml");
    assert_eq!(status["attempts"], 0, "{status:#}");
    let log_path = log_file(&key, 1);
    assert_eq!(status["log"], log_path.as_str(), "{status:#}");
    let log = clone.read_string(&log_path).expect("the rejection's log");
    assert!(
        log.contains("colour") && log.contains("requests/painted.yml"),
        "the log does not hold the error:\n{log}"
    );
    assert_eq!(
        clone.read(&log_file(&key, 2)),
        None,
        "a rejection was retried"
    );
    assert_eq!(
        runs(&world, "painted"),
        Vec::<String>::new(),
        "the handler ran"
    );
}

#[test]
fn push_refused_by_a_pre_receive_hook_exits_3_and_the_next_run_pushes_it_once() {
    let world = World::new().build();
    add_kinds(&world, &[("tally", &counting_handler(&world, ""), "")]);
    world.submit("held.yml", "kind: tally\n");
    let daemon = PortDaemon::serve(&world);
    let hook = world.remote.join("hooks/pre-receive");
    fs::write(
        &hook,
        "#!/bin/sh\necho 'pushes are frozen for maintenance' >&2\nexit 1\n",
    )
    .expect("write the hook");
    fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod the hook");
    let before = git_dir(&world, &world.remote, &["rev-parse", "refs/heads/main"]);

    let refused = world.run_via(&daemon.url(), &["--push-attempts", "2"]);
    refused.assert_exit(3);
    assert!(refused.stderr.contains("not pushed"), "{refused}");
    assert!(
        refused.stderr.contains("held"),
        "the message does not name the unpushed outcome:\n{refused}"
    );
    assert_eq!(
        git_dir(&world, &world.remote, &["rev-parse", "refs/heads/main"]),
        before,
        "the remote moved although its hook refuses every push"
    );
    let clone = world.clone_from(&daemon.url());
    assert_eq!(clone.ls("requests"), [".gitkeep", "held.yml"]);
    assert_eq!(clone.statuses(), Vec::new(), "a status reached the remote");

    fs::remove_file(&hook).expect("remove the hook");
    world.run_via(&daemon.url(), &[]).assert_exit(0);

    let clone = world.clone_from(&daemon.url());
    assert_each_recorded_once(&clone, &["held.yml"]);
    assert_eq!(clone.status("held")["state"], "succeeded");
    assert_eq!(runs(&world, "held"), ["1"], "the handler ran again");
    assert_local_branch_is_the_remote(&world);
}

/// `git daemon --enable=receive-pack` serving the world's root on 127.0.0.1, on a port it can be started
/// on again after it was stopped. It runs the `git-daemon` program itself rather than `git daemon` (a
/// wrapper that leaves the real daemon running when it is killed), so killing it closes the port.
/// Killed on drop.
struct PortDaemon {
    child: Child,
    port: u16,
}

impl PortDaemon {
    /// Serves on a free port (a few tries, as the port may be taken before the daemon binds it).
    fn serve(world: &World) -> PortDaemon {
        (1..=5)
            .find_map(|attempt| PortDaemon::start(world, free_port(), &format!("serve-{attempt}")))
            .expect("git daemon did not start")
    }

    /// Serves on 127.0.0.1:`port`; `None` if it is not listening within 10 s.
    fn start(world: &World, port: u16, label: &str) -> Option<PortDaemon> {
        let exec_path = {
            let mut cmd = git_command(&world.home, &world.root);
            cmd.arg("--exec-path");
            let out = cmd.output().expect("spawn git --exec-path");
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        let log = fs::File::create(world.root.join(format!("daemon-{port}-{label}.log")))
            .expect("create daemon log");
        // The hermetic environment of `git_command`, for the program itself.
        let hermetic = git_command(&world.home, &world.root);
        let mut cmd = Command::new(Path::new(&exec_path).join("git-daemon"));
        cmd.current_dir(&world.root).env_clear().envs(
            hermetic
                .get_envs()
                .filter_map(|(key, value)| Some((key, value?))),
        );
        cmd.args(["--reuseaddr", "--export-all", "--enable=receive-pack"])
            .arg("--informative-errors")
            .arg(format!("--base-path={}", world.root.display()))
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let mut child = cmd.spawn().expect("spawn git-daemon");
        let mut exited = false;
        let ready = wait_until(Duration::from_secs(10), || {
            exited = child.try_wait().expect("try_wait").is_some();
            exited || TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        if ready && !exited {
            return Some(PortDaemon { child, port });
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// `git://127.0.0.1:<port>/remote.git`
    fn url(&self) -> String {
        format!("git://127.0.0.1:{}/remote.git", self.port)
    }
}

impl Drop for PortDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn polling_loop_survives_a_remote_outage_and_pushes_when_it_returns() {
    let world = World::new().build();
    let markers = world.markers.display().to_string();
    // Runs until the test lets it finish (bounded: 30 s), so the outage happens while it runs.
    let gated = format!(
        "#!/bin/sh\ntouch '{markers}/started-'\"$DISPATCH_ID\"\ni=0\n\
         while [ ! -e '{markers}/go' ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done\n\
         echo gated done\n"
    );
    add_kinds(&world, &[("gated", &gated, "")]);
    world.submit("outage.yml", "kind: gated\n");

    let daemon = PortDaemon::serve(&world);
    let (port, url) = (daemon.port, daemon.url());
    let mut dispatcher = world.spawn(world.run_command(&url, &["--poll-interval", "200ms"]));
    let started = world.markers.join("started-outage");
    let running = wait_until(DEADLINE, || started.exists() || !dispatcher.running());
    assert!(
        running && started.exists(),
        "the handler never started: {}",
        dispatcher.output_so_far()
    );

    drop(daemon);
    assert!(
        wait_until(Duration::from_secs(10), || TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_err()),
        "the port still accepts connections after the daemon was killed"
    );
    fs::write(world.markers.join("go"), "").expect("let the handler finish");
    let local = world.work.join("repo.git");
    let recorded = wait_until(DEADLINE, || {
        outcome_ids(&world, &local).contains(&"outage".to_owned()) || !dispatcher.running()
    });
    assert!(
        recorded && dispatcher.running(),
        "the outcome was not committed locally while the remote was down: {}",
        dispatcher.output_so_far()
    );
    assert!(
        outcome_ids(&world, &world.remote).is_empty(),
        "the outcome reached the remote while its server was down"
    );

    let _daemon = wait_until_some(Duration::from_secs(20), || {
        PortDaemon::start(&world, port, "second")
    })
    .expect("git daemon did not start again on the same port");
    let pushed = wait_until(DEADLINE, || {
        outcome_ids(&world, &world.remote).contains(&"outage".to_owned()) || !dispatcher.running()
    });
    assert!(
        pushed && dispatcher.running(),
        "the outcome did not reach the remote after it came back: {}",
        dispatcher.output_so_far()
    );

    dispatcher.terminate();
    dispatcher.wait(DEADLINE).assert_exit(0);
    let clone = world.clone_from(&url);
    assert_each_recorded_once(&clone, &["outage.yml"]);
    assert_eq!(clone.status("outage")["state"], "succeeded");
    assert_local_branch_is_the_remote(&world);
}

/// Retries `attempt` until it returns `Some` or `timeout` passes.
fn wait_until_some<T>(timeout: Duration, mut attempt: impl FnMut() -> Option<T>) -> Option<T> {
    let mut found = None;
    wait_until(timeout, || {
        found = attempt();
        found.is_some()
    });
    found
}

/// A fixed pseudo-random byte sequence (xorshift64*), so the test is the same on every run.
fn pseudo_random_bytes(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// A YAML "billion laughs": nine levels of anchors, each a list of nine aliases of the one before.
fn alias_bomb() -> String {
    let mut yaml = String::from("kind: echo\n");
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
    for (level, name) in names.iter().enumerate() {
        let items = if level == 0 {
            vec!["\"lol\"".to_owned(); 9]
        } else {
            vec![format!("*{}", names[level - 1]); 9]
        };
        yaml.push_str(&format!("{name}: &{name} [{}]\n", items.join(",")));
    }
    yaml
}

#[test]
fn hostile_inbox_is_drained_with_one_rejection_each_and_nothing_escapes() {
    let world = World::new().build();
    let mut big = b"kind: echo\nparams:\n  blob: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 10 * 1024 * 1024));
    big.push(b'\n');
    let bomb = alias_bomb();
    let binary = pseudo_random_bytes(4096);
    let long_id = format!("kind: echo\nid: {}\n", "x".repeat(129));
    let rejected: Vec<(&str, &[u8])> = vec![
        ("sub/x.yml", b"kind: echo\n"),
        ("notes.txt", b"kind: echo\n"),
        ("big.yml", &big),
        ("bomb.yml", bomb.as_bytes()),
        ("bin.yml", &binary),
        ("latin1.yml", b"kind: echo\nparams:\n  name: \"caf\xe9\"\n"),
        ("empty.yml", b""),
        ("list.yml", b"- kind: echo\n- kind: count\n"),
        ("scalar.yml", b"just a string\n"),
        ("dupkeys.yml", b"kind: echo\nkind: count\n"),
        ("kind-escape.yml", b"kind: \"../x\"\n"),
        ("id-slash.yml", b"kind: echo\nid: \"a/b\"\n"),
        ("id-long.yml", long_id.as_bytes()),
    ];
    let accepted: Vec<(&str, &[u8])> = vec![
        ("twin-1.yml", b"kind: echo\nid: twin\n"),
        ("crlf.yml", b"kind: echo\r\nparams:\r\n  name: crlf\r\n"),
        ("bom.yml", b"\xef\xbb\xbfkind: echo\nparams:\n  name: bom\n"),
    ];
    let submitter = &world.submitter;
    for (name, bytes) in rejected.iter().chain(&accepted) {
        submitter.write(&format!("requests/{name}"), bytes);
    }
    std::os::unix::fs::symlink("/etc/passwd", submitter.path("requests/passwd.yml"))
        .expect("create symlink");
    submitter.git(&["add", "-A", "requests"]);
    submitter.commit("a hostile batch");
    submitter.push();
    world.submit(
        "twin-2.yml",
        "kind: echo\nid: twin\nparams:\n  again: true\n",
    );
    let before = git_dir(&world, &world.remote, &["rev-parse", "refs/heads/main"]);

    world.run(&[]).assert_exit(0);

    let clone = world.fresh_clone();
    assert_eq!(clone.ls("requests"), [".gitkeep"], "the inbox is not empty");
    let by_request = statuses_by_request(&clone);
    let mut expected_rejected: Vec<&str> = rejected.iter().map(|(name, _)| *name).collect();
    expected_rejected.extend(["passwd.yml", "twin-2.yml"]);
    let mut seen = 0;
    for name in &expected_rejected {
        // A nested file may be recorded as the folder it is in: either path starts with `requests/sub`.
        let path = if *name == "sub/x.yml" {
            "requests/sub".to_owned()
        } else {
            format!("requests/{name}")
        };
        let statuses: Vec<&(String, Value)> = by_request
            .iter()
            .filter(|(request, _)| **request == path || request.starts_with(&format!("{path}/")))
            .flat_map(|(_, s)| s)
            .collect();
        assert_eq!(
            statuses.len(),
            1,
            "`{path}` has {} statuses: {statuses:#?}",
            statuses.len()
        );
        let (key, status) = statuses[0];
        assert_eq!(status["state"], "rejected", "`{path}`: {status:#}");
        assert!(
            status["error"].as_str().is_some_and(|e| e.contains(&path)),
            "the error does not name `{path}`: {status:#}"
        );
        assert!(!key.contains('/'), "record key `{key}` has a slash");
        seen += 1;
    }
    for (name, _) in &accepted {
        let path = format!("requests/{name}");
        let statuses = by_request.get(&path).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(
            statuses.len(),
            1,
            "`{path}` has {} statuses: {statuses:#?}",
            statuses.len()
        );
        assert_eq!(
            statuses[0].1["state"], "succeeded",
            "`{path}`: {:#}",
            statuses[0].1
        );
        seen += 1;
    }
    let total: usize = by_request.values().map(Vec::len).sum();
    assert_eq!(
        total, seen,
        "statuses of requests nobody submitted: {by_request:#?}"
    );

    assert_eq!(clone.status("twin")["request"], "requests/twin-1.yml");
    assert_eq!(clone.status("twin~1")["request"], "requests/twin-2.yml");
    let twin_commits = clone.git(&[
        "log",
        "--format=%H",
        "--",
        &processed("twin", "yml"),
        &processed("twin", "status.json"),
        &log_file("twin", 1),
    ]);
    assert_eq!(
        twin_commits.lines().count(),
        1,
        "the first `twin` outcome was touched again"
    );

    let ids = clone.trailers("Dispatch-Id");
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(
        unique.len(),
        ids.len(),
        "an id has two outcome commits: {ids:?}"
    );
    assert_eq!(ids.len(), total, "outcome commits vs statuses");

    let changes = clone.git(&["diff", "--no-renames", "--name-status", &before, "HEAD"]);
    for line in changes.lines() {
        let (change, path) = line.split_once('\t').expect("name-status line");
        let allowed = (change == "D" && path.starts_with("requests/"))
            || (change == "A" && (path.starts_with("processed/") || path.starts_with("logs/")));
        assert!(
            allowed,
            "the run changed `{path}` ({change}); all changes:\n{changes}"
        );
    }
    let tree = clone.git(&["ls-tree", "-r", "HEAD"]);
    assert!(
        !tree
            .lines()
            .any(|l| l.starts_with("120000") || l.starts_with("160000")),
        "a symlink or submodule is left in the tree:\n{tree}"
    );
    assert_no_file_contains(&clone.dir, b"root:x:0:0");
}

/// No regular file under `dir` (outside `.git`, symlinks followed) contains `needle`.
fn assert_no_file_contains(dir: &Path, needle: &[u8]) {
    for entry in fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("dir entry").path();
        if path.file_name().is_some_and(|n| n == ".git") {
            continue;
        }
        if path.is_dir() {
            assert_no_file_contains(&path, needle);
        } else if let Ok(bytes) = fs::read(&path) {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "`{}` holds `{}`",
                path.display(),
                String::from_utf8_lossy(needle)
            );
        }
    }
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

#[test]
fn a_workdir_lock_held_for_a_moment_is_waited_for() {
    // What a dispatcher killed while it started a child leaves: its lock held by that child until
    // the child executes its program (the full suite under load hit this after fail points).
    let world = World::new().build();
    world.submit("after-lock.yml", "kind: echo\nparams:\n  message: hi\n");
    fs::create_dir_all(&world.work).expect("workdir");
    let mut holder = std::process::Command::new("flock")
        .arg(world.work.join("dispatcher.lock"))
        .args(["-c", "echo held; sleep 0.5"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run flock");
    let mut held = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().expect("piped")),
        &mut held,
    )
    .expect("flock says it holds the lock");
    assert_eq!(held, "held\n");

    world.run(&[]).assert_exit(0);
    assert!(holder.wait().expect("flock ends").success());
    assert_eq!(
        world.fresh_clone().status("after-lock")["state"],
        "succeeded"
    );
}

#[test]
fn second_dispatcher_on_the_same_workdir_exits_2_in_use() {
    let world = World::new().build();
    let mut first =
        world.spawn(world.run_command(world.remote_arg(), &["--poll-interval", "200ms"]));
    assert!(
        first.wait_for_output("serving", DEADLINE),
        "the first dispatcher is not serving: {}",
        first.output_so_far()
    );

    let second = world.run(&[]);
    second.assert_exit(2);
    assert!(second.stderr.contains("in use"), "{second}");

    assert!(
        first.running(),
        "the first dispatcher stopped: {}",
        first.output_so_far()
    );
    first.terminate();
    first.wait(DEADLINE).assert_exit(0);
}

/// A world with the kind `hangs`: a handler that prints a line, timeout 1 s, grace 500 ms.
fn world_with_a_kind_that_gets_stuck() -> World {
    let world = World::new().build();
    world.handler("hangs.sh", "#!/bin/sh\necho 'handler done'\n");
    world.index(&format!(
        "{DEFAULT_INDEX}hangs:\n  handler: hangs.sh\n  timeout: 1s\n  grace: 500ms\n"
    ));
    world.publish("a kind whose runs get stuck");
    world
}

#[test]
fn a_stuck_run_is_recorded_abandoned_by_the_watchdog() {
    // The `stuck` fail point makes the run's worker hang after its handler exited, so no report ever
    // comes: only the stale-run watchdog (timeout plus twice the grace, no live handler process) can
    // take the request out of flight.
    let world = world_with_a_kind_that_gets_stuck();
    world.submit("stuck-one.yml", "kind: hangs\n");
    let mut cmd = world.run_command(world.remote_arg(), &["--until-empty"]);
    cmd.env("GIT_DISPATCH_FAILPOINT", "stuck");
    let out = world.output(cmd);
    out.assert_exit(0);
    assert!(out.stderr.contains("watchdog"), "{out}");

    let clone = world.fresh_clone();
    let status = clone.status("stuck-one");
    assert_eq!(status["state"], "abandoned", "{status:#}");
    let error = status["error"].as_str().unwrap_or_default();
    assert!(error.contains("watchdog"), "{error}");
    let log = clone.read_string(&log_file("stuck-one", 1)).expect("a log");
    assert!(
        log.starts_with("handler done\n"),
        "the handler's output is kept: {log}"
    );
    assert!(
        log.contains("stale-run watchdog"),
        "the log says why: {log}"
    );
    assert_eq!(clone.ls("requests"), [".gitkeep"], "the inbox is empty");
}

#[test]
fn a_stuck_run_does_not_keep_its_slot_from_the_runs_after_it() {
    // With one job, a worker that never reports holds the only slot: the watchdog that records its
    // run gives the slot back, or the next request would wait for it forever.
    let world = world_with_a_kind_that_gets_stuck();
    world.submit("stuck-one.yml", "kind: hangs\nresource: r1\n");
    world.submit("stuck-two.yml", "kind: hangs\nresource: r2\n");
    let mut cmd = world.run_command(world.remote_arg(), &["--until-empty", "--jobs", "1"]);
    cmd.env("GIT_DISPATCH_FAILPOINT", "stuck");
    let out = world.spawn(cmd).wait(DEADLINE);
    out.assert_exit(0);

    let clone = world.fresh_clone();
    for key in ["stuck-one", "stuck-two"] {
        let status = clone.status(key);
        assert_eq!(status["state"], "abandoned", "`{key}`: {status:#}\n{out}");
    }
    assert_eq!(clone.ls("requests"), [".gitkeep"], "the inbox is empty");
}
