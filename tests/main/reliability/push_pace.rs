//! When outcomes are pushed: in batches while this dispatcher drains a backlog, at once when nothing
//! runs here. A request it cannot start now (one waiting for its `not_before`, or one whose resource
//! another dispatcher holds) is no backlog of its own: the outcomes before it once waited for the
//! batch window all the same, which at the end of a drain by several dispatchers held every last
//! outcome back by up to a second.

use super::DEADLINE;
use crate::support::{GitDaemon, World, utc_rfc3339, wait_until};

#[test]
fn an_outcome_is_pushed_at_once_when_nothing_runs_here_though_a_later_request_waits() {
    let world = World::new().build();
    let daemon = GitDaemon::serve(&world);
    let mut cmd = world.run_command(&daemon.url(), &["--poll-interval", "200ms"]);
    // A batch window that no test outlives: an outcome on the remote was pushed at once.
    cmd.env("GIT_DISPATCH_PUSH_BATCH", "1h");
    let in_an_hour = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    let secs = in_an_hour
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let stamp = utc_rfc3339(i64::try_from(secs).expect("fits"));
    world.submit_many(&[
        ("now.yml", b"kind: echo\nid: now\n"),
        (
            "later.yml",
            format!("kind: echo\nid: later\nnot_before: \"{stamp}\"\n").as_bytes(),
        ),
    ]);
    let dispatcher = world.spawn(cmd);
    let watch = world.clone_from(&daemon.url());
    let pushed = wait_until(DEADLINE, || {
        watch.sync();
        watch.statuses().iter().any(|(key, _)| key == "now")
    });
    assert!(
        pushed,
        "the outcome of `now` was not pushed while `later` waits: {}",
        dispatcher.output_so_far()
    );
    assert!(
        !watch.statuses().iter().any(|(key, _)| key == "later"),
        "`later` ran before its not_before"
    );
    dispatcher.terminate();
    dispatcher.wait(DEADLINE).assert_exit(0);
}
