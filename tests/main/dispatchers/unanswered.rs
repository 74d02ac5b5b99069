//! A claim push whose answer is lost: the server applied the updates, and the connection failed
//! before their report was read (in a figure-8 drain, a signal interrupted that read). The
//! dispatcher once took its own new claim for another dispatcher's, and its own extension for a
//! claim taken over: it stopped its handler, left the claim on the remote until its lease ran out,
//! and then recorded its own requests `abandoned`. It now looks, and takes as made what the remote
//! holds.

use super::{add_work_kind, submit_spread};
use crate::support::fleet::{Runs, tally};
use crate::support::{GitDaemon, World};

#[test]
fn a_claim_push_whose_report_is_lost_is_settled_by_a_look_and_every_request_runs_once() {
    let world = World::new().build();
    let runs = Runs::new(&world);
    add_work_kind(&world, &runs, "0.05", "");
    let daemon = GitDaemon::serve(&world);
    let expected = submit_spread(&world, "work", "lost", 6, 2);
    let mut cmd = world.run_command(
        &daemon.url(),
        &[
            "--until-empty",
            "--dispatcher-id",
            "one",
            "--lease",
            "4s",
            "--poll-interval",
            "200ms",
        ],
    );
    // Every push of claims and heartbeat is applied by the server, and then reported as failed.
    cmd.env("GIT_DISPATCH_FAILPOINT", "claims-unanswered")
        .env(crate::support::fleet::HOST_VAR, "host-one");
    let output = world.output(cmd);
    output.assert_exit(0);

    let clone = world.clone_from(&daemon.url());
    for id in expected.keys() {
        let status = clone.status(id);
        assert_eq!(status["state"], "succeeded", "{id}: {status:#}\n{output}");
    }
    let started = tally(runs.read().iter().map(|r| r.id.as_str()));
    assert_eq!(
        started.keys().collect::<Vec<_>>(),
        {
            let mut ids: Vec<&String> = expected.keys().collect();
            ids.sort();
            ids
        },
        "handlers started"
    );
    assert!(
        started.values().all(|n| *n == 1),
        "started twice: {started:?}"
    );
    assert!(
        !output.stderr.contains("used twice") && !output.stderr.contains("taken over"),
        "{output}"
    );
}
