//! `--git-transport cli`: fetches and pushes through a real `git daemon`, and a push refused by a hook
//! exits 3 naming the unpushed outcome.

use super::remote_tip;
use crate::support::{ALL_FROZEN_HOOK, BRANCH_FROZEN_HOOK, GitDaemon, World};

#[test]
fn cli_git_transport_fetches_and_pushes_through_git_daemon() {
    let world = World::new().build();
    world.submit("over-cli.yml", "kind: echo\n");
    let daemon = GitDaemon::serve(&world);

    world
        .run_via(&daemon.url(), &["--git-transport", "cli"])
        .assert_exit(0);

    let clone = world.clone_from(&daemon.url());
    assert_eq!(clone.status("over-cli")["state"], "succeeded");
    assert_eq!(clone.ls("requests"), [".gitkeep"]);
}

#[test]
fn cli_git_transport_reports_a_push_refused_by_a_hook_with_exit_3() {
    let world = World::new().build();
    world.submit("held.yml", "kind: echo\n");
    let daemon = GitDaemon::serve(&world);
    world.pre_receive_hook(BRANCH_FROZEN_HOOK);
    let tip = remote_tip(&world);

    let out = world.run_via(
        &daemon.url(),
        &["--git-transport", "cli", "--push-attempts", "2"],
    );

    out.assert_exit(3);
    assert!(out.stderr.contains("not pushed"), "{out}");
    assert!(
        out.stderr.contains("held"),
        "the unpushed outcome is not named:\n{out}"
    );
    assert_eq!(remote_tip(&world), tip, "the remote moved despite its hook");
}

/// A remote that refuses the claims under `refs/dispatch/`: nothing is started (a request runs only
/// once its resource is claimed), and `--until-empty` gives up with exit 3 after its attempts,
/// saying which ref was refused and what the dispatchers need.
#[test]
fn a_remote_that_refuses_claims_starts_nothing_and_until_empty_exits_3() {
    let world = World::new().build();
    world.submit("unclaimed.yml", "kind: echo\n");
    let daemon = GitDaemon::serve(&world);
    world.pre_receive_hook(ALL_FROZEN_HOOK);
    let tip = remote_tip(&world);

    for transport in ["libgit2", "cli"] {
        let out = world.run_via(
            &daemon.url(),
            &["--git-transport", transport, "--push-attempts", "2"],
        );
        out.assert_exit(3);
        assert!(
            out.stderr.contains("refs/dispatch/claims/echo")
                && out.stderr.contains("pre-receive hook declined")
                && out.stderr.contains("gave up after 2 attempts"),
            "{transport}: the refused claim is not named:\n{out}"
        );
        assert!(
            out.stderr.contains("not drained") && !out.stderr.contains("done:"),
            "{transport}: it does not say the inbox was not drained:\n{out}"
        );
        assert!(
            !out.stderr.contains("running `handlers/"),
            "{transport}: a handler started without a claim:\n{out}"
        );
    }
    assert_eq!(remote_tip(&world), tip, "the remote moved despite its hook");
}
