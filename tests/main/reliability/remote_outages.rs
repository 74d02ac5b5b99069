//! Remote outages: a push refused by a pre-receive hook exits 3 and the next run pushes the outcome once;
//! a polling loop whose remote goes away commits locally and pushes when the remote returns on the same
//! port.

use std::fs;
use std::net::TcpStream;
use std::time::Duration;

use super::port_daemon::PortDaemon;
use super::{
    DEADLINE, assert_each_recorded_once, assert_local_branch_is_the_remote, counting_handler,
    git_dir, outcome_ids, runs,
};
use crate::support::{BRANCH_FROZEN_HOOK, World, add_kinds, wait_until};

#[test]
fn push_refused_by_a_pre_receive_hook_exits_3_and_the_next_run_pushes_it_once() {
    let world = World::new().build();
    add_kinds(&world, &[("tally", &counting_handler(&world, ""), "")]);
    world.submit("held.yml", "kind: tally\n");
    let daemon = PortDaemon::serve(&world);
    let hook = world.remote.join("hooks/pre-receive");
    fs::write(&hook, BRANCH_FROZEN_HOOK).expect("write the hook");
    fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod the hook");
    let before = git_dir(&world, &world.remote, &["rev-parse", "refs/heads/main"]);

    let refused = world.run_via(&daemon.url(), &["--push-attempts", "2"]);
    refused.assert_exit(3);
    assert!(refused.stderr.contains("not pushed"), "{refused}");
    assert!(
        refused.stderr.contains("held"),
        "the message does not name the unpushed outcome:\n{refused}"
    );
    assert_eq!(
        git_dir(&world, &world.remote, &["rev-parse", "refs/heads/main"]),
        before,
        "the remote moved although its hook refuses every push"
    );
    let clone = world.clone_from(&daemon.url());
    assert_eq!(clone.ls("requests"), [".gitkeep", "held.yml"]);
    assert_eq!(clone.statuses(), Vec::new(), "a status reached the remote");

    fs::remove_file(&hook).expect("remove the hook");
    world.run_via(&daemon.url(), &[]).assert_exit(0);

    let clone = world.clone_from(&daemon.url());
    assert_each_recorded_once(&clone, &["held.yml"]);
    assert_eq!(clone.status("held")["state"], "succeeded");
    assert_eq!(runs(&world, "held"), ["1"], "the handler ran again");
    assert_local_branch_is_the_remote(&world);
}

#[test]
fn polling_loop_survives_a_remote_outage_and_pushes_when_it_returns() {
    let world = World::new().build();
    let markers = world.markers.display().to_string();
    // Runs until the test lets it finish (bounded: 30 s), so the outage happens while it runs.
    let gated = format!(
        "#!/bin/sh\ntouch '{markers}/started-'\"$DISPATCH_ID\"\ni=0\n\
         while [ ! -e '{markers}/go' ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done\n\
         echo gated done\n"
    );
    add_kinds(&world, &[("gated", &gated, "")]);
    world.submit("outage.yml", "kind: gated\n");

    let daemon = PortDaemon::serve(&world);
    let (port, url) = (daemon.port, daemon.url());
    let mut dispatcher = world.spawn(world.run_command(&url, &["--poll-interval", "200ms"]));
    let started = world.markers.join("started-outage");
    let running = wait_until(DEADLINE, || started.exists() || !dispatcher.running());
    assert!(
        running && started.exists(),
        "the handler never started: {}",
        dispatcher.output_so_far()
    );

    drop(daemon);
    assert!(
        wait_until(Duration::from_secs(10), || TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_err()),
        "the port still accepts connections after the daemon was killed"
    );
    fs::write(world.markers.join("go"), "").expect("let the handler finish");
    let local = world.work.join("repo.git");
    let recorded = wait_until(DEADLINE, || {
        outcome_ids(&world, &local).contains(&"outage".to_owned()) || !dispatcher.running()
    });
    assert!(
        recorded && dispatcher.running(),
        "the outcome was not committed locally while the remote was down: {}",
        dispatcher.output_so_far()
    );
    assert!(
        outcome_ids(&world, &world.remote).is_empty(),
        "the outcome reached the remote while its server was down"
    );

    let _daemon = wait_until_some(Duration::from_secs(20), || {
        PortDaemon::start(&world, port, "second")
    })
    .expect("git daemon did not start again on the same port");
    let pushed = wait_until(DEADLINE, || {
        outcome_ids(&world, &world.remote).contains(&"outage".to_owned()) || !dispatcher.running()
    });
    assert!(
        pushed && dispatcher.running(),
        "the outcome did not reach the remote after it came back: {}",
        dispatcher.output_so_far()
    );

    dispatcher.terminate();
    dispatcher.wait(DEADLINE).assert_exit(0);
    let clone = world.clone_from(&url);
    assert_each_recorded_once(&clone, &["outage.yml"]);
    assert_eq!(clone.status("outage")["state"], "succeeded");
    assert_local_branch_is_the_remote(&world);
}

/// Retries `attempt` until it returns `Some` or `timeout` passes.
fn wait_until_some<T>(timeout: Duration, mut attempt: impl FnMut() -> Option<T>) -> Option<T> {
    let mut found = None;
    wait_until(timeout, || {
        found = attempt();
        found.is_some()
    });
    found
}
