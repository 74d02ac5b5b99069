//! Retries: a failed attempt is retried with a log of its own until it succeeds or its retries run
//! out; an idempotent kind interrupted by a crash runs again as attempt 2; a rejected request is never
//! run or retried.

use super::{
    CRASH_NOTE, DEADLINE, assert_each_recorded_once, assert_local_branch_is_the_remote,
    counting_handler, runs,
};
use crate::support::{World, add_kinds, log_file};

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
