//! `show ID`: the state and the commit that recorded it, with `--log` the log, with `--json` the
//! status; outcomes recorded flat by earlier versions keep their ids and show; an unknown id exits 1.

use super::{in_submitter, json};
use crate::support::{World, processed};

#[test]
fn show_prints_the_state_and_the_recording_commit_and_with_log_the_log() {
    let world = World::new().build();
    world.submit("shown.yml", "kind: echo\n");
    world.run(&[]).assert_exit(0);
    world.submit("later.yml", "kind: echo\n");

    let out = in_submitter(&world, &["show", "shown"]);
    out.assert_exit(0);
    assert!(out.stdout.contains("succeeded"), "no state:\n{out}");
    assert!(
        out.stdout.contains("dispatch: shown succeeded"),
        "no recording commit:\n{out}"
    );
    assert!(
        !out.stdout.contains("echo handler ran"),
        "the log without --log:\n{out}"
    );

    let out = in_submitter(&world, &["show", "shown", "--log"]);
    out.assert_exit(0);
    assert!(
        out.stdout.contains("echo handler ran for shown"),
        "no log text:\n{out}"
    );

    let out = in_submitter(&world, &["show", "shown", "--json"]);
    out.assert_exit(0);
    let report = json(&out);
    assert_eq!(report["state"], "succeeded");
    assert_eq!(report["path"], processed("shown", "status.json"));
    assert_eq!(report["status"]["kind"], "echo");
    assert!(
        report["commit"]["subject"]
            .as_str()
            .is_some_and(|s| s.starts_with("dispatch: shown succeeded")),
        "{out}"
    );

    let out = in_submitter(&world, &["show", "later"]);
    out.assert_exit(0);
    assert!(
        out.stdout.contains("queued"),
        "not reported as queued:\n{out}"
    );
}

/// Versions before the shards wrote `processed/ID.status.json` and `logs/ID.log` flat. Such an
/// outcome still uses its id (for the dispatcher, `submit` and `validate`), and `show` finds it.
#[test]
fn outcomes_recorded_flat_by_earlier_versions_keep_their_ids_and_show() {
    let world = World::new().build();
    let request = "kind: echo\nid: legacy\n";
    let status = r#"{"id": "legacy", "kind": "echo", "state": "succeeded", "attempts": 1,
        "request": "requests/legacy.yml", "log": "logs/legacy.log"}
"#;
    let flat = [
        ("processed/legacy.yml", request),
        ("processed/legacy.status.json", status),
        ("logs/legacy.log", "the legacy run's log\n"),
    ];
    for (rel, text) in flat {
        world.submitter.write(rel, text);
    }
    world.publish(
        "dispatch: legacy succeeded (echo)\n\nDispatch-Id: legacy\nDispatch-Kind: echo\n\
         Dispatch-State: succeeded\n",
    );

    let out = in_submitter(&world, &["submit", "echo", "--id", "legacy"]);
    out.assert_exit(1);
    assert!(
        out.stderr.contains("already used") && out.stderr.contains("processed/legacy.status.json"),
        "submit did not refuse the used id:\n{out}"
    );
    world.submitter.write("requests/again.yml", request);
    let out = in_submitter(&world, &["validate", "requests/again.yml"]);
    out.assert_exit(1);
    assert!(out.stderr.contains("legacy"), "validate:\n{out}");

    world.submit("again.yml", request);
    world.run(&[]).assert_exit(0);
    let clone = world.fresh_clone();
    let again = clone.status("legacy~1");
    assert_eq!(again["state"], "rejected", "{again:#}");
    assert!(
        again["error"]
            .as_str()
            .is_some_and(|e| e.contains("duplicate") || e.contains("already used")),
        "{again:#}"
    );
    for (rel, text) in flat {
        assert_eq!(
            clone.read_string(rel).as_deref(),
            Some(text),
            "`{rel}` changed"
        );
    }

    let out = in_submitter(&world, &["show", "legacy", "--log", "--json"]);
    out.assert_exit(0);
    let report = json(&out);
    assert_eq!(report["state"], "succeeded", "{out}");
    assert_eq!(report["path"], "processed/legacy.status.json", "{out}");
    assert_eq!(report["logs"][0]["path"], "logs/legacy.log", "{out}");
    assert_eq!(report["logs"][0]["text"], "the legacy run's log\n", "{out}");
}

#[test]
fn show_of_an_unknown_id_exits_1() {
    let world = World::new().build();
    world.submit("known.yml", "kind: echo\n");
    world.run(&[]).assert_exit(0);

    let out = in_submitter(&world, &["show", "unknown"]);
    out.assert_exit(1);
    assert!(
        out.stderr.contains("`unknown`"),
        "the id is not named:\n{out}"
    );
}
