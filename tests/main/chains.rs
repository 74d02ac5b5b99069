//! `then`, `on_failure` and `not_before`: follow-ups committed with their parent's outcome (in the
//! same commit), named `ID.then-N`/`ID.on_failure-N`, `caused_by` in their status, their params
//! taking the parent's outcome; checked with the parent (a follow-up that would be rejected rejects
//! the parent before anything runs; a chain deeper than 8 is refused); an inbox schema that forbids
//! the keys rejects them; a request waits for its `not_before`; the example inbox's `notify` kind
//! posts to a webhook on 127.0.0.1 as a follow-up.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime};

use crate::support::{DEFAULT_INDEX, World, log_file, utc_rfc3339};

/// A kind `say` whose handler prints its `msg` param and exits with its `exit` param.
fn world_with_say() -> World {
    World::new()
        .handler(
            "say.sh",
            "#!/bin/sh\npython3 -c 'import json,os,sys; p=json.loads(os.environ[\"DISPATCH_PARAMS\"]); print(p.get(\"msg\",\"\")); sys.exit(p.get(\"exit\",0))'\n",
        )
        .index(&format!(
            "{DEFAULT_INDEX}say:\n  handler: say.sh\n  schema: say.schema.json\n  timeout: 30s\n"
        ))
        .schema(
            "say.schema.json",
            r#"{"type": "object", "additionalProperties": false,
                "properties": {"msg": {"type": "string"}, "exit": {"type": "integer"}}}"#,
        )
        .build()
}

#[test]
fn a_chain_three_deep_runs_each_follow_up_by_its_parents_state_with_the_parents_outcome() {
    let world = world_with_say();
    world.submit(
        "p.yml",
        "kind: say\nid: p\nparams: {msg: first}\nthen:\n  - kind: say\n    params: {msg: \"after ${parent.id} ${parent.state}\", exit: 3}\n    on_failure:\n      - kind: say\n        params: {msg: \"${parent.state} exit ${parent.exit_code}: ${parent.log_tail}\"}\n        then:\n          - kind: say\n            params: {msg: \"third after ${parent.id}\"}\n    then:\n      - kind: say\n        params: {msg: never}\n",
    );
    world.run(&[]).assert_exit(0);
    let clone = world.fresh_clone();
    let states: Vec<(String, String)> = clone
        .statuses()
        .into_iter()
        .map(|(key, s)| (key, s["state"].as_str().unwrap_or_default().to_owned()))
        .collect();
    assert_eq!(
        states.len(),
        4,
        "p, p.then-1, p.then-1.on_failure-1 and its then-1: {states:?}"
    );
    assert_eq!(clone.status("p")["state"], "succeeded");
    let first = clone.status("p.then-1");
    assert_eq!(first["state"], "failed", "{first:#}");
    assert_eq!(first["caused_by"], "p");
    let log = clone.read_string(&log_file("p.then-1", 1)).expect("log");
    assert!(log.contains("after p succeeded"), "{log}");
    let second = clone.status("p.then-1.on_failure-1");
    assert_eq!(second["state"], "succeeded");
    assert_eq!(second["caused_by"], "p.then-1");
    let log = clone
        .read_string(&log_file("p.then-1.on_failure-1", 1))
        .expect("log");
    assert!(log.contains("failed exit 3: after p succeeded"), "{log}");
    let third = clone.status("p.then-1.on_failure-1.then-1");
    assert_eq!(third["state"], "succeeded");
    let log = clone
        .read_string(&log_file("p.then-1.on_failure-1.then-1", 1))
        .expect("log");
    assert!(log.contains("third after p.then-1.on_failure-1"), "{log}");
    assert!(
        !states.iter().any(|(key, _)| key == "p.then-1.then-1"),
        "a failed parent's `then` ran: {states:?}"
    );
    // The follow-up is added by the commit that records its parent.
    let recorded = clone.git(&["log", "--format=%H", "--grep=^Dispatch-Id: p$"]);
    let files = clone.git(&["show", "--name-status", "--format=", recorded.trim()]);
    assert!(files.contains("A\trequests/p.then-1.yml"), "{files}");
}

#[test]
fn a_follow_up_that_would_be_rejected_rejects_its_parent_before_it_runs() {
    let world = world_with_say();
    world.submit(
        "bad.yml",
        "kind: say\nid: bad\nparams: {msg: should not run}\non_failure:\n  - kind: say\n  - kind: say\n    params: {exit: \"three\"}\n",
    );
    let mut deep = String::from("kind: say\nid: deep\n");
    for level in 0..9 {
        let pad = "  ".repeat(2 * level);
        deep.push_str(&format!("{pad}then:\n{pad}  - kind: say\n"));
    }
    world.submit("deep.yml", deep);
    world.run(&[]).assert_exit(0);
    let clone = world.fresh_clone();
    let bad = clone.status("bad");
    assert_eq!(bad["state"], "rejected", "{bad:#}");
    let error = bad["error"].as_str().unwrap_or_default();
    assert!(error.contains("`on_failure[1]`"), "{error}");
    assert!(error.contains("exit"), "{error}");
    assert_eq!(bad["attempts"], 0);
    let deep = clone.status("deep");
    assert_eq!(deep["state"], "rejected", "{deep:#}");
    assert!(
        deep["error"]
            .as_str()
            .is_some_and(|e| e.contains("over the limit of 8")),
        "{deep:#}"
    );
    assert_eq!(clone.statuses().len(), 2, "{:?}", clone.statuses());
}

#[test]
fn an_inbox_schema_that_forbids_the_keys_rejects_them_naming_the_key() {
    let world = world_with_say();
    let old = crate::support::REQUEST_SCHEMA
        .replace(
            ",\n    \"not_before\": { \"type\": \"string\", \"format\": \"date-time\" }",
            "",
        )
        .replace(
            ",\n    \"then\": { \"type\": \"array\", \"items\": { \"type\": \"object\" } }",
            "",
        )
        .replace(
            ",\n    \"on_failure\": { \"type\": \"array\", \"items\": { \"type\": \"object\" } }",
            "",
        );
    assert!(!old.contains("then"), "{old}");
    world.schema("request.schema.json", &old);
    world.publish("an older inbox schema");
    world.submit(
        "chained.yml",
        "kind: say\nid: chained\nthen: [{kind: say}]\n",
    );
    world.run(&[]).assert_exit(0);
    let status = world.fresh_clone().status("chained");
    assert_eq!(status["state"], "rejected");
    assert!(
        status["error"].as_str().is_some_and(|e| e.contains("then")),
        "{status:#}"
    );
}

#[test]
fn a_request_waits_for_its_not_before_and_a_bad_time_is_rejected_naming_it() {
    let world = world_with_say();
    let at = SystemTime::now() + Duration::from_secs(3);
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let stamp = utc_rfc3339(i64::try_from(secs).expect("fits"));
    world.submit(
        "later.yml",
        format!("kind: say\nid: later\nnot_before: \"{stamp}\"\n"),
    );
    world.submit(
        "now.yml",
        "kind: say\nid: now\nnot_before: \"2020-01-01T00:00:00+01:00\"\n",
    );
    world.submit(
        "bad-time.yml",
        "kind: say\nid: bad-time\nnot_before: tomorrow\n",
    );
    let status = crate::everyday::everyday(&world, &world.submitter.dir, &["status"]);
    assert!(
        status.stdout.contains(&format!("waits until {stamp}")),
        "{status}"
    );
    let dry = world.run(&["--dry-run"]);
    assert!(dry.stdout.contains("would wait   later  until"), "{dry}");
    world.run(&[]).assert_exit(0);
    let clone = world.fresh_clone();
    let later = clone.status("later");
    assert_eq!(later["state"], "succeeded");
    let started = later["started_at"].as_str().expect("started_at");
    // Whole seconds compared: `stamp` has none, `started` has milliseconds.
    assert!(
        started[..19] >= stamp[..19],
        "started {started}, not before {stamp}"
    );
    assert_eq!(clone.status("now")["state"], "succeeded");
    let bad = clone.status("bad-time");
    assert_eq!(bad["state"], "rejected");
    assert!(
        bad["error"]
            .as_str()
            .is_some_and(|e| e.contains("`not_before`")),
        "{bad:#}"
    );
}

/// Accepts one HTTP request on `listener`, answers 200, and returns its body.
fn one_post(listener: &TcpListener) -> String {
    let (stream, _) = listener.accept().expect("accept");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut reader = BufReader::new(stream);
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("a header line");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().expect("a length");
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("the body");
    let mut stream = reader.into_inner();
    stream
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        .expect("answer");
    String::from_utf8(body).expect("UTF-8")
}

#[test]
fn the_example_notify_kind_posts_a_json_message_when_its_parent_fails() {
    let world = World::new()
        .handler("notify.py", include_str!("../../handlers/notify.py"))
        .handler(
            "boom.sh",
            "#!/bin/sh\necho 'boom: the backup failed'\nexit 4\n",
        )
        .schema(
            "notify.schema.json",
            include_str!("../../schemas/notify.schema.json"),
        )
        .index(&format!(
            "{DEFAULT_INDEX}notify:\n  handler: notify.py\n  schema: notify.schema.json\n  \
             timeout: 30s\n  secrets: [NOTIFY_WEBHOOK_URL]\nboom:\n  handler: boom.sh\n"
        ))
        .build();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let secrets = world.root.join("secrets");
    std::fs::write(
        &secrets,
        format!("NOTIFY_WEBHOOK_URL=http://127.0.0.1:{port}/hooks/ops\n"),
    )
    .expect("secrets");
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    world.submit(
        "nightly.yml",
        "kind: boom\nid: nightly\non_failure:\n  - kind: notify\n    params: {text: \"${parent.id} ended ${parent.state}\"}\n",
    );
    let server = std::thread::spawn(move || one_post(&listener));
    let secrets_arg = secrets.to_str().expect("UTF-8").to_owned();
    world.run(&["--secrets-file", &secrets_arg]).assert_exit(0);
    let body = server.join().expect("the listener");
    let message: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let clone = world.fresh_clone();
    assert_eq!(clone.status("nightly")["state"], "failed");
    assert_eq!(message["text"], "nightly ended failed");
    let notify = clone.status("nightly.on_failure-1");
    assert_eq!(notify["state"], "succeeded", "{notify:#}");
    let log = clone
        .read_string(&log_file("nightly.on_failure-1", 1))
        .expect("log");
    assert!(log.contains("posted"), "{log}");
    assert!(
        !log.contains(&port.to_string()),
        "the URL is a secret: {log}"
    );
}
