//! Operations: what the person who runs the dispatcher on a host relies on. `doctor` checks a host
//! before it is enabled and changes nothing; `run --dry-run` says what would happen and does nothing;
//! `--log-format json` gives one JSON object per line; `--metrics-addr` serves `/metrics` and a
//! `/healthz` that turns 503 when the remote goes away; SIGTERM finishes the running handler, records
//! and pushes, and takes nothing new, while a second SIGINT exits at once (130) and takes the handler
//! with it; `selftest`, the shell completions and the man page; `--git-transport cli` against a real
//! `git daemon`; `--once` takes exactly one request.
//!
//! Every test asserts on what a fresh clone of the remote (or the bare remote itself) shows, and on the
//! dispatcher's real output. Left-over handler processes are found by a `sleep` argument unique to the
//! test and to this test process.

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use crate::support::{
    Background, DEFAULT_INDEX, GitDaemon, Strays, World, add_kinds, free_port, git_command,
    log_file, processed, wait_until,
};

/// How long a dispatcher process of these tests may run before the test gives up on it.
const DEADLINE: Duration = Duration::from_secs(40);

/// `handlers/<name>` that touches `markers/started-<id>`, then waits for `markers/go` (at most 30 s)
/// and exits 0: the test decides when a run ends.
fn gated_handler(world: &World) -> String {
    let markers = world.markers.display();
    format!(
        "#!/bin/sh\ntouch '{markers}/started-'\"$DISPATCH_ID\"\ni=0\n\
         while [ ! -e '{markers}/go' ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done\n\
         echo \"gated run of $DISPATCH_ID done\"\n"
    )
}

/// `git --git-dir <the bare remote> args...`: trimmed stdout, `None` if git fails.
fn remote_git(world: &World, args: &[&str]) -> Option<String> {
    let mut cmd = git_command(&world.home, &world.root);
    cmd.arg("--git-dir").arg(&world.remote).args(args);
    let out = cmd.output().expect("spawn git");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
}

/// The commit `main` points at in the bare remote.
fn remote_tip(world: &World) -> String {
    remote_git(world, &["rev-parse", "refs/heads/main"]).expect("the remote has `main`")
}

/// Whether `path` exists at the tip of the remote's `main` (cheaper than a clone, for polling).
fn remote_has(world: &World, path: &str) -> bool {
    remote_git(
        world,
        &["cat-file", "-e", &format!("refs/heads/main:{path}")],
    )
    .is_some()
}

/// The waiting requests and the processed files a fresh clone shows: what "changed nothing" compares.
fn inbox_and_processed(world: &World) -> (Vec<String>, Vec<String>) {
    let clone = world.fresh_clone();
    (clone.ls("requests"), clone.files("processed"))
}

/// `GET path` over HTTP/1.0 on 127.0.0.1:`port`: the status code and the body, `None` if nothing
/// answers (not listening yet, or a broken response).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .ok()?;
    let mut response = Vec::new();
    // HTTP/1.0: the server closes the connection after the body. A read timeout leaves what arrived.
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n")?;
    let code = head
        .lines()
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((code, body.to_owned()))
}

/// Sends `signal` to the dispatcher (as `kill -s` would).
fn send(dispatcher: &Background, signal: Signal) {
    let pid = Pid::from_raw(i32::try_from(dispatcher.pid()).expect("pids fit in i32"));
    kill(pid, signal).unwrap_or_else(|e| panic!("kill -{signal} {pid}: {e}"));
}

/// `git-dispatch doctor` with the options `run` would get.
fn doctor(world: &World, remote: &str, extra: &[&str]) -> crate::support::RunOutput {
    let mut cmd = world.dispatcher();
    cmd.args(["doctor", "--remote", remote, "--workdir"])
        .arg(&world.work)
        .arg("--lock-dir")
        .arg(&world.locks)
        .args(extra);
    world.spawn(cmd).wait(Duration::from_secs(90))
}

#[test]
fn doctor_on_a_healthy_host_prints_ok_lines_exits_0_and_changes_nothing() {
    let world = World::new().build();
    world.submit("waiting.yml", "kind: echo\n");
    let tip = remote_tip(&world);
    let before = inbox_and_processed(&world);

    let out = doctor(&world, world.remote_arg(), &[]);

    out.assert_exit(0);
    let ok_lines = out.stdout.lines().filter(|l| l.starts_with("ok")).count();
    assert!(ok_lines >= 3, "expected `ok` lines for each check:\n{out}");
    assert!(
        !out.stdout.contains("PROBLEM"),
        "a healthy host has a problem:\n{out}"
    );
    assert!(
        out.stdout.contains(world.remote_arg()),
        "the remote is not named among the checks:\n{out}"
    );
    assert_eq!(remote_tip(&world), tip, "doctor moved the remote's branch");
    assert_eq!(
        inbox_and_processed(&world),
        before,
        "doctor changed the inbox"
    );
}

#[test]
fn doctor_names_a_missing_and_a_non_executable_handler_each_with_a_fix() {
    let world = World::new().build();
    world.index(&format!(
        "{DEFAULT_INDEX}ghost:\n  handler: ghost.sh\ninert:\n  handler: inert.sh\n"
    ));
    // Written without the executable bit, and never `ghost.sh` at all.
    world
        .submitter
        .write("handlers/inert.sh", "#!/bin/sh\necho inert\n");
    world.publish("a kind without its handler and one whose handler is not executable");
    world.submit("waiting.yml", "kind: echo\n");
    let tip = remote_tip(&world);
    let before = inbox_and_processed(&world);

    let out = doctor(&world, world.remote_arg(), &[]);

    out.assert_exit(1);
    let problems: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("PROBLEM"))
        .collect();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("ghost") && p.contains("does not exist")),
        "the missing handler of `ghost` is not reported:\n{out}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("inert") && p.contains("not executable")),
        "the non-executable handler of `inert` is not reported:\n{out}"
    );
    assert!(
        !problems
            .iter()
            .any(|p| p.contains("echo.sh") || p.contains("count.sh")),
        "a usable kind is reported as a problem:\n{out}"
    );
    let fixes = out
        .stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("fix:"))
        .count();
    assert!(
        fixes >= 2,
        "each problem needs its own `fix:` line ({} problems, {fixes} fixes):\n{out}",
        problems.len()
    );
    assert_eq!(remote_tip(&world), tip, "doctor moved the remote's branch");
    assert_eq!(
        inbox_and_processed(&world),
        before,
        "doctor changed the inbox"
    );
}

#[test]
fn doctor_names_an_unreachable_remote_and_exits_1() {
    let world = World::new().build();
    // Nothing listens on a port that was just freed.
    let url = format!("git://127.0.0.1:{}/x.git", free_port());

    let out = doctor(&world, &url, &[]);

    out.assert_exit(1);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("PROBLEM") && l.contains(&url)),
        "no problem names the remote `{url}`:\n{out}"
    );
    assert!(out.stdout.contains("fix:"), "no fix offered:\n{out}");
}

#[test]
fn doctor_reports_a_secrets_file_readable_by_others_and_exits_1() {
    let world = World::new().build();
    world.submit("waiting.yml", "kind: echo\n");
    let secrets = world.root.join("secrets");
    fs::write(&secrets, "API_TOKEN=doctor-3c9d1e7f\n").expect("write the secrets file");
    fs::set_permissions(&secrets, fs::Permissions::from_mode(0o644))
        .expect("chmod the secrets file");
    let tip = remote_tip(&world);
    let before = inbox_and_processed(&world);

    let out = doctor(
        &world,
        world.remote_arg(),
        &["--secrets-file", secrets.to_str().expect("utf-8 tempdir")],
    );

    out.assert_exit(1);
    let problem = out
        .stdout
        .lines()
        .find(|l| l.starts_with("PROBLEM"))
        .unwrap_or_else(|| panic!("no problem reported:\n{out}"));
    assert!(
        problem.contains("secrets") && problem.contains(secrets.to_str().expect("utf-8")),
        "the problem does not name the secrets file:\n{out}"
    );
    assert!(out.stdout.contains("fix:"), "no fix offered:\n{out}");
    assert!(
        !out.all_output().contains("doctor-3c9d1e7f"),
        "a secret value was printed:\n{out}"
    );
    assert_eq!(remote_tip(&world), tip, "doctor moved the remote's branch");
    assert_eq!(
        inbox_and_processed(&world),
        before,
        "doctor changed the inbox"
    );
}

#[test]
fn dry_run_says_what_would_run_and_what_would_be_rejected_and_changes_nothing() {
    let world = World::new().build();
    let marker = world.markers.join("marker-ran");
    let touching = format!("#!/bin/sh\ntouch '{}'\n", marker.display());
    add_kinds(&world, &[("touch", &touching, "  resource: shelf\n")]);
    world.submit("valid.yml", "kind: touch\ntimeout: 20s\n");
    world.submit("invalid.yml", "kind: count\nparams:\n  count: ten\n");
    world.submit("stranger.yml", "kind: nobody-knows\n");
    let tip = remote_tip(&world);
    let before = inbox_and_processed(&world);

    let out = world.run(&["--dry-run"]);

    out.assert_exit(0);
    let would: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("would"))
        .collect();
    assert_eq!(would.len(), 3, "one line per waiting request:\n{out}");
    let run_line = would
        .iter()
        .find(|l| l.starts_with("would run"))
        .unwrap_or_else(|| panic!("no `would run` line:\n{out}"));
    for part in [
        " valid ",
        "kind=touch",
        "handler=handlers/touch.sh",
        "resource=shelf",
        "timeout=20s",
    ] {
        assert!(
            format!("{run_line} ").contains(part),
            "`{part}` missing from `{run_line}`"
        );
    }
    for (file, why) in [
        ("requests/invalid.yml", "count"),
        ("requests/stranger.yml", "nobody-knows"),
    ] {
        assert!(
            would
                .iter()
                .any(|l| l.starts_with("would reject") && l.contains(file) && l.contains(why)),
            "no `would reject` line for `{file}` saying why:\n{out}"
        );
    }
    assert!(!marker.exists(), "the handler ran in a dry run");
    assert_eq!(remote_tip(&world), tip, "a dry run pushed");
    assert_eq!(
        inbox_and_processed(&world),
        before,
        "a dry run changed the inbox"
    );
}

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

#[test]
fn metrics_count_outcomes_and_healthz_turns_503_when_the_remote_goes_away() {
    let world = World::new().build();
    world.submit("measured.yml", "kind: echo\n");
    let daemon = GitDaemon::serve(&world);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut dispatcher = world.spawn(world.run_command(
        &daemon.url(),
        &["--poll-interval", "200ms", "--metrics-addr", &addr],
    ));

    let pushed = wait_until(DEADLINE, || {
        remote_has(&world, &processed("measured", "status.json")) || !dispatcher.running()
    });
    assert!(
        pushed && dispatcher.running(),
        "the outcome was not pushed by the polling dispatcher: {}",
        dispatcher.output_so_far()
    );
    assert_eq!(world.fresh_clone().status("measured")["state"], "succeeded");

    let (code, metrics) = http_get(port, "/metrics")
        .unwrap_or_else(|| panic!("nothing answers on {addr}: {}", dispatcher.output_so_far()));
    assert_eq!(code, 200, "GET /metrics:\n{metrics}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("git_dispatch_requests_total{")
                && l.contains("state=\"succeeded\"")
                && l.contains("kind=\"echo\"")),
        "no succeeded `echo` outcome counted:\n{metrics}"
    );
    for name in [
        "git_dispatch_queue_depth",
        "git_dispatch_run_duration_seconds_bucket",
        "git_dispatch_build_info",
    ] {
        assert!(
            metrics.lines().any(|l| l.starts_with(name)),
            "no `{name}` sample:\n{metrics}"
        );
    }
    let mut health = None;
    let healthy = wait_until(Duration::from_secs(10), || {
        health = http_get(port, "/healthz");
        health.as_ref().is_some_and(|(code, _)| *code == 200)
    });
    assert!(
        healthy,
        "/healthz is not 200 while the remote is up: {health:?}"
    );
    assert_eq!(health.as_ref().expect("checked above").1.trim(), "ok");

    drop(daemon);
    let unhealthy = wait_until(Duration::from_secs(10), || {
        health = http_get(port, "/healthz");
        health.as_ref().is_some_and(|(code, _)| *code == 503)
    });
    assert!(
        unhealthy,
        "/healthz did not turn 503 after the remote went away: {health:?}\n{}",
        dispatcher.output_so_far()
    );
    let reason = health.expect("checked above").1;
    assert!(
        reason.contains("sync") || reason.contains("remote"),
        "the 503 body does not say why: {reason:?}"
    );

    // The outcome was pushed before the remote went away: nothing is left unpushed, so exit 0.
    dispatcher.terminate();
    dispatcher.wait(DEADLINE).assert_exit(0);
}

#[test]
fn sigterm_during_a_run_records_and_pushes_it_and_takes_nothing_new() {
    sigterm_during_a_run(&[]);
}

#[test]
fn sigterm_during_a_run_with_one_job_leaves_the_request_taken_ahead_in_the_inbox() {
    // With one job the next request is taken while the current one runs, and waits for the slot.
    let (world, out) = sigterm_during_a_run(&["--jobs", "1"]);
    assert!(
        out.stderr
            .contains("behind: not started: the dispatcher is stopping"),
        "`behind` was not taken ahead:\n{out}"
    );
    assert_journal_empty(&world);
}

/// Nothing is left in the dispatcher's journal but its folders of spare files.
fn assert_journal_empty(world: &World) {
    let left: Vec<_> = fs::read_dir(world.work.join("journal"))
        .expect("the journal")
        .map(|e| e.expect("entry").file_name())
        .filter(|name| name != "spare" && name != "spare-entries")
        .collect();
    assert!(left.is_empty(), "left in the journal: {left:?}");
}

#[test]
fn sigkill_while_a_run_waits_for_its_slot_leaves_that_request_to_run_after_the_restart() {
    let world = World::new().build();
    add_kinds(&world, &[("gated", &gated_handler(&world), "")]);
    world.submit("first.yml", "kind: gated\n");
    world.submit("behind.yml", "kind: gated\n");
    let dispatcher = world.spawn(world.run_command(
        world.remote_arg(),
        &["--poll-interval", "200ms", "--jobs", "1"],
    ));
    // `behind` is taken ahead while `first` runs: its journal entry's file is put in place, blank,
    // before it waits for the slot.
    let reserved = world.work.join("journal").join("behind.json");
    let waiting = wait_until(DEADLINE, || {
        world.markers.join("started-first").exists()
            && fs::read(&reserved)
                .is_ok_and(|bytes| !bytes.is_empty() && bytes.iter().all(u8::is_ascii_whitespace))
    });
    assert!(
        waiting,
        "`first` never ran with `behind` waiting for the slot: {}",
        dispatcher.output_so_far()
    );
    kill(Pid::from_raw(dispatcher.pid() as i32), Signal::SIGKILL).expect("kill -KILL");
    let killed = dispatcher.wait(DEADLINE);
    assert_eq!(killed.signal, Some(9), "{killed}");

    fs::write(world.markers.join("go"), "").expect("let the handlers finish");
    let out = world.run(&[]);
    out.assert_exit(0);
    assert!(
        !out.stderr.contains("unreadable"),
        "the blank entry was taken for a torn one:\n{out}"
    );
    let clone = world.fresh_clone();
    assert_eq!(clone.status("first")["state"], "abandoned", "{out}");
    assert_eq!(clone.status("behind")["state"], "succeeded", "{out}");
    assert_eq!(clone.status("behind")["attempts"], 1, "{out}");
    assert_eq!(clone.ls("requests"), [".gitkeep"], "{out}");
    assert_journal_empty(&world);
}

fn sigterm_during_a_run(args: &[&str]) -> (World, crate::support::RunOutput) {
    let world = World::new().build();
    add_kinds(&world, &[("gated", &gated_handler(&world), "")]);
    // Both are waiting before the dispatcher starts; `behind` is queued on the same resource.
    world.submit("first.yml", "kind: gated\n");
    world.submit("behind.yml", "kind: gated\n");
    let mut run_args = vec!["--poll-interval", "200ms"];
    run_args.extend_from_slice(args);
    let mut dispatcher = world.spawn(world.run_command(world.remote_arg(), &run_args));
    let started = world.markers.join("started-first");
    let running = wait_until(DEADLINE, || started.exists() || !dispatcher.running());
    assert!(
        running && started.exists(),
        "the handler never started: {}",
        dispatcher.output_so_far()
    );

    dispatcher.terminate();
    // Let the dispatcher see the signal before the run ends (best effort: the log says so); the
    // assertions below do not depend on it.
    wait_until(Duration::from_secs(5), || {
        dispatcher.output_so_far().to_lowercase().contains("signal")
    });
    fs::write(world.markers.join("go"), "").expect("let the handler finish");
    let out = dispatcher.wait(DEADLINE);

    out.assert_exit(0);
    let clone = world.fresh_clone();
    assert_eq!(clone.status("first")["state"], "succeeded", "{out}");
    assert!(
        clone
            .read_string(&log_file("first", 1))
            .is_some_and(|log| log.contains("gated run of first done")),
        "the run that was interrupted is not logged in full:\n{out}"
    );
    assert_eq!(
        clone.ls("requests"),
        [".gitkeep", "behind.yml"],
        "the request queued behind was taken after SIGTERM (or the first is still waiting):\n{out}"
    );
    assert!(
        clone.statuses().iter().all(|(key, _)| key == "first"),
        "only `first` may have an outcome: {:?}",
        clone.statuses()
    );
    assert!(
        !world.markers.join("started-behind").exists(),
        "the handler ran for the request queued behind after SIGTERM"
    );
    (world, out)
}

#[test]
fn a_second_sigint_exits_130_at_once_and_the_handler_dies_with_the_dispatcher() {
    let world = World::new().build();
    let sleepers = Strays::sleeping(30);
    let long = format!(
        "#!/bin/sh\ntouch '{}/started-'\"$DISPATCH_ID\"\nexec {}\n",
        world.markers.display(),
        sleepers.command
    );
    // Longer than the sleep, so only the signals can end the run early.
    world.handler("long.sh", &long);
    world.index(&format!(
        "{DEFAULT_INDEX}long:\n  handler: long.sh\n  timeout: 60s\n  grace: 1s\n"
    ));
    world.publish("add the long kind");
    world.submit("stuck.yml", "kind: long\n");
    let tip = remote_tip(&world);
    let mut dispatcher =
        world.spawn(world.run_command(world.remote_arg(), &["--poll-interval", "200ms"]));
    let mut pids = Vec::new();
    let running = wait_until(DEADLINE, || {
        pids = sleepers.pids();
        !pids.is_empty() || !dispatcher.running()
    });
    assert!(
        running && !pids.is_empty() && world.markers.join("started-stuck").exists(),
        "the handler never started: {}",
        dispatcher.output_so_far()
    );

    send(&dispatcher, Signal::SIGINT);
    // Two signals sent back to back may be delivered as one: wait for the first to be taken in.
    let noticed = wait_until(Duration::from_secs(10), || {
        dispatcher.output_so_far().to_lowercase().contains("signal") || !dispatcher.running()
    });
    assert!(
        noticed && dispatcher.running(),
        "the first SIGINT did not start a graceful shutdown (the dispatcher must wait for the \
         handler): {}",
        dispatcher.output_so_far()
    );
    send(&dispatcher, Signal::SIGINT);
    // Well before the handler's 30 s sleep ends.
    let out = dispatcher.wait(Duration::from_secs(15));

    out.assert_exit(130);
    let mut left = Vec::new();
    let gone = wait_until(Duration::from_secs(5), || {
        left = sleepers.pids();
        left.is_empty()
    });
    assert!(
        gone,
        "the handler `{}` outlived the dispatcher (pids {left:?})",
        sleepers.command
    );
    assert_eq!(remote_tip(&world), tip, "something was pushed:\n{out}");
    let clone = world.fresh_clone();
    assert_eq!(clone.ls("requests"), [".gitkeep", "stuck.yml"]);
    assert_eq!(
        clone.statuses(),
        Vec::new(),
        "an outcome was pushed:\n{out}"
    );
}

#[test]
fn selftest_passes_silently() {
    let world = World::new().build();
    let mut cmd = world.dispatcher();
    cmd.arg("selftest");

    let out = world.spawn(cmd).wait(Duration::from_secs(120));

    out.assert_exit(0);
    assert_eq!(out.stdout, "", "selftest printed on stdout:\n{out}");
}

#[test]
fn completions_for_bash_zsh_fish_and_the_man_page_are_generated() {
    let world = World::new().build();
    let generate = |args: &[&str]| {
        let mut cmd = world.dispatcher();
        cmd.args(args);
        let out = world.output(cmd);
        out.assert_exit(0);
        out
    };

    let bash = generate(&["completions", "bash"]);
    assert!(
        bash.stdout.contains("git-dispatch") && bash.stdout.contains("replay"),
        "bash completions lack the command or its subcommands:\n{bash}"
    );
    for shell in ["zsh", "fish"] {
        let out = generate(&["completions", shell]);
        assert!(
            out.stdout.contains("replay"),
            "{shell} completions lack the subcommands:\n{out}"
        );
    }
    let man = generate(&["man"]);
    assert!(
        man.stdout.starts_with(".TH") || man.stdout.starts_with(".ie"),
        "not a roff page:\n{}",
        &man.stdout[..man.stdout.len().min(200)]
    );
    assert!(
        man.stdout.contains("run"),
        "the man page does not mention `run`"
    );
}

#[test]
fn cli_git_transport_fetches_and_pushes_through_git_daemon() {
    let world = World::new().build();
    world.submit("over-cli.yml", "kind: echo\n");
    let daemon = GitDaemon::serve(&world);

    world
        .run_via(&daemon.url(), &["--git-transport", "cli"])
        .assert_exit(0);

    let clone = world.clone_from(&daemon.url());
    assert_eq!(clone.status("over-cli")["state"], "succeeded");
    assert_eq!(clone.ls("requests"), [".gitkeep"]);
}

#[test]
fn cli_git_transport_reports_a_push_refused_by_a_hook_with_exit_3() {
    let world = World::new().build();
    world.submit("held.yml", "kind: echo\n");
    let daemon = GitDaemon::serve(&world);
    let hook = world.remote.join("hooks/pre-receive");
    fs::write(
        &hook,
        "#!/bin/sh\necho 'pushes are frozen for maintenance' >&2\nexit 1\n",
    )
    .expect("write the hook");
    fs::set_permissions(&hook, fs::Permissions::from_mode(0o755)).expect("chmod the hook");
    let tip = remote_tip(&world);

    let out = world.run_via(
        &daemon.url(),
        &["--git-transport", "cli", "--push-attempts", "2"],
    );

    out.assert_exit(3);
    assert!(out.stderr.contains("not pushed"), "{out}");
    assert!(
        out.stderr.contains("held"),
        "the unpushed outcome is not named:\n{out}"
    );
    assert_eq!(remote_tip(&world), tip, "the remote moved despite its hook");
}

#[test]
fn once_takes_only_the_oldest_request() {
    let world = World::new().build();
    world.submit("c-oldest.yml", "kind: echo\n");
    world.submit("b-middle.yml", "kind: echo\n");
    world.submit("a-newest.yml", "kind: echo\n");

    let out = world.output(world.run_command(world.remote_arg(), &["--once"]));

    out.assert_exit(0);
    let clone = world.fresh_clone();
    assert_eq!(
        clone.ls("requests"),
        [".gitkeep", "a-newest.yml", "b-middle.yml"],
        "{out}"
    );
    let statuses = clone.statuses();
    assert_eq!(
        statuses
            .iter()
            .map(|(key, _)| key.as_str())
            .collect::<Vec<_>>(),
        ["c-oldest"],
        "{out}"
    );
    assert_eq!(statuses[0].1["state"], "succeeded");
}

/// Every path under `dir`, sorted: what "created nothing" compares.
fn tree(dir: &std::path::Path) -> Vec<String> {
    let mut paths = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            paths.push(path.display().to_string());
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            }
        }
    }
    paths.sort();
    paths
}

#[test]
fn doctor_creates_no_workdir_lock_dir_or_state_folder() {
    let world = World::new().build();
    let home_before = tree(&world.home);

    // The default workdir (under `HOME`) and its default lock dir.
    let mut cmd = world.dispatcher();
    cmd.args(["doctor", "--remote", world.remote_arg()]);
    let out = world.spawn(cmd).wait(Duration::from_secs(90));
    out.assert_exit(0);
    assert_eq!(
        tree(&world.home),
        home_before,
        "doctor created a default state folder:\n{out}"
    );

    // A named workdir that does not exist yet: reported as creatable, not created.
    let mut cmd = world.dispatcher();
    cmd.args(["doctor", "--remote", world.remote_arg(), "--workdir"])
        .arg(&world.work);
    let out = world.spawn(cmd).wait(Duration::from_secs(90));
    out.assert_exit(0);
    assert!(
        !world.work.exists(),
        "doctor created the workdir (or its `locks`):\n{out}"
    );
    assert!(
        out.stdout
            .contains("does not exist yet; `run` will create it"),
        "doctor does not say the workdir will be created:\n{out}"
    );

    // An existing workdir gets no `locks` folder.
    fs::create_dir(&world.work).unwrap();
    let mut cmd = world.dispatcher();
    cmd.args(["doctor", "--remote", world.remote_arg(), "--workdir"])
        .arg(&world.work);
    let out = world.spawn(cmd).wait(Duration::from_secs(90));
    out.assert_exit(0);
    assert_eq!(
        tree(&world.work),
        Vec::<String>::new(),
        "doctor wrote into the workdir:\n{out}"
    );
}

#[test]
fn the_shipped_units_pre_start_passes_with_a_broken_kind_and_fails_on_a_host_fault() {
    let world = World::new().build();
    world.index(&format!(
        "{DEFAULT_INDEX}typo:\n  handler: no-such-handler.sh\n"
    ));
    world.publish("a kind with a typo");
    let unit = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/git-dispatch.service"
    ))
    .expect("read the shipped unit");
    let pre = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStartPre="))
        .expect("the unit has an ExecStartPre");
    assert!(
        !pre.starts_with('-'),
        "the pre-start ignores every failure (`-`), host faults included: {pre}"
    );
    let mut words = pre.split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/git-dispatch"), "{pre}");
    let args: Vec<&str> = words.collect();
    let pre_start = |workdir: &std::path::Path| {
        let mut cmd = world.dispatcher();
        cmd.args(&args)
            .env("GIT_DISPATCH_REMOTE", world.remote_arg())
            .env("GIT_DISPATCH_WORKDIR", workdir)
            .env("GIT_DISPATCH_LOCK_DIR", &world.locks)
            .env("GIT_DISPATCH_LOG_FORMAT", "json");
        world.spawn(cmd).wait(Duration::from_secs(90))
    };

    let out = pre_start(&world.work);
    out.assert_exit(0);
    assert!(
        out.stdout.contains("typo"),
        "the broken kind is not reported:\n{out}"
    );

    // A fault of the host itself still stops the start.
    let file = world.root.join("a-file");
    fs::write(&file, "not a directory").unwrap();
    pre_start(&file).assert_exit(1);
}

#[test]
fn metrics_label_kinds_the_index_does_not_list_as_unknown() {
    let world = World::new().build();
    world.submit("listed.yml", "kind: echo\n");
    world.submit("free-text.yml", "kind: zz-anything-a-submitter-writes\n");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut dispatcher = world.spawn(world.run_command(
        world.remote_arg(),
        &["--poll-interval", "200ms", "--metrics-addr", &addr],
    ));

    let pushed = wait_until(DEADLINE, || {
        (remote_has(&world, &processed("free-text", "status.json"))
            && remote_has(&world, &processed("listed", "status.json")))
            || !dispatcher.running()
    });
    assert!(
        pushed && dispatcher.running(),
        "{}",
        dispatcher.output_so_far()
    );
    let (code, metrics) = http_get(port, "/metrics")
        .unwrap_or_else(|| panic!("nothing answers on {addr}: {}", dispatcher.output_so_far()));
    assert_eq!(code, 200, "GET /metrics:\n{metrics}");
    let outcomes: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("git_dispatch_requests_total{"))
        .collect();
    assert!(
        !metrics.contains("zz-anything"),
        "a submitter's free text became a label:\n{metrics}"
    );
    assert!(
        outcomes
            .iter()
            .any(|l| l.contains("kind=\"unknown\"") && l.contains("state=\"rejected\"")),
        "the unlisted kind is not counted as `unknown`:\n{metrics}"
    );
    assert!(
        outcomes.iter().any(|l| l.contains("kind=\"echo\"")),
        "a listed kind lost its label:\n{metrics}"
    );
    dispatcher.terminate();
}
