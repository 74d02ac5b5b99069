//! `--log-format json`: every log line is an object with time, stage, message and the request id;
//! outcome lines carry the outcome's fields, and fatal errors are JSON too.

use serde_json::Value;

use super::DEADLINE;
use crate::support::{World, add_kinds, free_port};

#[test]
fn json_log_lines_are_objects_with_time_stage_message_and_the_request_id() {
    let world = World::new().build();
    world.submit("logged.yml", "kind: echo\n");

    let out = world.run(&["--log-format", "json"]);

    out.assert_exit(0);
    let mut stages = Vec::new();
    let mut with_id = 0;
    for line in out.stderr.lines().filter(|l| !l.trim().is_empty()) {
        let value: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}\n{out}"));
        for field in ["time", "stage", "message"] {
            assert!(
                value[field].is_string(),
                "`{field}` missing or not a string in {line}"
            );
        }
        let stage = value["stage"].as_str().expect("checked above").to_owned();
        if ["take", "run", "record"].contains(&stage.as_str()) {
            assert_eq!(
                value["id"], "logged",
                "a `{stage}` line of the request does not carry its id: {line}"
            );
        }
        if value["id"] == "logged" {
            with_id += 1;
        }
        stages.push(stage);
    }
    assert!(with_id > 0, "no line carries the request's id:\n{out}");
    for stage in ["run", "record", "push"] {
        assert!(
            stages.iter().any(|s| s == stage),
            "no `{stage}` line (stages: {stages:?})\n{out}"
        );
    }
    assert_eq!(world.fresh_clone().status("logged")["state"], "succeeded");
}

/// Every non-empty line of `stderr` parsed as JSON; panics on any line that is not an object.
fn json_lines(out: &crate::support::RunOutput) -> Vec<Value> {
    out.stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}\n{out}"));
            assert!(value.is_object(), "not a JSON object: {line}\n{out}");
            value
        })
        .collect()
}

#[test]
fn json_logs_carry_outcome_fields_and_fatal_errors_are_json_too() {
    let world = World::new().build();
    add_kinds(
        &world,
        &[("boom", "#!/bin/sh\necho going down\nexit 7\n", "")],
    );
    world.submit("fine.yml", "kind: echo\n");
    world.submit("broken.yml", "kind: boom\n");

    let out = world.run(&["--log-format", "json"]);
    out.assert_exit(0);
    let lines = json_lines(&out);
    for (id, kind, state, exit_code) in [
        ("fine", "echo", "succeeded", 0),
        ("broken", "boom", "failed", 7),
    ] {
        let record = lines
            .iter()
            .find(|l| l["stage"] == "record" && l["id"] == id)
            .unwrap_or_else(|| panic!("no record line for `{id}`:\n{out}"));
        assert_eq!(record["kind"], kind, "{record}");
        assert_eq!(record["state"], state, "{record}");
        assert_eq!(record["exit_code"], exit_code, "{record}");
        assert!(record["duration_ms"].is_u64(), "no duration_ms: {record}");
    }

    // A fatal error: the remote cannot be reached.
    let url = format!("git://127.0.0.1:{}/remote.git", free_port());
    let mut cmd = world.dispatcher();
    cmd.args([
        "run",
        "--remote",
        &url,
        "--until-empty",
        "--log-format",
        "json",
    ])
    .args(["--push-attempts=1", "--workdir"])
    .arg(world.root.join("unreachable-work"));
    let out = world.spawn(cmd).wait(DEADLINE);
    out.assert_exit(3);
    let lines = json_lines(&out);
    assert!(
        lines
            .iter()
            .any(|l| l["stage"] == "fatal" && l["exit_code"] == 3),
        "no fatal line with the exit code:\n{out}"
    );

    // A configuration error, the format chosen by the environment.
    let mut cmd = world.run_command(world.remote_arg(), &["--poll-interval", "soonish"]);
    cmd.env("GIT_DISPATCH_LOG_FORMAT", "json");
    let out = world.output(cmd);
    out.assert_exit(2);
    let lines = json_lines(&out);
    assert!(
        lines.iter().any(|l| l["stage"] == "fatal"
            && l["message"]
                .as_str()
                .is_some_and(|m| m.contains("--poll-interval"))),
        "no fatal line naming the option:\n{out}"
    );

    // A usage error the command line parser finds.
    let out = world.run(&["--log-format", "json", "--once"]);
    out.assert_exit(2);
    assert!(
        json_lines(&out).iter().any(|l| l["stage"] == "fatal"),
        "no fatal line:\n{out}"
    );
}
