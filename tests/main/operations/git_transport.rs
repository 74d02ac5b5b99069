//! `--git-transport cli`: fetches and pushes through a real `git daemon`, and a push refused by a hook
//! exits 3 naming the unpushed outcome.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use super::remote_tip;
use crate::support::{GitDaemon, World};

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
    let hook = world.remote.join("hooks/pre-receive");
    fs::write(
        &hook,
        "#!/bin/sh\necho 'pushes are frozen for maintenance' >&2\nexit 1\n",
    )
    .expect("write the hook");
    fs::set_permissions(&hook, fs::Permissions::from_mode(0o755)).expect("chmod the hook");
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
