//! Rejected requests: whatever is wrong with a file in `requests/`, it is taken out of the inbox and
//! recorded as `rejected` with an error that names the file and what is wrong, and the requests behind it
//! still run. Record keys of unusable ids are `<sanitized stem>~<n>`, so most tests find the outcome by
//! the file its error names rather than by key.

use serde_json::Value;

use crate::support::{Checkout, World, log_file, processed};

/// Submits a valid request after the bad one (already submitted), drains, and checks: run exits 0, the
/// inbox is empty, exactly one rejected outcome names `requests/<rel>` and its error mentions every
/// needle (case-insensitive), and the later request still succeeded.
fn drain_and_find_rejection(
    world: &World,
    rel: &str,
    needles: &[&str],
) -> (Checkout, String, Value) {
    world.submit("after.yml", "kind: echo\n");

    world.run(&[]).assert_exit(0);

    let clone = world.fresh_clone();
    assert_eq!(
        clone.ls("requests"),
        [".gitkeep"],
        "nothing stays stuck in the inbox"
    );
    let (key, status) = clone.rejected_for(rel);
    let error = status["error"]
        .as_str()
        .expect("a rejected status has an error")
        .to_lowercase();
    for needle in needles {
        assert!(
            error.contains(&needle.to_lowercase()),
            "the error for `requests/{rel}` does not mention `{needle}`: {}",
            status["error"]
        );
    }
    assert_eq!(
        clone.status("after")["state"],
        "succeeded",
        "the request behind the rejected one still ran"
    );
    assert!(
        clone
            .trailers("Dispatch-State")
            .iter()
            .any(|s| s == "rejected"),
        "the rejection is a commit with `Dispatch-State: rejected`"
    );
    (clone, key, status)
}

/// `drain_and_find_rejection`, then: the rejected file is kept byte for byte as `processed/<key>.yml`.
fn assert_rejected_and_kept(world: &World, file: &str, bytes: &[u8], needles: &[&str]) -> Value {
    let (clone, key, status) = drain_and_find_rejection(world, file, needles);
    assert_eq!(
        clone.read(&processed(&key, "yml")).as_deref(),
        Some(bytes),
        "the rejected request is recorded byte for byte"
    );
    status
}

#[test]
fn unparsable_yaml_is_rejected() {
    let bytes = b"kind: echo\nparams: [unclosed\n";
    let world = World::new().build();
    world.submit("broken.yml", bytes);
    assert_rejected_and_kept(&world, "broken.yml", bytes, &[]);
}

#[test]
fn params_schema_violation_is_rejected_naming_the_field_and_the_expected_type() {
    let bytes = b"kind: count\nparams:\n  count: ten\n";
    let world = World::new().build();
    world.submit("tally.yml", bytes);
    assert_rejected_and_kept(&world, "tally.yml", bytes, &["params.count", "integer"]);
}

#[test]
fn missing_required_param_is_rejected_naming_it() {
    let bytes = b"kind: count\nparams: {}\n";
    let world = World::new().build();
    world.submit("empty-tally.yml", bytes);
    assert_rejected_and_kept(&world, "empty-tally.yml", bytes, &["count"]);
}

#[test]
fn wrong_envelope_type_is_rejected_naming_the_field() {
    let bytes = b"kind: echo\nparams: just-a-string\n";
    let world = World::new().build();
    world.submit("stringly.yml", bytes);
    assert_rejected_and_kept(&world, "stringly.yml", bytes, &["params"]);
}

#[test]
fn missing_kind_is_rejected() {
    let bytes = b"params:\n  name: world\n";
    let world = World::new().build();
    world.submit("kindless.yml", bytes);
    assert_rejected_and_kept(&world, "kindless.yml", bytes, &["kind"]);
}

#[test]
fn unknown_top_level_key_is_rejected_naming_the_key() {
    let bytes = b"kind: echo\ncolour: blue\n";
    let world = World::new().build();
    world.submit("painted.yml", bytes);
    assert_rejected_and_kept(&world, "painted.yml", bytes, &["colour"]);
}

#[test]
fn duplicate_keys_are_rejected() {
    let bytes = b"kind: echo\nkind: count\n";
    let world = World::new().build();
    world.submit("twice.yml", bytes);
    assert_rejected_and_kept(&world, "twice.yml", bytes, &["duplicate", "kind"]);
}

#[test]
fn non_utf8_request_is_rejected() {
    let bytes = b"kind: echo\nparams:\n  name: \"caf\xe9\"\n";
    let world = World::new().build();
    world.submit("latin1.yml", bytes);
    assert_rejected_and_kept(&world, "latin1.yml", bytes, &["utf"]);
}

#[test]
fn unknown_kind_is_rejected_naming_the_kind_and_the_index() {
    let bytes = b"kind: nosuch\n";
    let world = World::new().build();
    world.submit("stray.yml", bytes);
    assert_rejected_and_kept(
        &world,
        "stray.yml",
        bytes,
        &["nosuch", "handlers/index.yml"],
    );
}

#[test]
fn invalid_id_is_rejected_and_writes_nothing_outside_processed_and_logs() {
    let bytes = b"kind: echo\nid: \"../x\"\n";
    let world = World::new().build();
    world.submit("evil.yml", bytes);
    let (clone, key, _) = drain_and_find_rejection(&world, "evil.yml", &["id"]);

    assert!(
        !key.contains('/') && key != "../x",
        "record key `{key}` is the raw id"
    );
    assert_eq!(
        clone.ls(""),
        [
            ".git",
            "handlers",
            "logs",
            "processed",
            "requests",
            "schemas"
        ],
        "the invalid id created something outside the inbox layout"
    );
    assert_eq!(
        clone.read(&processed(&key, "yml")).as_deref(),
        Some(&bytes[..])
    );
}

#[test]
fn file_without_yml_extension_is_rejected() {
    let world = World::new().build();
    world.submit("notes.txt", "kind: echo\n");
    drain_and_find_rejection(&world, "notes.txt", &[".yml"]);
}

#[test]
fn nested_folder_in_the_inbox_is_rejected() {
    let world = World::new().build();
    world.submit("sub/x.yml", "kind: echo\n");
    // The error may name the folder or the file inside it; either starts with `requests/sub`.
    drain_and_find_rejection(&world, "sub", &[]);
}

#[test]
fn symlink_request_is_rejected_without_following_it() {
    let world = World::new().build();
    world.submit_symlink("passwd.yml", "/etc/passwd");
    let (clone, _, _) = drain_and_find_rejection(&world, "passwd.yml", &["link"]);

    for dir in ["processed", "logs"] {
        for name in clone.files(dir) {
            let rel = format!("{dir}/{name}");
            let meta = std::fs::symlink_metadata(clone.path(&rel)).expect("stat recorded file");
            assert!(meta.is_file(), "`{rel}` is not a regular file");
            let text = clone.read_string(&rel).unwrap_or_default();
            assert!(
                !text.contains("root:x:0:0"),
                "`{rel}` leaked the symlink's target"
            );
        }
    }
}

#[test]
fn request_over_the_size_limit_is_rejected_naming_the_limit() {
    let mut bytes = b"kind: echo\nparams:\n  blob: ".to_vec();
    bytes.extend(std::iter::repeat_n(b'a', 70 * 1024));
    bytes.push(b'\n');
    let world = World::new().build();
    world.submit("huge.yml", &bytes);
    let (_, _, status) = drain_and_find_rejection(&world, "huge.yml", &[]);

    let error = status["error"].as_str().expect("error").to_lowercase();
    let names_limit = ["65536", "64 kib", "64kib", "64.0 kib", "64 kb", "64kb"]
        .iter()
        .any(|limit| error.contains(limit));
    assert!(
        names_limit,
        "the error does not name the 64 KiB limit: {error}"
    );
}

#[test]
fn used_id_is_rejected_as_duplicate_and_the_first_outcome_is_untouched() {
    let world = World::new().build();
    world.submit("first.yml", "kind: echo\nid: dup\n");
    world.run(&[]).assert_exit(0);
    let before = world.fresh_clone();
    let first_files = [
        processed("dup", "yml"),
        processed("dup", "status.json"),
        log_file("dup", 1),
    ]
    .map(|rel| {
        let bytes = before
            .read(&rel)
            .unwrap_or_else(|| panic!("first run left no `{rel}`"));
        (rel, bytes)
    });
    assert_eq!(before.status("dup")["state"], "succeeded");

    let second = b"kind: echo\nid: dup\nparams:\n  try: again\n";
    world.submit("second.yml", second);
    world.run(&[]).assert_exit(0);

    let after = world.fresh_clone();
    for (rel, bytes) in &first_files {
        assert_eq!(
            after.read(rel).as_ref(),
            Some(bytes),
            "`{rel}` of the first outcome changed"
        );
    }
    assert_eq!(after.ls("requests"), [".gitkeep"]);
    let status = after.status("dup~1");
    assert_eq!(status["state"], "rejected");
    let error = status["error"].as_str().expect("error").to_lowercase();
    assert!(error.contains("requests/second.yml"), "error: {error}");
    assert!(
        error.contains("duplicate") || error.contains("already used"),
        "error: {error}"
    );
    assert_eq!(
        after.read(&processed("dup~1", "yml")).as_deref(),
        Some(&second[..])
    );
}

#[test]
fn same_id_twice_in_one_drain_runs_the_earlier_arrival_and_rejects_the_later() {
    let world = World::new().build();
    // `b-first` arrives first although it sorts after `a-second`.
    let first = b"kind: echo\nid: twin\n";
    let second = b"kind: echo\nid: twin\nparams:\n  late: true\n";
    world.submit("b-first.yml", first);
    world.submit("a-second.yml", second);

    world.run(&[]).assert_exit(0);

    let clone = world.fresh_clone();
    assert_eq!(clone.status("twin")["state"], "succeeded");
    assert_eq!(
        clone.read(&processed("twin", "yml")).as_deref(),
        Some(&first[..])
    );
    let status = clone.status("twin~1");
    assert_eq!(status["state"], "rejected");
    assert!(
        status["error"]
            .as_str()
            .is_some_and(|e| e.contains("requests/a-second.yml")),
        "status: {status:#}"
    );
    assert_eq!(
        clone.read(&processed("twin~1", "yml")).as_deref(),
        Some(&second[..])
    );
}

#[test]
fn resubmitting_a_file_name_reuses_its_default_id_and_is_rejected() {
    let world = World::new().build();
    world.submit("report.yml", "kind: echo\n");
    world.run(&[]).assert_exit(0);
    let first_status = world
        .fresh_clone()
        .read(&processed("report", "status.json"));
    assert!(
        first_status.is_some(),
        "the first `report` was not recorded"
    );

    world.submit("report.yml", "kind: echo\nparams:\n  again: true\n");
    world.run(&[]).assert_exit(0);

    let clone = world.fresh_clone();
    assert_eq!(
        clone.read(&processed("report", "status.json")),
        first_status
    );
    assert_eq!(clone.status("report~1")["state"], "rejected");
    assert_eq!(clone.ls("requests"), [".gitkeep"]);
}

#[test]
fn alias_bomb_over_the_expanded_size_limit_is_rejected_naming_the_limit() {
    // 22 KB on disk, 900 MB once expanded: one 20,000-character string aliased 300 times, that list
    // aliased 150 times (few enough aliases for the YAML parser's own repetition bound).
    let mut yaml = format!(
        "kind: echo\nid: bomb-1\nparams:\n  s: &s \"{}\"\n  l: &l [{}]\n  m: [{}]\n",
        "x".repeat(20_000),
        vec!["*s"; 300].join(","),
        vec!["*l"; 150].join(",")
    );
    yaml.push_str("timeout: 5s\n");
    assert!(yaml.len() < 24 * 1024, "the file is small: {}", yaml.len());
    let world = World::new().build();
    world.submit("laughs.yml", &yaml);
    let status = assert_rejected_and_kept(&world, "laughs.yml", yaml.as_bytes(), &["alias"]);

    let error = status["error"].as_str().expect("error");
    assert!(
        error.contains("1 MiB") && error.contains("1048576"),
        "the error does not name the limit: {error}"
    );
}

#[test]
fn params_over_the_limit_of_one_environment_string_are_rejected_up_front() {
    // The handler prints the length of `DISPATCH_PARAMS`: a request whose params' JSON is exactly at
    // the limit runs (its JSON: `{"a":"<k>","b":["<k>","<k>","<k>"],"z":"<j>"}`, 23 + 4k + 7 + j
    // bytes); one byte more is rejected before any handler starts.
    let world = World::new()
        .index(&format!(
            "{}size:\n  handler: size.sh\n  timeout: 30s\n",
            crate::support::DEFAULT_INDEX
        ))
        .handler(
            "size.sh",
            "#!/bin/sh\necho \"params length ${#DISPATCH_PARAMS}\"\n",
        )
        .build();
    let request = |j: usize| {
        format!(
            "kind: size\nparams:\n  a: &a \"{}\"\n  b: [*a, *a, *a]\n  z: \"{}\"\n",
            "p".repeat(32_750),
            "q".repeat(j)
        )
    };
    world.submit("fits.yml", request(25));
    world.submit("over.yml", request(26));
    // The example: a 30 KB string aliased 5 times.
    world.submit(
        "five.yml",
        format!(
            "kind: echo\nparams:\n  s: &s \"{}\"\n  l: [*s, *s, *s, *s, *s]\n",
            "y".repeat(30_000)
        ),
    );

    world.run(&[]).assert_exit(0);

    let clone = world.fresh_clone();
    assert_eq!(clone.ls("requests"), [".gitkeep"]);
    assert_eq!(clone.status("fits")["state"], "succeeded");
    let log = clone
        .read_string(&log_file("fits", 1))
        .expect("the request at the limit has a log");
    assert!(log.contains("params length 131055"), "log: {log}");
    for key in ["over", "five"] {
        let status = clone.status(key);
        assert_eq!(status["state"], "rejected", "{key}: {status:#}");
        let error = status["error"].as_str().expect("error");
        for needle in ["`params`", "`DISPATCH_PARAMS`", "131055"] {
            assert!(error.contains(needle), "{key}: no `{needle}` in: {error}");
        }
        assert!(
            !error.contains("Argument list too long"),
            "{key} was tried: {error}"
        );
    }
}

#[test]
fn zero_timeout_is_rejected_naming_the_field() {
    let bytes = b"kind: echo\ntimeout: 0s\n";
    let world = World::new().build();
    world.submit("instant.yml", bytes);
    assert_rejected_and_kept(&world, "instant.yml", bytes, &["`timeout`", "`0s`", "zero"]);
}

#[test]
fn an_envelope_error_records_the_request_under_the_id_it_names() {
    let world = World::new().build();
    world.submit("extra-key.yml", "kind: echo\nid: extra-1\ncolour: blue\n");
    world.submit("wrong-type.yml", "kind: echo\nid: typed-1\ntimeout: 5\n");
    world.run(&[]).assert_exit(0);
    // The ids are used: the same ids again are duplicates.
    world.submit("extra-again.yml", "kind: echo\nid: extra-1\n");
    world.submit("typed-again.yml", "kind: echo\nid: typed-1\n");
    world.run(&[]).assert_exit(0);

    let clone = world.fresh_clone();
    assert_eq!(clone.ls("requests"), [".gitkeep"]);
    for (key, file, needle) in [
        ("extra-1", "extra-key.yml", "`colour`"),
        ("typed-1", "wrong-type.yml", "`timeout` must be a string"),
    ] {
        let status = clone.status(key);
        assert_eq!(status["state"], "rejected", "{key}: {status:#}");
        let error = status["error"].as_str().expect("error");
        assert!(
            error.contains(&format!("requests/{file}")) && error.contains(needle),
            "{key}: {error}"
        );
        let again = clone.status(&format!("{key}~1"));
        assert_eq!(again["state"], "rejected", "{key}~1: {again:#}");
        assert!(
            again["error"]
                .as_str()
                .is_some_and(|e| e.contains("already used")),
            "{key}~1: {again:#}"
        );
    }
}

#[test]
fn request_files_named_with_leading_dots_are_rejected_not_left_in_the_inbox() {
    let world = World::new().build();
    for name in ["..yml", "...yml", ".yml", ".hidden.yaml"] {
        world.submit(name, "kind: echo\n");
    }
    world.submit(".notes", "not a request\n");

    world.run(&[]).assert_exit(0);

    let clone = world.fresh_clone();
    assert_eq!(
        clone.ls("requests"),
        [".gitkeep", ".notes"],
        "only dotfiles not named like requests stay"
    );
    for name in ["..yml", "...yml", ".yml", ".hidden.yaml"] {
        let (key, _) = clone.rejected_for(&format!("{name}`"));
        assert!(key.contains('~'), "`{name}` is recorded under `{key}`");
    }
}

#[test]
fn escaped_strings_count_toward_the_expanded_size_limit() {
    // 40 KB of YAML, a 10,000-character string of `\x01` aliased 20 times: 200 KB of characters, but
    // 1.2 MB as JSON, where each is written `\u0001`.
    let bytes = format!(
        "kind: echo\nparams:\n  s: &s \"{}\"\n  l: [{}]\n",
        "\\x01".repeat(10_000),
        vec!["*s"; 20].join(",")
    );
    let world = World::new().build();
    world.submit("escapes.yml", &bytes);
    let status = assert_rejected_and_kept(&world, "escapes.yml", bytes.as_bytes(), &["as json"]);
    let error = status["error"].as_str().expect("error");
    assert!(error.contains("1048576"), "the limit is not named: {error}");
}
