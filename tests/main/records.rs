//! Records: each outcome's files are its own and written once. An attempt's log never takes the path
//! of another id's log; an id that already has an outcome in the tree an outcome commit is made on
//! gets no second one, whoever recorded the first; a request file changed after it was taken is not
//! deleted with the outcome of the version that ran; a remote branch rewritten under a running
//! dispatcher is noticed and said. Every test asserts on a fresh clone of the remote.

use crate::support::{Checkout, World, add_kinds, log_file, processed, sha256_hex, shard};

/// The bytes of the file a status's `log` names match its `log_sha256`.
fn assert_log_matches(clone: &Checkout, key: &str) {
    let status = clone.status(key);
    let path = status["log"]
        .as_str()
        .unwrap_or_else(|| panic!("`{key}` names no log: {status:#}"));
    let bytes = clone
        .read(path)
        .unwrap_or_else(|| panic!("`{key}`'s log `{path}` is missing"));
    assert_eq!(
        status["log_sha256"].as_str(),
        Some(sha256_hex(&bytes).as_str()),
        "`{path}` is not the log `{key}` recorded: {}",
        String::from_utf8_lossy(&bytes)
    );
}

/// `x` retries (attempt 2 has a log of its own) and `x.2` is another id in the same shard, taken
/// first: each keeps its own log.
#[test]
fn an_attempts_log_never_takes_the_path_of_another_ids_log() {
    let base = (0..)
        .map(|n| format!("x{n}"))
        .find(|id| shard(id) == shard(&format!("{id}.2")))
        .expect("some id shares its shard with its `.2`");
    let other = format!("{base}.2");
    let world = World::new().build();
    add_kinds(
        &world,
        &[(
            "flaky",
            "#!/bin/sh\necho \"attempt $DISPATCH_ATTEMPT of $DISPATCH_ID\"\n\
             [ \"$DISPATCH_ATTEMPT\" -ge 2 ]\n",
            "  retries: 1\n  retry_backoff: 10ms\n",
        )],
    );
    world.submit_many(&[
        (&format!("{base}.yml"), b"kind: flaky\n"),
        (&format!("{other}.yml"), b"kind: echo\n"),
    ]);

    world.run(&[]).assert_exit(0);

    let clone = world.fresh_clone();
    for key in [&base, &other] {
        assert_log_matches(&clone, key);
    }
    assert_eq!(clone.status(&base)["attempts"], 2);
    assert_eq!(clone.status(&other)["attempts"], 1);
    let first = clone
        .read_string(&log_file(&base, 1))
        .expect("attempt 1's log");
    assert!(first.contains(&format!("attempt 1 of {base}\n")), "{first}");
    let second = clone
        .read_string(&log_file(&base, 2))
        .expect("attempt 2's log");
    assert!(
        second.contains(&format!("attempt 2 of {base}\n")),
        "{second}"
    );
}

/// Versions before named attempt N's log `KEY.N.log`: `show --log` still finds it.
#[test]
fn show_finds_a_later_attempts_log_under_its_earlier_name() {
    let world = World::new().build();
    let status = format!(
        r#"{{"id": "old", "kind": "echo", "state": "succeeded", "attempts": 2,
        "request": "requests/old.yml", "log": "logs/{}/old.2.log"}}
"#,
        shard("old")
    );
    let files = [
        (processed("old", "yml"), "kind: echo\nid: old\n".to_owned()),
        (processed("old", "status.json"), status),
        (log_file("old", 1), "attempt 1\n".to_owned()),
        (
            format!("logs/{}/old.2.log", shard("old")),
            "attempt 2\n".to_owned(),
        ),
    ];
    for (rel, text) in &files {
        world.submitter.write(rel, text);
    }
    world.publish(
        "dispatch: old succeeded (echo)\n\nDispatch-Id: old\nDispatch-Kind: echo\n\
         Dispatch-State: succeeded\n",
    );

    let mut show = world.dispatcher();
    show.current_dir(&world.submitter.dir)
        .args(["show", "old", "--log", "--json"])
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1");
    let out = world.output(show);
    out.assert_exit(0);
    let report: serde_json::Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{out}"));
    let texts: Vec<&str> = report["logs"]
        .as_array()
        .unwrap_or_else(|| panic!("no logs: {out}"))
        .iter()
        .filter_map(|log| log["text"].as_str())
        .collect();
    assert_eq!(texts, ["attempt 1\n", "attempt 2\n"], "{out}");
}
