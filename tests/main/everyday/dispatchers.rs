//! `status` and the dispatchers of one remote: their heartbeats and claims under `refs/dispatch/`
//! (written here by hand, as a dispatcher would), each dispatcher fresh, stale or stopped, a request
//! that runs shown running on its dispatcher, and why a queued request that no fresh dispatcher can
//! run waits. Deleted refs are pruned; `--no-fetch` shows them as last fetched.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::{in_submitter, json};
use crate::support::{Checkout, World, add_kinds};

pub(super) fn now() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after the epoch")
        .as_secs();
    i64::try_from(secs).expect("seconds fit")
}

/// Pushes `record` (with `version: 1`) to `refs/dispatch/<name>` of the remote, as a commit with the
/// empty tree, no parent and the protocol's message (replacing what the ref held).
pub(super) fn put(clone: &Checkout, name: &str, mut record: Value) {
    record["version"] = json!(1);
    let tree = clone.git(&["mktree"]);
    let message = format!("{name}\n\n{record}\n");
    let oid = clone.git(&["commit-tree", &tree, "-m", &message]);
    clone.git(&[
        "push",
        "-q",
        "origin",
        &format!("+{oid}:refs/dispatch/{name}"),
    ]);
}

pub(super) fn heartbeat(
    id: &str,
    labels: &[&str],
    kinds: Option<&[&str]>,
    seen: i64,
    state: &str,
) -> Value {
    json!({
        "id": id,
        "host": format!("host-{id}"),
        "boot": "b1",
        "software": "9.9.9",
        "labels": labels,
        "kinds": kinds,
        "jobs": 2,
        "started_at": "2026-12-05T08:00:00Z",
        "seen_at": "2026-12-05T09:00:00Z",
        "seen_at_s": seen,
        "lease_ms": 30_000,
        "state": state,
        "running": [],
    })
}

fn item<'a>(list: &'a Value, id: &str) -> &'a Value {
    list.as_array()
        .and_then(|items| items.iter().find(|i| i["id"] == id))
        .unwrap_or_else(|| panic!("`{id}` is not listed: {list:#}"))
}

#[test]
fn status_lists_dispatchers_claims_what_runs_where_and_why_a_request_waits() {
    let world = World::new().build();
    add_kinds(
        &world,
        &[
            ("train", "#!/bin/sh\n", "  runs_on: [gpu]\n"),
            ("render", "#!/bin/sh\n", ""),
        ],
    );
    world.submit("busy.yml", "kind: echo\n");
    world.submit("train-1.yml", "kind: train\n");
    world.submit("render-1.yml", "kind: render\n");
    world.submit("plain.yml", "kind: echo\n");
    let now = now();
    let clone = world.fresh_clone();
    let mut d1 = heartbeat("d1", &["cpu"], Some(&["echo", "train"]), now, "running");
    d1["running"] = json!([{
        "id": "busy", "kind": "echo", "resource": "echo", "since": "2026-12-05T08:59:00Z"
    }]);
    put(&clone, "dispatchers/d1", d1);
    put(
        &clone,
        "dispatchers/d2",
        heartbeat("d2", &["gpu"], None, now - 600, "running"),
    );
    put(
        &clone,
        "dispatchers/d3",
        heartbeat("d3", &["gpu"], None, now, "stopped"),
    );
    put(
        &clone,
        "claims/echo",
        json!({
            "resource": "echo", "dispatcher": "d1", "boot": "b1", "host": "host-d1",
            "requests": [
                {"id": "busy", "path": "requests/busy.yml"},
                {"id": "plain", "path": "requests/plain.yml"},
            ],
            "since": "2026-12-05T08:59:00Z",
            "renewed_at": "2026-12-05T09:00:00Z", "lease_ms": 30_000,
        }),
    );

    let out = in_submitter(&world, &["status", "--json"]);
    out.assert_exit(0);
    let report = json(&out);
    let dispatchers = &report["dispatchers"];
    let d1 = item(dispatchers, "d1");
    assert_eq!(d1["freshness"], "fresh", "{out}");
    assert_eq!(d1["host"], "host-d1");
    assert_eq!(d1["software"], "9.9.9");
    assert_eq!(d1["labels"], json!(["cpu"]));
    assert_eq!(d1["running"][0]["id"], "busy");
    assert_eq!(d1["running"][0]["since"], "2026-12-05T08:59:00Z");
    assert!(d1["seen_seconds_ago"].is_i64(), "{out}");
    assert_eq!(item(dispatchers, "d2")["freshness"], "stale");
    assert_eq!(item(dispatchers, "d3")["freshness"], "stopped");
    let claim = &report["claims"][0];
    assert_eq!(claim["resource"], "echo", "{out}");
    assert_eq!(claim["dispatcher"], "d1");
    assert_eq!(claim["requests"], json!(["busy", "plain"]));

    let queue = &report["queue"];
    let busy = item(queue, "busy");
    assert_eq!(
        (&busy["state"], &busy["dispatcher"], &busy["running_since"]),
        (
            &json!("running"),
            &json!("d1"),
            &json!("2026-12-05T08:59:00Z")
        ),
        "{out}"
    );
    assert_eq!(item(queue, "plain")["state"], "queued");
    assert_eq!(item(queue, "plain")["blocked"], Value::Null, "{out}");
    let train = &item(queue, "train-1")["blocked"];
    assert_eq!(train["reason"], "labels", "{out}");
    assert_eq!(
        train["message"],
        "no fresh dispatcher has the labels `gpu` (the kind's `runs_on`)"
    );
    let render = &item(queue, "render-1")["blocked"];
    assert_eq!(render["reason"], "kind", "{out}");
    assert_eq!(
        render["message"],
        "no fresh dispatcher defines kind `render`"
    );

    let text = in_submitter(&world, &["status"]);
    text.assert_exit(0);
    for needle in [
        "dispatchers: 3 (1 fresh)",
        "host-d1",
        "9.9.9",
        "labels cpu",
        "stale",
        "stopped",
        "runs busy",
        "claims:",
        "echo -> d1: busy, plain",
        "running  on d1",
        "no fresh dispatcher has the labels `gpu` (the kind's `runs_on`)",
        "no fresh dispatcher defines kind `render`",
    ] {
        assert!(
            text.stdout.contains(needle),
            "`{needle}` is missing:\n{text}"
        );
    }

    // The fresh one goes away: its ref is pruned, and then no fresh dispatcher is left at all;
    // `--no-fetch` still shows the refs as last fetched.
    clone.git(&["push", "-q", "origin", ":refs/dispatch/dispatchers/d1"]);
    clone.git(&["push", "-q", "origin", ":refs/dispatch/claims/echo"]);
    let stale = json(&in_submitter(&world, &["status", "--json", "--no-fetch"]));
    assert_eq!(item(&stale["dispatchers"], "d1")["freshness"], "fresh");
    let out = in_submitter(&world, &["status", "--json"]);
    let report = json(&out);
    let ids: Vec<&str> = report["dispatchers"]
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|d| d["id"].as_str())
        .collect();
    assert_eq!(ids, ["d2", "d3"], "{out}");
    assert_eq!(report["claims"], json!([]), "{out}");
    let busy = item(&report["queue"], "busy");
    assert_eq!(busy["state"], "queued", "{out}");
    assert_eq!(busy["blocked"]["reason"], "no_fresh_dispatcher", "{out}");
}
