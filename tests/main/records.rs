//! Records: each outcome's files are its own and written once. An attempt's log never takes the path
//! of another id's log; an id that already has an outcome in the tree an outcome commit is made on
//! gets no second one, whoever recorded the first; a request file changed after it was taken is not
//! deleted with the outcome of the version that ran; a remote branch rewritten under a running
//! dispatcher is noticed and said. Every test asserts on a fresh clone of the remote.

use std::path::Path;
use std::time::Duration;

use crate::support::proxy::Proxy;
use crate::support::{
    Background, Checkout, GitDaemon, World, add_kinds, free_port, git_command, log_file, metric,
    processed, sha256_hex, shard, wait_until,
};

/// How long a dispatcher process of these tests may take to do what a test waits for.
const DEADLINE: Duration = Duration::from_secs(40);

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

/// `git --git-dir DIR ARGS...` in the world's environment; trimmed stdout, `None` when it fails.
fn git_dir(world: &World, dir: &Path, args: &[&str]) -> Option<String> {
    let out = git_command(&world.home, &world.root)
        .arg("--git-dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("spawn git");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn remote_head(world: &World) -> String {
    git_dir(world, &world.remote, &["rev-parse", "refs/heads/main"]).expect("the remote's head")
}

/// Whether the dispatcher's workdir has fetched the remote's head.
fn fetched(world: &World) -> bool {
    git_dir(
        world,
        &world.work.join("repo.git"),
        &["rev-parse", "refs/remotes/origin/main"],
    ) == Some(remote_head(world))
}

/// A world with kind `held`, whose first run (in any dispatcher) waits until `markers/release`
/// exists, after `markers/held`; the other runs do not wait.
fn world_with_a_held_kind() -> World {
    let world = World::new().build();
    let markers = world.markers.display();
    add_kinds(
        &world,
        &[(
            "held",
            &format!(
                "#!/bin/sh\necho \"ran $DISPATCH_ID\"\nif mkdir '{markers}/held' 2>/dev/null; then\n\
                 while [ ! -e '{markers}/release' ]; do sleep 0.05; done\nfi\n"
            ),
            "",
        )],
    );
    world
}

/// The polling dispatcher with `/metrics` on a port of its own, once its first run holds.
fn polling_dispatcher_holding_its_run(world: &World) -> (Background, u16) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut dispatcher = world.spawn(world.run_command(
        world.remote_arg(),
        &["--poll-interval", "100ms", "--metrics-addr", &addr],
    ));
    let held = wait_until(DEADLINE, || {
        world.markers.join("held").exists() || !dispatcher.running()
    });
    assert!(
        held && dispatcher.running(),
        "the run did not start: {}",
        dispatcher.output_so_far()
    );
    (dispatcher, port)
}

/// Lets the held run end, once the dispatcher has fetched what the remote holds now.
fn release_once_fetched(world: &World, dispatcher: &Background) {
    assert!(
        wait_until(DEADLINE, || fetched(world)),
        "the dispatcher did not fetch the remote's head: {}",
        dispatcher.output_so_far()
    );
    std::fs::write(world.markers.join("release"), b"").expect("write the release marker");
}

/// The commits of the remote that modified (not added) `path`.
fn modifications(clone: &Checkout, path: &str) -> String {
    clone.git(&["log", "--format=%h %s", "--diff-filter=M", "--", path])
}

/// Dispatcher A runs `twice` and is cut off from the remote: it stops the handler (fenced) and records
/// the run `abandoned` in its workdir, while dispatcher B (another workdir) takes the expired claim
/// over and records `twice` first. A then reaches the remote again: it records no second outcome, and
/// says so in its log and /metrics.
#[test]
fn an_id_another_dispatcher_recorded_meanwhile_gets_no_second_outcome() {
    let world = world_with_a_held_kind();
    world.submit("twice.yml", "kind: held\n");
    let daemon = GitDaemon::serve(&world);
    let proxy = Proxy::start(daemon.port());
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut a = world.spawn(world.run_command(
        &proxy.url(),
        &[
            "--poll-interval",
            "100ms",
            "--lease",
            "2s",
            "--dispatcher-id",
            "a",
            "--metrics-addr",
            &addr,
        ],
    ));
    let held = wait_until(DEADLINE, || {
        world.markers.join("held").exists() || !a.running()
    });
    assert!(
        held && a.running(),
        "the run did not start: {}",
        a.output_so_far()
    );
    proxy.cut();

    let mut b = world.dispatcher();
    b.args([
        "run",
        "--remote",
        &daemon.url(),
        "--until-empty",
        "--lease",
        "2s",
    ])
    .args([
        "--dispatcher-id",
        "b",
        "--poll-interval",
        "100ms",
        "--workdir",
    ])
    .arg(world.root.join("work-b"))
    .arg("--lock-dir")
    .arg(world.root.join("locks-b"));
    world.output(b).assert_exit(0);
    let recorded_by_b = remote_head(&world);
    assert_eq!(world.fresh_clone().status("twice")["dispatcher"], "b");
    proxy.restore();

    let settled = wait_until(DEADLINE, || {
        metric(port, "git_dispatch_outcomes_already_recorded_total").is_some_and(|n| n >= 1.0)
            || remote_head(&world) != recorded_by_b
            || !a.running()
    });
    assert!(settled, "A did nothing: {}", a.output_so_far());
    let counted = metric(port, "git_dispatch_outcomes_already_recorded_total");
    std::fs::write(world.markers.join("release"), b"").expect("write the release marker");
    a.terminate();
    let out = a.wait(DEADLINE);
    out.assert_exit(0);

    let clone = world.fresh_clone();
    assert_eq!(clone.trailers("Dispatch-Id"), ["twice"], "{out}");
    assert_eq!(
        modifications(&clone, &processed("twice", "status.json")),
        ""
    );
    assert_eq!(remote_head(&world), recorded_by_b, "A pushed something");
    assert!(
        out.stderr.contains("fenced") && out.stderr.contains("twice: the remote already records"),
        "A's log does not report its run:\n{out}"
    );
    assert!(
        out.stderr.contains("done: 0 outcome(s)"),
        "A counts an outcome as recorded:\n{out}"
    );
    assert_eq!(counted, Some(1.0), "{out}");
}

/// `edited.yml` is changed and pushed while its run holds: the outcome records the version that ran
/// and leaves the changed one in the inbox, where it is taken as a submission of its own (rejected:
/// its id is used now).
#[test]
fn a_request_changed_after_it_was_taken_stays_in_the_inbox_as_a_new_submission() {
    let world = world_with_a_held_kind();
    let ran = "kind: held\nid: edited\n";
    world.submit("edited.yml", ran);
    let (dispatcher, port) = polling_dispatcher_holding_its_run(&world);
    let changed = "kind: held\nid: edited\n# changed after it was taken\n";
    world.submit("edited.yml", changed);
    release_once_fetched(&world, &dispatcher);

    let settled = wait_until(DEADLINE, || {
        let clone = world.fresh_clone();
        clone.read(&processed("edited", "status.json")).is_some()
            && (clone.read("requests/edited.yml").is_none()
                || clone.read(&processed("edited~1", "status.json")).is_some())
    });
    assert!(settled, "nothing recorded: {}", dispatcher.output_so_far());
    let counted = metric(port, "git_dispatch_requests_changed_after_taken_total");
    dispatcher.terminate();
    let out = dispatcher.wait(DEADLINE);
    out.assert_exit(0);

    let clone = world.fresh_clone();
    let status = clone.status("edited");
    assert_eq!(status["state"], "succeeded", "{status:#}");
    assert_eq!(
        clone.read_string(&processed("edited", "yml")).as_deref(),
        Some(ran),
        "the outcome does not keep the version that ran"
    );
    let again = clone.status("edited~1");
    assert_eq!(again["state"], "rejected", "{again:#}");
    assert_eq!(
        clone.read_string(&processed("edited~1", "yml")).as_deref(),
        Some(changed),
        "the changed version is not recorded as a submission of its own"
    );
    assert_eq!(clone.ls("requests"), [".gitkeep"]);
    assert!(
        out.stderr
            .contains("`requests/edited.yml` was changed after it was taken"),
        "the change is not reported:\n{out}"
    );
    assert_eq!(counted, Some(1.0), "{out}");
}

/// The remote's branch is reset to before an outcome the dispatcher pushed: the dispatcher says so,
/// counts it, re-creates that outcome on the rewritten branch and pushes it; the request, back in the
/// inbox, does not run again.
#[test]
fn a_remote_branch_rewritten_under_a_running_dispatcher_is_reported_and_nothing_runs_twice() {
    let world = World::new().build();
    let markers = world.markers.display();
    add_kinds(
        &world,
        &[(
            "tally",
            &format!("#!/bin/sh\necho ran >> '{markers}/runs-'\"$DISPATCH_ID\"\n"),
            "",
        )],
    );
    world.submit("once.yml", "kind: tally\n");
    let before = remote_head(&world);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut dispatcher = world.spawn(world.run_command(
        world.remote_arg(),
        &["--poll-interval", "100ms", "--metrics-addr", &addr],
    ));
    let pushed = wait_until(DEADLINE, || {
        remote_head(&world) != before && fetched(&world) || !dispatcher.running()
    });
    assert!(
        pushed && dispatcher.running(),
        "the outcome was not pushed: {}",
        dispatcher.output_so_far()
    );

    git_dir(
        &world,
        &world.remote,
        &["update-ref", "refs/heads/main", &before],
    )
    .expect("reset the remote's branch");
    let restored = wait_until(DEADLINE, || {
        let clone = world.fresh_clone();
        clone.read(&processed("once", "status.json")).is_some()
    });
    let counted = metric(port, "git_dispatch_remote_rewritten_total");
    dispatcher.terminate();
    let out = dispatcher.wait(DEADLINE);
    out.assert_exit(0);
    assert!(restored, "the outcome was not pushed again:\n{out}");

    let clone = world.fresh_clone();
    assert_eq!(clone.trailers("Dispatch-Id"), ["once"]);
    assert_eq!(clone.ls("requests"), [".gitkeep"]);
    let runs = std::fs::read_to_string(world.markers.join("runs-once")).unwrap_or_default();
    assert_eq!(runs, "ran\n", "the request ran again");
    assert!(
        out.stderr.contains("was rewritten"),
        "the rewrite is not reported:\n{out}"
    );
    assert_eq!(counted, Some(1.0), "{out}");
}
