//! A broken index is a blocker, not a verdict on the requests: they wait, none is rejected for it
//! (their ids are not used up), the dispatcher says why; once a fixed index lands they run. A kind a
//! readable index does not list is still rejected at once.

use crate::support::{DEFAULT_INDEX, World};

#[test]
fn a_broken_index_makes_requests_wait_and_a_fixed_one_lets_them_run() {
    let world = World::new().build();
    world.index("echo: [this is not\n");
    world.publish("break the index");
    world.submit("a.yml", "kind: echo\nid: a\n");
    world.submit("b.yml", "kind: no-such-kind\nid: b\n");

    let blocked = world.run(&[]);
    blocked.assert_exit(0);
    assert!(
        blocked
            .stderr
            .contains("not starting requests: `handlers/index.yml`"),
        "{blocked}"
    );
    assert!(
        blocked.stderr.contains("until a fixed index lands"),
        "{blocked}"
    );
    let clone = world.fresh_clone();
    assert!(clone.statuses().is_empty(), "{:?}", clone.statuses());
    // `status` names the blocker too.
    let status = super::operate(&world, &["status", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&status.stdout).expect("JSON");
    let blockers = json["blockers"].as_array().expect("a list");
    assert_eq!(blockers.len(), 1, "{json:#}");
    assert_eq!(blockers[0]["what"], "index");
    assert!(
        blockers[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("`handlers/index.yml`")),
        "{json:#}"
    );

    world.index(DEFAULT_INDEX);
    world.publish("fix the index");
    world.run(&[]).assert_exit(0);
    let clone = world.fresh_clone();
    assert_eq!(clone.status("a")["state"], "succeeded");
    let status = super::operate(&world, &["status", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&status.stdout).expect("JSON");
    assert_eq!(json["blockers"], serde_json::json!([]), "{json:#}");
    // With a readable index, an unknown kind is the request's own mistake.
    let b = clone.status("b");
    assert_eq!(b["state"], "rejected");
    assert!(
        b["error"]
            .as_str()
            .is_some_and(|e| e.contains("`no-such-kind` is not a kind")),
        "{b:#}"
    );
}
