//! `cancel ID`: a queued request is recorded `cancelled` and never runs; one running on either of two
//! dispatchers is stopped there (its process group gone) and recorded `cancelled` with its partial
//! log, once; a finished or unknown id exits 1 with its state; twice is harmless; a `git rm` by hand
//! is a cancel by whoever committed it; a request whose dispatcher died while running it is
//! recorded `cancelled`, not `abandoned`, by the restarted dispatcher.

use super::{DEADLINE, operate};
use crate::support::fleet::{HOST_VAR, Member, outputs};
use crate::support::{GitDaemon, Strays, World, add_kinds, log_file, wait_until};

const SAM: &str = "Sam Submitter <sam@example.test>";

#[test]
fn a_queued_request_cancelled_is_recorded_cancelled_with_who_and_why_and_never_runs() {
    let world = World::new().build();
    world.submit("q-1.yml", "kind: echo\nid: q-1\n");
    let cancelled = operate(&world, &["cancel", "q-1", "--reason", "wrong database"]);
    cancelled.assert_exit(0);
    // Twice before any dispatcher looked: it says it was withdrawn already.
    let twice = operate(&world, &["cancel", "q-1"]);
    twice.assert_exit(0);
    assert!(twice.stderr.contains("withdrawn already"), "{twice}");

    // A dispatcher on a new workdir, which never saw the request queued, records it.
    world.run(&[]).assert_exit(0);
    let clone = world.fresh_clone();
    let status = clone.status("q-1");
    assert_eq!(status["state"], "cancelled", "{status:#}");
    assert_eq!(status["cancelled_by"], SAM, "{status:#}");
    assert_eq!(status["attempts"], 0, "{status:#}");
    let error = status["error"].as_str().unwrap_or_default();
    assert_eq!(error, format!("cancelled by {SAM}: wrong database"));
    let log = clone.read_string(&log_file("q-1", 1)).expect("a log");
    assert!(log.contains("it never ran"), "{log}");
    assert!(!log.contains("q-1:"), "the echo handler ran: {log}");
    assert_eq!(clone.trailers("Dispatch-State"), vec!["cancelled"]);
    let cancel_commit = clone.git(&["log", "-1", "--format=%H", "--grep=^cancel q-1"]);
    assert_eq!(status["cancelled_in"], cancel_commit.trim());

    // Once recorded: twice is harmless, and says by whom.
    let again = operate(&world, &["cancel", "q-1"]);
    again.assert_exit(0);
    assert!(again.stderr.contains("cancelled already"), "{again}");
    assert!(again.stderr.contains("Sam Submitter"), "{again}");
}

#[test]
fn a_finished_or_unknown_request_cannot_be_cancelled_and_exits_1_with_its_state() {
    let world = World::new().build();
    world.submit("done.yml", "kind: echo\nid: done\n");
    world.run(&[]).assert_exit(0);
    let finished = operate(&world, &["cancel", "done"]);
    finished.assert_exit(1);
    assert!(
        finished.stderr.contains("it is succeeded already"),
        "{finished}"
    );
    let unknown = operate(&world, &["cancel", "never-submitted"]);
    unknown.assert_exit(1);
    assert!(
        unknown
            .stderr
            .contains("there is no request `never-submitted`"),
        "{unknown}"
    );
    // Nothing was committed for either.
    let clone = world.fresh_clone();
    assert!(
        !clone.log_subjects().iter().any(|s| s.starts_with("cancel")),
        "{:?}",
        clone.log_subjects()
    );
}

#[test]
fn a_request_removed_by_hand_is_recorded_cancelled_by_whoever_removed_it() {
    let world = World::new().build();
    world.submit("gone.yml", "kind: echo\nid: gone\n");
    world.submitter.git(&["rm", "-q", "requests/gone.yml"]);
    world.submitter.commit("drop gone: not needed after all");
    world.submitter.push();
    world.run(&[]).assert_exit(0);
    let status = world.fresh_clone().status("gone");
    assert_eq!(status["state"], "cancelled", "{status:#}");
    assert_eq!(status["cancelled_by"], SAM);
    assert_eq!(
        status["error"],
        format!("cancelled by {SAM}: drop gone: not needed after all")
    );
}

/// A kind `slow` whose handler says it started (with its host), leaves a `sleep` of an hour in its
/// process group, and waits for it.
fn world_with_a_slow_kind(strays: &Strays) -> World {
    let world = World::new().build();
    let markers = world.markers.display();
    add_kinds(
        &world,
        &[(
            "slow",
            &format!(
                "#!/bin/sh\necho \"started on ${HOST_VAR}\"\n{} &\n\
                 echo \"${HOST_VAR}\" > '{markers}/host'\nwait\n",
                strays.command
            ),
            &format!("  env: [{HOST_VAR}]\n"),
        )],
    );
    world
}

#[test]
fn a_running_request_cancelled_is_stopped_where_it_runs_and_recorded_once_with_its_log() {
    let strays = Strays::sleeping(3600);
    let world = world_with_a_slow_kind(&strays);
    let daemon = GitDaemon::serve(&world);
    let mut fleet: Vec<Member> = ["c1", "c2"]
        .iter()
        .map(|id| Member::start(&world, &daemon.url(), id, &["--lease", "4s"]))
        .collect();
    world.submit("long.yml", "kind: slow\nid: long\n");
    let started = wait_until(DEADLINE, || {
        world.markers.join("host").exists() && !strays.pids().is_empty()
    });
    assert!(started, "long never started:\n{}", outputs(&fleet));
    let host = std::fs::read_to_string(world.markers.join("host")).expect("host");
    let runner = host.trim().trim_start_matches("host-").to_owned();

    operate(
        &world,
        &["cancel", "long", "--reason", "maintenance window closed"],
    )
    .assert_exit(0);
    let watch = world.clone_from(&daemon.url());
    let recorded = wait_until(DEADLINE, || {
        watch.sync();
        !watch.statuses().is_empty()
    });
    assert!(recorded, "long was not recorded:\n{}", outputs(&fleet));
    let status = watch.status("long");
    assert_eq!(
        status["state"],
        "cancelled",
        "{status:#}\n{}",
        outputs(&fleet)
    );
    assert_eq!(
        status["dispatcher"],
        runner.as_str(),
        "recorded by the one that ran it"
    );
    assert_eq!(status["cancelled_by"], SAM);
    let log = watch.read_string(&log_file("long", 1)).expect("a log");
    assert!(
        log.contains(&format!("started on {host}", host = host.trim())),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "cancelled by {SAM}: maintenance window closed; the handler was stopped"
        )),
        "{log}"
    );
    strays.assert_gone("the cancelled run's process group");
    for member in &mut fleet {
        member.stop(DEADLINE).assert_exit(0);
    }
    watch.sync();
    assert_eq!(watch.trailers("Dispatch-Id"), vec!["long"], "recorded once");
}

#[test]
fn a_request_whose_dispatcher_died_while_running_it_is_recorded_cancelled_not_abandoned() {
    let strays = Strays::sleeping(3600);
    let world = world_with_a_slow_kind(&strays);
    let daemon = GitDaemon::serve(&world);
    let mut member = Member::start(&world, &daemon.url(), "solo", &["--lease", "4s"]);
    world.submit("long.yml", "kind: slow\nid: long\n");
    // Killed once its first line is in the journal's log: before, the kill could beat the capture
    // of the line, and the log had nothing of the run to keep.
    let partial = member.work.join("journal/long.1.log");
    let started = wait_until(DEADLINE, || {
        !strays.pids().is_empty()
            && std::fs::read_to_string(&partial).is_ok_and(|log| log.contains("started on"))
    });
    assert!(started, "long never started:\n{}", member.output_so_far());
    member.kill();
    operate(
        &world,
        &["cancel", "long", "--reason", "host is going away"],
    )
    .assert_exit(0);
    member.restart(&world);
    let watch = world.clone_from(&daemon.url());
    let recorded = wait_until(DEADLINE, || {
        watch.sync();
        !watch.statuses().is_empty()
    });
    assert!(
        recorded,
        "long was not recorded:\n{}",
        member.output_so_far()
    );
    let status = watch.status("long");
    assert_eq!(
        status["state"],
        "cancelled",
        "{status:#}\n{}",
        member.output_so_far()
    );
    assert_eq!(status["attempts"], 1, "{status:#}");
    let log = watch.read_string(&log_file("long", 1)).expect("a log");
    assert!(
        log.contains("started on host-solo"),
        "the partial log is kept: {log}"
    );
    assert!(log.contains("host is going away"), "{log}");
    member.stop(DEADLINE).assert_exit(0);
}
