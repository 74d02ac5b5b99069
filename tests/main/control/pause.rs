//! `pause`/`resume`: while `control.yml` pauses the inbox no dispatcher starts a request and none is
//! rejected (they queue), a run in flight finishes and is recorded, `/healthz` answers 503 with the
//! reason and `/metrics` says paused; `resume` lets the queue run. Asking twice changes nothing.

use super::{DEADLINE, operate};
use crate::support::{GitDaemon, World, add_kinds, free_port, http_get, metric, wait_until};

/// A kind `hold` whose handler marks `markers/started-ID`, then waits for `markers/release`.
fn world_with_a_hold_kind() -> World {
    let world = World::new().build();
    let markers = world.markers.display();
    add_kinds(
        &world,
        &[(
            "hold",
            &format!(
                "#!/bin/sh\ntouch '{markers}/started-'\"$DISPATCH_ID\"\necho \"held $DISPATCH_ID\"\n\
                 while [ ! -e '{markers}/release' ]; do sleep 0.05; done\necho released\n"
            ),
            "",
        )],
    );
    world
}

#[test]
fn paused_nothing_starts_or_is_rejected_the_run_in_flight_finishes_and_resume_runs_the_queue() {
    let world = world_with_a_hold_kind();
    let daemon = GitDaemon::serve(&world);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut dispatcher = world.spawn(world.run_command(
        &daemon.url(),
        &["--poll-interval", "200ms", "--metrics-addr", &addr],
    ));
    world.submit("first.yml", "kind: hold\nid: first\n");
    let started = wait_until(DEADLINE, || world.markers.join("started-first").exists());
    assert!(
        started,
        "first never started:\n{}",
        dispatcher.output_so_far()
    );

    let paused = operate(&world, &["pause", "--reason", "database migration"]);
    paused.assert_exit(0);
    assert!(
        dispatcher.wait_for_output("not starting requests: paused", DEADLINE),
        "the dispatcher never said it is paused:\n{}",
        dispatcher.output_so_far()
    );
    let health = http_get(port, "/healthz").expect("/healthz answers");
    assert_eq!(health.0, 503, "{health:?}");
    assert!(health.1.contains("database migration"), "{health:?}");
    assert_eq!(metric(port, "git_dispatch_paused"), Some(1.0));
    assert_eq!(metric(port, "git_dispatch_blocked"), Some(1.0));

    let status = operate(&world, &["status"]);
    status.assert_exit(0);
    assert!(
        status
            .stdout
            .contains("blocked: paused by Sam Submitter <sam@example.test> since "),
        "{status}"
    );
    assert!(status.stdout.contains(": database migration"), "{status}");

    // Queued while paused: one that would run, one that would be rejected.
    world.submit("second.yml", "kind: hold\nid: second\n");
    world.submit("bad.yml", "kind: no-such-kind\nid: bad\n");
    let seen = wait_until(DEADLINE, || {
        metric(port, "git_dispatch_queue_depth") == Some(3.0)
    });
    assert!(
        seen,
        "the dispatcher never saw the queue:\n{}",
        dispatcher.output_so_far()
    );
    // The run in flight finishes and is recorded while paused.
    std::fs::write(world.markers.join("release"), "").expect("release");
    let watch = world.clone_from(&daemon.url());
    let recorded = wait_until(DEADLINE, || {
        watch.sync();
        !watch.statuses().is_empty()
    });
    assert!(
        recorded,
        "first was not recorded:\n{}",
        dispatcher.output_so_far()
    );
    assert_eq!(watch.status("first")["state"], "succeeded");
    // Looked at again with the outcome pushed: still nothing else started or was rejected.
    let looked = wait_until(DEADLINE, || {
        metric(port, "git_dispatch_queue_depth") == Some(2.0)
    });
    assert!(looked, "{}", dispatcher.output_so_far());
    assert!(
        !world.markers.join("started-second").exists(),
        "second started while paused"
    );
    watch.sync();
    assert_eq!(watch.statuses().len(), 1, "{:?}", watch.statuses());

    // Twice is harmless and says so.
    let again = operate(&world, &["pause", "--reason", "database migration"]);
    again.assert_exit(0);
    assert!(again.stderr.contains("already paused"), "{again}");

    operate(&world, &["resume"]).assert_exit(0);
    let ran = wait_until(DEADLINE, || {
        watch.sync();
        watch.statuses().len() == 3
    });
    assert!(
        ran,
        "the queue did not run after resume:\n{}",
        dispatcher.output_so_far()
    );
    assert_eq!(watch.status("second")["state"], "succeeded");
    assert_eq!(watch.status("bad")["state"], "rejected");
    assert!(
        dispatcher
            .output_so_far()
            .contains("starting requests again")
    );
    let healthy = wait_until(DEADLINE, || {
        http_get(port, "/healthz").is_some_and(|(code, _)| code == 200)
    });
    assert!(healthy, "/healthz stayed 503 after resume");
    assert_eq!(metric(port, "git_dispatch_paused"), Some(0.0));
    let status = operate(&world, &["status"]);
    assert!(!status.stdout.contains("blocked:"), "{status}");
    // Who paused and resumed is in the history, each a commit of `control.yml` alone.
    let subjects = watch.log_subjects();
    assert!(
        subjects
            .iter()
            .any(|s| s.starts_with("pause: ") && s.contains("database migration")),
        "{subjects:?}"
    );
    assert!(
        subjects.iter().any(|s| s.starts_with("resume")),
        "{subjects:?}"
    );
    let resumed = operate(&world, &["resume"]);
    resumed.assert_exit(0);
    assert!(resumed.stderr.contains("not paused"), "{resumed}");
}

#[test]
fn paused_until_empty_stops_without_running_or_rejecting_anything() {
    let world = World::new().build();
    operate(&world, &["pause"]).assert_exit(0);
    world.submit("one.yml", "kind: echo\nid: one\n");
    world.submit("bad.yml", "kind: nope\nid: bad\n");
    let out = world.run(&[]);
    out.assert_exit(0);
    assert!(
        out.stderr.contains("not starting requests: paused"),
        "{out}"
    );
    let clone = world.fresh_clone();
    assert!(clone.statuses().is_empty(), "{:?}", clone.statuses());
    assert_eq!(clone.ls("requests").len(), 3, "{:?}", clone.ls("requests"));
}
