//! `status`: with `--json`, the outcomes newest first with their counts and the queue in arrival order,
//! fetched unless `--no-fetch`; piped, plain text without ANSI escapes.

use serde_json::{Value, json};

use super::dispatchers::{heartbeat, now, put};
use super::{everyday, in_submitter, json};
use crate::support::{DEFAULT_INDEX, World, processed};

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

/// Outcomes of two kinds (succeeded, failed, rejected; `fail` passes with `params.pass`) recorded by two dispatchers, one recorded
/// long ago, one request queued and one running on `d-two`.
fn filter_world() -> World {
    let world = World::new()
        .index(&format!("{DEFAULT_INDEX}fail:\n  handler: fail.sh\n"))
        .handler(
            "fail.sh",
            "#!/bin/sh\ncase \"$DISPATCH_PARAMS\" in *pass*) exit 0;; esac\nexit 4\n",
        )
        .build();
    world.submit("ok-1.yml", "kind: echo\n");
    world.submit("bad-1.yml", "kind: fail\n");
    world.submit("rej-1.yml", "kind: echo\nbogus: 1\n");
    world.run(&["--dispatcher-id", "d-one"]).assert_exit(0);
    world.submit(
        "ok-2.yml",
        "kind: fail
params:
  pass: true
",
    );
    world.run(&["--dispatcher-id", "d-two"]).assert_exit(0);

    // An outcome recorded long ago: the world's commit clock is in 2023.
    let clone = &world.submitter;
    clone.sync();
    clone.write(
        &processed("old-1", "status.json"),
        "{\"id\": \"old-1\", \"kind\": \"echo\", \"state\": \"succeeded\", \"dispatcher\": \"d-one\"}\n",
    );
    clone.git(&["add", "processed"]);
    clone.commit(
        "dispatch: old-1 succeeded (echo)\n\nDispatch-Id: old-1\nDispatch-Kind: echo\nDispatch-State: succeeded\n",
    );
    clone.push();

    world.submit("q-1.yml", "kind: echo\n");
    world.submit("busy.yml", "kind: fail\n");
    let mut d2 = heartbeat("d-two", &[], None, now(), "running");
    d2["running"] = json!([{
        "id": "busy", "kind": "fail", "resource": "fail", "since": "2026-12-05T08:59:00Z"
    }]);
    put(&world.fresh_clone(), "dispatchers/d-two", d2);
    world
}

/// `status --json ARGS`: the ids of the queue and of the recent outcomes, each sorted.
fn filtered(world: &World, args: &[&str]) -> (Vec<String>, Vec<String>) {
    let mut all = vec!["status", "--json"];
    all.extend(args);
    let out = in_submitter(world, &all);
    out.assert_exit(0);
    let report = json(&out);
    let sorted = |list: &Value| {
        let mut ids: Vec<String> = ids(list).into_iter().map(str::to_owned).collect();
        ids.sort();
        ids
    };
    (sorted(&report["queue"]), sorted(&report["recent"]))
}

#[test]
fn status_filters_by_state_kind_since_and_dispatcher_in_json() {
    let world = filter_world();
    let cases: [(&[&str], &[&str], &[&str]); 11] = [
        (
            &[],
            &["busy", "q-1"],
            &["bad-1", "ok-1", "ok-2", "old-1", "rej-1"],
        ),
        (&["--state", "failed"], &[], &["bad-1"]),
        (
            &["--state", "succeeded,rejected"],
            &[],
            &["ok-1", "ok-2", "old-1", "rej-1"],
        ),
        (&["--state", "queued"], &["q-1"], &[]),
        (&["--state", "running"], &["busy"], &[]),
        (
            &["--state", "queued", "--state", "failed"],
            &["q-1"],
            &["bad-1"],
        ),
        (&["--kind", "fail"], &["busy"], &["bad-1", "ok-2"]),
        (
            &["--since", "24h"],
            &["busy", "q-1"],
            &["bad-1", "ok-1", "ok-2", "rej-1"],
        ),
        (&["--dispatcher", "d-two"], &["busy"], &["ok-2"]),
        (
            &["--dispatcher", "d-one", "--state", "succeeded"],
            &[],
            &["ok-1", "old-1"],
        ),
        (
            &["--kind", "echo", "--since", "1d", "--state", "succeeded"],
            &[],
            &["ok-1"],
        ),
    ];
    for (args, queue, recent) in cases {
        let (got_queue, got_recent) = filtered(&world, args);
        assert_eq!(
            (got_queue, got_recent),
            (
                queue.iter().map(|s| (*s).to_owned()).collect(),
                recent.iter().map(|s| (*s).to_owned()).collect()
            ),
            "status --json {args:?}: (queue, recent)"
        );
    }

    let out = in_submitter(&world, &["status", "--json", "--kind", "fail"]);
    let counts = &json(&out)["counts_24h"];
    assert_eq!(
        (&counts["failed"], &counts["succeeded"], &counts["rejected"]),
        (&Value::from(1), &Value::from(1), &Value::from(0)),
        "the counts are of what matches:\n{out}"
    );
    let bad = in_submitter(&world, &["status", "--state", "waiting"]);
    bad.assert_exit(2);
    let bad = in_submitter(&world, &["status", "--since", "soon"]);
    bad.assert_exit(2);
}

#[test]
fn status_filters_apply_to_the_text_too() {
    let world = filter_world();
    let out = in_submitter(&world, &["status", "--kind", "echo", "--since", "24h"]);
    out.assert_exit(0);
    for shown in ["ok-1", "rej-1", "q-1", "recent outcomes matching"] {
        assert!(out.stdout.contains(shown), "`{shown}` is missing:\n{out}");
    }
    for hidden in ["bad-1", "ok-2", "old-1"] {
        assert!(!out.stdout.contains(hidden), "`{hidden}` is shown:\n{out}");
    }

    let out = in_submitter(&world, &["status", "--state", "running"]);
    out.assert_exit(0);
    assert!(out.stdout.contains("queue: 1 matching"), "{out}");
    assert!(
        out.stdout.contains("recent outcomes: none matching"),
        "{out}"
    );
    assert!(!out.stdout.contains("q-1"), "{out}");
}
