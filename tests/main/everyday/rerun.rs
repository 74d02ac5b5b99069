//! `rerun ID`: a new request `ID.rerun-N` with the original's kind, params and resource (params
//! overridable), N counting up from 1, `rerun_of: ID` in its status, the original untouched; an
//! unknown id, or a rerun id longer than an id may be, is refused with nothing written.

use super::in_submitter;
use crate::support::{DEFAULT_INDEX, World, log_file, processed};

/// A kind whose handler prints its params and resource.
const SHOW_HANDLER: &str =
    "#!/bin/sh\necho \"params: $DISPATCH_PARAMS\"\necho \"resource: $DISPATCH_RESOURCE\"\n";

fn world() -> World {
    World::new()
        .index(&format!("{DEFAULT_INDEX}show:\n  handler: show.sh\n"))
        .handler("show.sh", SHOW_HANDLER)
        .build()
}

const ORIGINAL: &str =
    "kind: show\nid: nightly\nresource: db-main\ntimeout: 20s\nparams:\n  n: 1\n  name: main\n";

#[test]
fn rerun_of_a_finished_request_runs_it_again_as_id_rerun_n_with_its_params_resource_and_overrides()
{
    let world = world();
    world.submit("nightly.yml", ORIGINAL);
    world.run(&[]).assert_exit(0);
    let before = world.fresh_clone();
    let original_files = [
        processed("nightly", "yml"),
        processed("nightly", "status.json"),
        log_file("nightly", 1),
    ];
    let original: Vec<Option<Vec<u8>>> = original_files.iter().map(|f| before.read(f)).collect();
    assert_eq!(before.status("nightly")["state"], "succeeded");
    assert!(
        before.status("nightly").get("rerun_of").is_none(),
        "an original is no rerun"
    );

    let out = in_submitter(&world, &["rerun", "nightly", "--param", "n=2"]);
    out.assert_exit(0);
    assert_eq!(out.stdout.trim(), "nightly.rerun-1", "{out}");
    assert_eq!(
        world
            .fresh_clone()
            .read_string("requests/nightly.rerun-1.yml")
            .as_deref(),
        Some(
            "kind: show\nid: nightly.rerun-1\nparams:\n  n: 2\n  name: main\nresource: db-main\ntimeout: 20s\n"
        ),
        "every key of the original but its id, with the override"
    );
    // While the first waits, a second takes the next number.
    let out = in_submitter(&world, &["rerun", "nightly"]);
    out.assert_exit(0);
    assert_eq!(out.stdout.trim(), "nightly.rerun-2", "{out}");

    world.run(&[]).assert_exit(0);
    let after = world.fresh_clone();
    for (key, n) in [("nightly.rerun-1", 2), ("nightly.rerun-2", 1)] {
        let status = after.status(key);
        assert_eq!(status["state"], "succeeded", "{key}: {status}");
        assert_eq!(status["rerun_of"], "nightly", "{key}: {status}");
        let log = after.read_string(&log_file(key, 1)).expect("a log");
        assert!(
            log.contains(&format!("\"n\":{n}")) && log.contains("\"name\":\"main\""),
            "{key} ran with other params:\n{log}"
        );
        assert!(log.contains("resource: db-main"), "{key}:\n{log}");
    }
    let show = in_submitter(&world, &["show", "nightly.rerun-1"]);
    show.assert_exit(0);
    assert!(
        show.stdout.contains("rerun of   nightly\n"),
        "`show` does not say what it reruns:\n{show}"
    );
    let now: Vec<Option<Vec<u8>>> = original_files.iter().map(|f| after.read(f)).collect();
    assert_eq!(now, original, "the original's files changed");

    // Once both have outcomes, the next number is still one more than the highest.
    let out = in_submitter(&world, &["rerun", "nightly", "--no-push"]);
    out.assert_exit(0);
    assert_eq!(out.stdout.trim(), "nightly.rerun-3", "{out}");
}

#[test]
fn rerun_of_a_request_still_waiting_copies_it_and_leaves_it_waiting() {
    let world = world();
    world.submit("waiting.yml", "kind: show\nparams:\n  n: 5\n");

    let out = in_submitter(&world, &["rerun", "waiting", "--param", "extra.deep=x"]);
    out.assert_exit(0);
    assert_eq!(out.stdout.trim(), "waiting.rerun-1", "{out}");
    let clone = world.fresh_clone();
    assert_eq!(
        clone.read_string("requests/waiting.yml").as_deref(),
        Some("kind: show\nparams:\n  n: 5\n"),
        "the original is untouched"
    );
    assert_eq!(
        clone.read_string("requests/waiting.rerun-1.yml").as_deref(),
        Some("kind: show\nid: waiting.rerun-1\nparams:\n  n: 5\n  extra:\n    deep: x\n")
    );
}

#[test]
fn rerun_of_an_unknown_id_exits_1_and_writes_nothing() {
    let world = world();
    world.submit("nightly.yml", ORIGINAL);
    let head = world.fresh_clone().git(&["rev-parse", "HEAD"]);

    let out = in_submitter(&world, &["rerun", "nosuch"]);
    out.assert_exit(1);
    assert!(
        out.stderr.contains("no request `nosuch`"),
        "the message does not say it is unknown:\n{out}"
    );
    assert_eq!(world.fresh_clone().git(&["rev-parse", "HEAD"]), head);
    assert_eq!(world.submitter.git(&["status", "--porcelain"]), "");
}

#[test]
fn rerun_whose_id_would_pass_the_id_limit_says_so_and_writes_nothing() {
    let world = world();
    let long = "l".repeat(125);
    world.submit("long.yml", format!("kind: show\nid: {long}\n"));
    let head = world.fresh_clone().git(&["rev-parse", "HEAD"]);

    let out = in_submitter(&world, &["rerun", &long]);
    out.assert_exit(1);
    assert!(
        out.stderr
            .contains(&format!("`{long}.rerun-1` would be 133 characters"))
            && out.stderr.contains("more than the 128"),
        "the message does not say the id is too long:\n{out}"
    );
    assert_eq!(world.fresh_clone().git(&["rev-parse", "HEAD"]), head);
}
