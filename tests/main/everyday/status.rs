//! `status`: with `--json`, the outcomes newest first with their counts and the queue in arrival order,
//! fetched unless `--no-fetch`; piped, plain text without ANSI escapes.

use serde_json::Value;

use super::{everyday, in_submitter, json};
use crate::support::{DEFAULT_INDEX, World};

fn ids(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|item| item["id"].as_str().expect("every item has an id"))
        .collect()
}

#[test]
fn status_json_after_a_drain_lists_the_outcomes_newest_first_and_counts_them() {
    let world = World::new().build();
    world.submit("ok-1.yml", "kind: echo\n");
    world.submit("bad-1.yml", "kind: nosuch\n");
    world.run(&[]).assert_exit(0);

    // The submitter's clone is behind: `status` fetches before it reads.
    let out = in_submitter(&world, &["status", "--json"]);
    out.assert_exit(0);
    let report = json(&out);
    assert_eq!(report["queue"], Value::Array(Vec::new()), "{out}");
    // Newest first: the order of the outcome commits in the remote's history, whatever order the
    // dispatcher finished them in.
    let mut recorded = world.fresh_clone().trailers("Dispatch-Id");
    recorded.reverse();
    assert_eq!(recorded.len(), 2, "{recorded:?}");
    assert_eq!(ids(&report["recent"]), recorded, "{out}");
    let recent = |id: &str| {
        report["recent"]
            .as_array()
            .and_then(|list| list.iter().find(|item| item["id"] == id))
            .unwrap_or_else(|| panic!("`{id}` is not among the recent outcomes:\n{out}"))
    };
    assert_eq!(recent("bad-1")["state"], "rejected");
    assert_eq!(recent("ok-1")["state"], "succeeded");
    assert_eq!(recent("ok-1")["kind"], "echo");
    assert!(recent("ok-1")["duration_ms"].is_u64(), "{out}");
    let counts = &report["counts_24h"];
    assert_eq!(
        (&counts["succeeded"], &counts["rejected"], &counts["failed"]),
        (&Value::from(1), &Value::from(1), &Value::from(0)),
        "{out}"
    );
}

#[test]
fn status_json_lists_the_queue_in_arrival_order_and_fetches_unless_told_not_to() {
    let world = World::new().build();
    let watcher = world.fresh_clone();
    world.submit("c-first.yml", "kind: echo\n");
    world.submit("a-second.yml", "kind: count\nparams:\n  count: 2\n");
    world.submit("b-third.yml", "kind: echo\nid: third\n");

    let stale = everyday(&world, &watcher.dir, &["status", "--json", "--no-fetch"]);
    stale.assert_exit(0);
    assert_eq!(ids(&json(&stale)["queue"]), Vec::<&str>::new(), "{stale}");

    let out = everyday(&world, &watcher.dir, &["status", "--json"]);
    out.assert_exit(0);
    let report = json(&out);
    assert_eq!(
        ids(&report["queue"]),
        ["c-first", "a-second", "third"],
        "{out}"
    );
    assert_eq!(report["queue"][1]["kind"], "count");
    assert_eq!(report["queue"][2]["path"], "requests/b-third.yml");
    assert!(report["queue"][0]["age_seconds"].is_u64(), "{out}");
    assert_eq!(ids(&report["recent"]), Vec::<&str>::new());
}

#[test]
fn status_piped_is_plain_text_without_ansi_escapes() {
    let world = World::new()
        .index(&format!("{DEFAULT_INDEX}fail:\n  handler: fail.sh\n"))
        .handler("fail.sh", "#!/bin/sh\nexit 4\n")
        .build();
    world.submit("fine.yml", "kind: echo\n");
    world.submit("broken.yml", "kind: fail\n");
    world.run(&[]).assert_exit(0);
    world.submit("waiting.yml", "kind: echo\n");

    let out = in_submitter(&world, &["status"]);
    out.assert_exit(0);
    for word in ["succeeded", "failed", "waiting", "fine", "broken"] {
        assert!(out.stdout.contains(word), "`{word}` is missing:\n{out}");
    }
    assert!(
        !out.stdout.contains('\x1b'),
        "colour codes in piped output:\n{out}"
    );
}
