//! `--metrics-addr`: `/metrics` counts outcomes (kinds the index does not list labelled `unknown`, so no
//! submitter's text becomes a label) and `/healthz` turns 503 when the remote goes away.

use std::time::Duration;

use super::{DEADLINE, remote_git};
use crate::support::{GitDaemon, World, free_port, http_get, processed, wait_until};

/// Whether `path` exists at the tip of the remote's `main` (cheaper than a clone, for polling).
fn remote_has(world: &World, path: &str) -> bool {
    remote_git(
        world,
        &["cat-file", "-e", &format!("refs/heads/main:{path}")],
    )
    .is_some()
}

#[test]
fn metrics_count_outcomes_and_healthz_turns_503_when_the_remote_goes_away() {
    let world = World::new().build();
    world.submit("measured.yml", "kind: echo\n");
    let daemon = GitDaemon::serve(&world);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut dispatcher = world.spawn(world.run_command(
        &daemon.url(),
        &["--poll-interval", "200ms", "--metrics-addr", &addr],
    ));

    let pushed = wait_until(DEADLINE, || {
        remote_has(&world, &processed("measured", "status.json")) || !dispatcher.running()
    });
    assert!(
        pushed && dispatcher.running(),
        "the outcome was not pushed by the polling dispatcher: {}",
        dispatcher.output_so_far()
    );
    assert_eq!(world.fresh_clone().status("measured")["state"], "succeeded");

    let (code, metrics) = http_get(port, "/metrics")
        .unwrap_or_else(|| panic!("nothing answers on {addr}: {}", dispatcher.output_so_far()));
    assert_eq!(code, 200, "GET /metrics:\n{metrics}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("git_dispatch_requests_total{")
                && l.contains("state=\"succeeded\"")
                && l.contains("kind=\"echo\"")),
        "no succeeded `echo` outcome counted:\n{metrics}"
    );
    for name in [
        "git_dispatch_queue_depth",
        "git_dispatch_run_duration_seconds_bucket",
        "git_dispatch_build_info",
        "git_dispatch_claims_held",
    ] {
        assert!(
            metrics.lines().any(|l| l.starts_with(name)),
            "no `{name}` sample:\n{metrics}"
        );
    }
    // The request's resource was claimed before it ran.
    assert!(
        metrics
            .lines()
            .any(|l| l == "git_dispatch_claim_events_total{event=\"made\"} 1"),
        "no claim made:\n{metrics}"
    );
    let mut health = None;
    let healthy = wait_until(Duration::from_secs(10), || {
        health = http_get(port, "/healthz");
        health.as_ref().is_some_and(|(code, _)| *code == 200)
    });
    assert!(
        healthy,
        "/healthz is not 200 while the remote is up: {health:?}"
    );
    assert_eq!(health.as_ref().expect("checked above").1.trim(), "ok");

    drop(daemon);
    let unhealthy = wait_until(Duration::from_secs(10), || {
        health = http_get(port, "/healthz");
        health.as_ref().is_some_and(|(code, _)| *code == 503)
    });
    assert!(
        unhealthy,
        "/healthz did not turn 503 after the remote went away: {health:?}\n{}",
        dispatcher.output_so_far()
    );
    let reason = health.expect("checked above").1;
    assert!(
        reason.contains("sync") || reason.contains("remote"),
        "the 503 body does not say why: {reason:?}"
    );

    // The outcome was pushed before the remote went away: nothing is left unpushed, so exit 0.
    dispatcher.terminate();
    dispatcher.wait(DEADLINE).assert_exit(0);
}

#[test]
fn metrics_label_kinds_the_index_does_not_list_as_unknown() {
    let world = World::new().build();
    world.submit("listed.yml", "kind: echo\n");
    world.submit("free-text.yml", "kind: zz-anything-a-submitter-writes\n");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut dispatcher = world.spawn(world.run_command(
        world.remote_arg(),
        &["--poll-interval", "200ms", "--metrics-addr", &addr],
    ));

    let pushed = wait_until(DEADLINE, || {
        (remote_has(&world, &processed("free-text", "status.json"))
            && remote_has(&world, &processed("listed", "status.json")))
            || !dispatcher.running()
    });
    assert!(
        pushed && dispatcher.running(),
        "{}",
        dispatcher.output_so_far()
    );
    let (code, metrics) = http_get(port, "/metrics")
        .unwrap_or_else(|| panic!("nothing answers on {addr}: {}", dispatcher.output_so_far()));
    assert_eq!(code, 200, "GET /metrics:\n{metrics}");
    let outcomes: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("git_dispatch_requests_total{"))
        .collect();
    assert!(
        !metrics.contains("zz-anything"),
        "a submitter's free text became a label:\n{metrics}"
    );
    assert!(
        outcomes
            .iter()
            .any(|l| l.contains("kind=\"unknown\"") && l.contains("state=\"rejected\"")),
        "the unlisted kind is not counted as `unknown`:\n{metrics}"
    );
    assert!(
        outcomes.iter().any(|l| l.contains("kind=\"echo\"")),
        "a listed kind lost its label:\n{metrics}"
    );
    dispatcher.terminate();
}
