//! Concurrent pushers: another user pushes to the remote (served by `git daemon`, so pushes go through
//! receive-pack's atomic ref update) while a handler runs. The dispatcher's push is then rejected as a
//! non-fast-forward, and it must re-create its outcome on the new tip: nothing lost, nothing run twice,
//! history linear.

use std::time::Duration;

use crate::support::{DEFAULT_INDEX, GitDaemon, World, wait_until};

#[test]
fn push_rejected_by_a_concurrent_submitter_is_redone_on_the_new_tip() {
    let world = World::new().build();
    let markers = world.markers.display().to_string();
    world.handler(
        "slow.sh",
        &format!(
            "#!/bin/sh\necho run >> '{markers}/runs-'\"$DISPATCH_ID\"\n\
             touch '{markers}/started-'\"$DISPATCH_ID\"\nsleep 2\necho slow done\n"
        ),
    );
    world.index(&format!(
        "{DEFAULT_INDEX}slow:\n  handler: slow.sh\n  timeout: 30s\n  grace: 1s\n  retries: 0\n"
    ));
    world.publish("add the slow kind");
    let daemon = GitDaemon::serve(&world);
    world.submit("slow.yml", "kind: slow\n");

    let mut dispatcher = world.spawn(world.run_command(&daemon.url(), &["--until-empty"]));
    let started = world.markers.join("started-slow");
    let running = wait_until(Duration::from_secs(20), || {
        started.exists() || !dispatcher.running()
    });
    assert!(
        running && started.exists(),
        "the slow handler never started: {}",
        dispatcher.output_so_far()
    );

    // A second user, with their own clone through the same server, pushes while the handler sleeps.
    let other = world.clone_from(&daemon.url());
    let other_commit = other.submit("late.yml", "kind: echo\n");

    dispatcher.wait(Duration::from_secs(40)).assert_exit(0);

    let clone = world.fresh_clone();
    assert_eq!(clone.ls("requests"), [".gitkeep"]);
    assert_eq!(clone.status("slow")["state"], "succeeded");
    assert_eq!(clone.status("late")["state"], "succeeded");
    assert!(
        clone.git_succeeds(&["merge-base", "--is-ancestor", &other_commit, "HEAD"]),
        "the other user's commit {other_commit} was lost"
    );
    assert_eq!(
        clone.git(&["rev-list", "--merges", "HEAD"]),
        "",
        "history is not linear"
    );
    assert_eq!(
        clone.trailers("Dispatch-Id"),
        ["slow", "late"],
        "each request has exactly one outcome commit"
    );
    let runs = std::fs::read_to_string(world.markers.join("runs-slow")).expect("runs marker");
    assert_eq!(
        runs.lines().count(),
        1,
        "the handler was re-run to redo the push"
    );
}
