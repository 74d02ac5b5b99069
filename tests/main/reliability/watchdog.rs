//! The stale-run watchdog: a run whose worker never reports (the `stuck` fail point) is recorded
//! `abandoned` with its handler's output kept, and gives its slot back to the runs after it.

use super::DEADLINE;
use crate::support::{DEFAULT_INDEX, World, log_file};

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
