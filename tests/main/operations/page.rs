//! What `--http-addr` serves an operator besides `/metrics`: `/api/status`, the document of
//! `status --json`, read by the dispatcher from its own workdir.

use super::DEADLINE;
use crate::support::{World, free_port, http_get, wait_until};

#[test]
fn api_status_lists_the_queue_and_the_recent_outcomes_as_status_json_does() {
    let world = World::new().build();
    world.submit("done.yml", "kind: echo\n");
    world.submit(
        "later.yml",
        "kind: echo\nid: later\nnot_before: \"2999-01-01T00:00:00Z\"\n",
    );
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut dispatcher = world.spawn(world.run_command(
        world.remote_arg(),
        &["--poll-interval", "200ms", "--http-addr", &addr],
    ));
    let mut document = serde_json::Value::Null;
    let served = wait_until(DEADLINE, || {
        if let Some((200, body)) = http_get(port, "/api/status") {
            document = serde_json::from_str(&body).expect("/api/status is JSON");
        }
        document["recent"].as_array().is_some_and(|r| !r.is_empty()) || !dispatcher.running()
    });
    assert!(
        served,
        "no outcome on /api/status: {}",
        dispatcher.output_so_far()
    );
    assert_eq!(document["recent"][0]["id"], "done", "{document:#}");
    assert_eq!(document["recent"][0]["state"], "succeeded", "{document:#}");
    assert_eq!(document["counts_24h"]["succeeded"], 1, "{document:#}");
    let queue = document["queue"].as_array().expect("a queue");
    assert_eq!(queue.len(), 1, "{document:#}");
    assert_eq!(queue[0]["id"], "later");
    assert_eq!(queue[0]["state"], "queued");
    assert_eq!(queue[0]["not_before"], "2999-01-01T00:00:00Z");
    // The same keys as `status --json` prints from a clone.
    let out = crate::everyday::everyday(&world, &world.submitter.dir, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&out.stdout).expect("status --json");
    let keys = |v: &serde_json::Value| {
        v.as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert_eq!(keys(&document), keys(&status));
    dispatcher.terminate();
    dispatcher.wait(DEADLINE).assert_exit(0);
}
