//! A push on a thread of its own is collected when it says it ended, whether or not its thread has
//! exited by then: the loop once looked only at whether the thread was finished, and a thread that
//! had sent its report but not yet returned left its push uncollected until the loop's next
//! deadline (4 s at the end of a figure-8 drain), and no push after it was made meanwhile.

use super::DEADLINE;
use crate::support::{GitDaemon, World, wait_until};

#[test]
fn a_push_is_collected_when_its_thread_reports_even_if_the_thread_lingers() {
    let world = World::new().build();
    let daemon = GitDaemon::serve(&world);
    let mut cmd = world.run_command(&daemon.url(), &["--poll-interval", "200ms"]);
    // Every push thread, once it reported, never exits.
    cmd.env("GIT_DISPATCH_FAILPOINT", "push-reported");
    let dispatcher = world.spawn(cmd);
    let watch = world.clone_from(&daemon.url());
    let recorded = |id: &str| {
        wait_until(DEADLINE, || {
            watch.sync();
            watch.statuses().iter().any(|(key, _)| key == id)
        })
    };
    world.submit("first.yml", "kind: echo\nid: first\n");
    assert!(
        recorded("first"),
        "first not pushed: {}",
        dispatcher.output_so_far()
    );
    world.submit("second.yml", "kind: echo\nid: second\n");
    assert!(
        recorded("second"),
        "the push after a lingering thread was never made: {}",
        dispatcher.output_so_far()
    );
    dispatcher.terminate();
    dispatcher.wait(DEADLINE).assert_exit(0);
}
