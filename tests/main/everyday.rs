//! The submitter's everyday commands, run in a clone: `submit` (write, check, commit alone, push,
//! rebase when the remote moved), `status` (queue, recent outcomes, counts), `show ID` (one outcome
//! and its log), and `init DIR` (a new inbox the dispatcher can serve).

use std::path::Path;

use serde_json::Value;

use crate::support::{DEFAULT_INDEX, RunOutput, World, git_command, log_file, processed};

/// A kind whose handler prints the params it was given, as JSON.
const PARAMS_HANDLER: &str = "#!/bin/sh\necho \"params: $DISPATCH_PARAMS\"\n";

/// `git-dispatch ARGS` run in `dir`, with a Git identity (the commands use the user's `git`) and no
/// user or system Git configuration.
fn everyday(world: &World, dir: &Path, args: &[&str]) -> RunOutput {
    let mut cmd = world.dispatcher();
    cmd.current_dir(dir)
        .args(args)
        .env("LC_ALL", "C")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", "Sam Submitter")
        .env("GIT_AUTHOR_EMAIL", "sam@example.test")
        .env("GIT_COMMITTER_NAME", "Sam Submitter")
        .env("GIT_COMMITTER_EMAIL", "sam@example.test");
    world.output(cmd)
}

/// `git-dispatch ARGS` in the submitter's clone.
fn in_submitter(world: &World, args: &[&str]) -> RunOutput {
    everyday(world, &world.submitter.dir, args)
}

/// The commit `main` points to in the bare repository at `git_dir`.
fn head_of(world: &World, git_dir: &Path) -> String {
    let out = git_command(&world.home, &world.root)
        .arg("--git-dir")
        .arg(git_dir)
        .args(["rev-parse", "refs/heads/main"])
        .output()
        .expect("spawn git");
    assert!(
        out.status.success(),
        "rev-parse main in `{}` failed",
        git_dir.display()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn json(out: &RunOutput) -> Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{out}"))
}

fn ids(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|item| item["id"].as_str().expect("every item has an id"))
        .collect()
}

#[test]
fn submit_writes_typed_nested_params_commits_only_that_file_and_the_dispatcher_runs_it() {
    let world = World::new()
        .index(&format!("{DEFAULT_INDEX}params:\n  handler: params.sh\n"))
        .handler("params.sh", PARAMS_HANDLER)
        .build();
    // Something else staged in the clone must stay out of the request's commit.
    world
        .submitter
        .write("notes.txt", "not part of the request\n");
    world.submitter.git(&["add", "notes.txt"]);

    let out = in_submitter(
        &world,
        &[
            "submit",
            "params",
            "--id",
            "typed-1",
            "--param",
            "n=3",
            "--param",
            "flag=true",
            "--param",
            "name=main",
            "--param",
            "x=\"3\"",
            "--param",
            "db.name=main",
        ],
    );
    out.assert_exit(0);
    assert_eq!(
        out.stdout.trim(),
        "typed-1",
        "the id is not printed:\n{out}"
    );

    let clone = world.fresh_clone();
    assert_eq!(
        clone.read_string("requests/typed-1.yml").as_deref(),
        Some(
            "kind: params\nid: typed-1\nparams:\n  n: 3\n  flag: true\n  name: main\n  x: '3'\n  db:\n    name: main\n"
        )
    );
    assert_eq!(
        clone.log_subjects().last().map(String::as_str),
        Some("request: typed-1 params")
    );
    assert_eq!(
        clone.git(&["show", "--name-only", "--format=", "HEAD"]),
        "requests/typed-1.yml"
    );
    assert_eq!(
        world.submitter.git(&["status", "--porcelain"]),
        "A  notes.txt",
        "what else was staged must stay staged, uncommitted"
    );

    world.run(&[]).assert_exit(0);
    let clone = world.fresh_clone();
    assert_eq!(clone.status("typed-1")["state"], "succeeded");
    let log = clone.read_string(&log_file("typed-1", 1)).expect("a log");
    for typed in [
        "\"n\":3",
        "\"flag\":true",
        "\"name\":\"main\"",
        "\"x\":\"3\"",
        "\"db\":{\"name\":\"main\"}",
    ] {
        assert!(
            log.contains(typed),
            "the handler did not get `{typed}`:\n{log}"
        );
    }
}

#[test]
fn submit_from_a_file_takes_its_id_and_params_and_params_override_them() {
    let world = World::new().build();
    let draft = world.root.join("draft.yml");
    std::fs::write(&draft, "params:\n  count: 1\nid: from-file\n").expect("write draft");

    let out = in_submitter(
        &world,
        &[
            "submit",
            "count",
            "--file",
            draft.to_str().expect("utf-8"),
            "--param",
            "count=2",
        ],
    );
    out.assert_exit(0);
    assert_eq!(out.stdout.trim(), "from-file");
    assert_eq!(
        world
            .fresh_clone()
            .read_string("requests/from-file.yml")
            .as_deref(),
        Some("kind: count\nid: from-file\nparams:\n  count: 2\n")
    );

    std::fs::write(&draft, "kind: echo\n").expect("write draft");
    let out = in_submitter(
        &world,
        &["submit", "count", "--file", draft.to_str().expect("utf-8")],
    );
    out.assert_exit(2);
    assert!(
        out.stderr.contains("`echo`") && out.stderr.contains("`count`"),
        "the disagreeing kinds are not named:\n{out}"
    );
}

#[test]
fn submit_of_an_invalid_request_exits_1_naming_the_field_and_commits_nothing() {
    let world = World::new().build();
    let remote_before = head_of(&world, &world.remote);
    let local_before = world.submitter.git(&["rev-parse", "HEAD"]);

    let out = in_submitter(
        &world,
        &["submit", "count", "--id", "bad-1", "--param", "count=ten"],
    );
    out.assert_exit(1);
    assert!(
        out.stderr.contains("requests/bad-1.yml") && out.stderr.contains("params.count"),
        "the file and the field are not named:\n{out}"
    );
    assert_eq!(
        out.stdout.trim(),
        "",
        "an id was printed for nothing:\n{out}"
    );

    assert_eq!(head_of(&world, &world.remote), remote_before);
    assert_eq!(world.submitter.git(&["rev-parse", "HEAD"]), local_before);
    assert_eq!(world.submitter.git(&["status", "--porcelain"]), "");
    assert!(world.submitter.read("requests/bad-1.yml").is_none());
}

#[test]
fn submit_of_an_id_that_already_has_an_outcome_is_refused() {
    let world = World::new().build();
    world.submit("once.yml", "kind: echo\n");
    world.run(&[]).assert_exit(0);
    let remote_before = head_of(&world, &world.remote);

    let out = in_submitter(&world, &["submit", "echo", "--id", "once"]);
    out.assert_exit(1);
    assert!(
        out.stderr.contains("`once`") && out.stderr.contains("already used"),
        "the reuse is not explained:\n{out}"
    );
    assert_eq!(head_of(&world, &world.remote), remote_before);
}

#[test]
fn submit_when_the_remote_moved_rebases_and_pushes() {
    let world = World::new().build();
    let other = world.fresh_clone();
    other.submit("theirs.yml", "kind: echo\n");

    let out = in_submitter(&world, &["submit", "echo", "--id", "mine"]);
    out.assert_exit(0);
    assert!(
        out.stderr.contains("rebasing"),
        "the push was not refused and retried:\n{out}"
    );

    let clone = world.fresh_clone();
    assert_eq!(clone.ls("requests"), [".gitkeep", "mine.yml", "theirs.yml"]);
    let subjects = clone.log_subjects();
    assert_eq!(
        subjects[subjects.len() - 2..],
        ["request theirs.yml", "request: mine echo"]
    );
    assert_eq!(
        clone.git(&["rev-list", "--merges", "HEAD"]),
        "",
        "a merge commit instead of a rebase"
    );
}

#[test]
fn submit_to_an_unreachable_remote_exits_3_and_keeps_the_commit() {
    let world = World::new().build();
    let gone = world.root.join("gone.git");
    world
        .submitter
        .git(&["remote", "set-url", "origin", gone.to_str().expect("utf-8")]);

    let out = in_submitter(&world, &["submit", "echo", "--id", "stranded"]);
    out.assert_exit(3);
    assert!(
        out.stderr.contains("committed locally") && out.stderr.contains("`stranded`"),
        "it does not say the request is committed locally:\n{out}"
    );
    assert_eq!(
        world.submitter.git(&["log", "-1", "--format=%s"]),
        "request: stranded echo"
    );
}

#[test]
fn submit_without_an_id_makes_valid_ids_that_sort_in_submit_order() {
    let world = World::new().build();

    let first = in_submitter(&world, &["submit", "echo"]);
    first.assert_exit(0);
    let second = in_submitter(&world, &["submit", "echo"]);
    second.assert_exit(0);
    let (a, b) = (first.stdout.trim(), second.stdout.trim());

    for id in [a, b] {
        let bytes = id.as_bytes();
        assert!(
            !bytes.is_empty()
                && bytes.len() <= 128
                && bytes[0].is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c)),
            "`{id}` is not a valid id"
        );
    }
    assert!(a < b, "ids do not sort in submit order: {a} then {b}");
    let clone = world.fresh_clone();
    assert_eq!(
        clone.read_string(&format!("requests/{b}.yml")),
        Some(format!("kind: echo\nid: {b}\n"))
    );
}

#[test]
fn submit_no_push_commits_locally_and_leaves_the_remote_unchanged() {
    let world = World::new().build();
    let remote_before = head_of(&world, &world.remote);

    let out = in_submitter(&world, &["submit", "echo", "--id", "local-1", "--no-push"]);
    out.assert_exit(0);
    assert_eq!(out.stdout.trim(), "local-1");

    assert_eq!(head_of(&world, &world.remote), remote_before);
    assert_eq!(
        world.submitter.git(&["log", "-1", "--format=%s"]),
        "request: local-1 echo"
    );
    assert_eq!(world.submitter.git(&["status", "--porcelain"]), "");
}

#[test]
fn submit_does_not_push_a_request_staged_with_no_push() {
    let world = World::new().build();
    let remote_before = head_of(&world, &world.remote);
    in_submitter(&world, &["submit", "echo", "--id", "staged-1", "--no-push"]).assert_exit(0);
    let head_before = world.submitter.git(&["rev-parse", "HEAD"]);

    let out = in_submitter(&world, &["submit", "echo", "--id", "next-1"]);

    out.assert_exit(2);
    assert_eq!(
        head_of(&world, &world.remote),
        remote_before,
        "the staged request was pushed without being asked:\n{out}"
    );
    assert!(
        out.stderr.contains("1 local commit") && out.stderr.contains("git push"),
        "the refusal does not say why and what to do:\n{out}"
    );
    assert_eq!(
        world.submitter.git(&["rev-parse", "HEAD"]),
        head_before,
        "the refused request was committed"
    );
    assert_eq!(world.submitter.git(&["status", "--porcelain"]), "");

    // Once the staged one is pushed (the user's choice), the next submit goes through alone.
    world.submitter.git(&["push", "-q"]);
    in_submitter(&world, &["submit", "echo", "--id", "next-1"]).assert_exit(0);
    let clone = world.fresh_clone();
    assert_eq!(
        clone.ls("requests"),
        [".gitkeep", "next-1.yml", "staged-1.yml"]
    );
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

#[test]
fn init_creates_an_inbox_that_validates_and_the_dispatcher_serves() {
    let world = World::new().build();
    let dir = world.root.join("new-inbox");

    let out = everyday(&world, &world.root, &["init", "new-inbox"]);
    out.assert_exit(0);
    assert!(
        out.stdout.contains("git remote add") && out.stdout.contains("git push"),
        "no next steps:\n{out}"
    );
    everyday(&world, &dir, &["validate", "--index"]).assert_exit(0);
    let readme = std::fs::read_to_string(dir.join("README.md")).expect("a README");
    for needle in [
        "git-dispatch submit",
        "git push",
        "Dispatch-State",
        "processed/",
    ] {
        assert!(readme.contains(needle), "the README lacks `{needle}`");
    }

    // Publish it on a bare remote, as the next steps say, and serve it.
    let remote = world.root.join("new-inbox.git");
    let mut bare = git_command(&world.home, &world.root);
    bare.args(["init", "-q", "--bare", "-b", "main"])
        .arg(&remote);
    assert!(bare.status().expect("spawn git").success());
    let git = |args: &[&str]| {
        let mut cmd = git_command(&world.home, &dir);
        cmd.args(args);
        let out = cmd.output().expect("spawn git");
        assert!(out.status.success(), "git {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(git(&["branch", "--show-current"]), "main");
    assert_eq!(git(&["status", "--porcelain"]), "");
    git(&["remote", "add", "origin", remote.to_str().expect("utf-8")]);
    git(&["push", "-q", "-u", "origin", "main"]);

    everyday(
        &world,
        &dir,
        &[
            "submit",
            "echo",
            "--id",
            "from-init",
            "--param",
            "message=hi",
        ],
    )
    .assert_exit(0);
    let run = world.output(world.run_command(remote.to_str().expect("utf-8"), &["--until-empty"]));
    run.assert_exit(0);

    let clone = world.clone_from(remote.to_str().expect("utf-8"));
    assert_eq!(clone.status("from-init")["state"], "succeeded", "{run}");
}

#[test]
fn init_into_a_non_empty_folder_exits_2_and_touches_nothing() {
    let world = World::new().build();
    let dir = world.root.join("occupied");
    std::fs::create_dir(&dir).expect("create dir");
    std::fs::write(dir.join("keep.txt"), "mine\n").expect("write file");

    let out = everyday(&world, &world.root, &["init", "occupied"]);
    out.assert_exit(2);
    assert!(out.stderr.contains("not empty"), "no reason given:\n{out}");
    assert!(
        !dir.join(".git").exists(),
        "a repository was created anyway"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("keep.txt")).expect("still there"),
        "mine\n"
    );
}

#[test]
fn inits_scaffold_points_at_sections_that_exist_and_its_ci_validates_the_index() {
    let world = World::new().build();
    let dir = world.root.join("scaffolded");
    everyday(&world, &world.root, &["init", "scaffolded"]).assert_exit(0);

    let readme = std::fs::read_to_string(dir.join("README.md")).expect("a README");
    let index = std::fs::read_to_string(dir.join("handlers/index.yml")).expect("an index");
    let mut pointers = 0;
    for line in index.lines().filter(|l| l.starts_with('#')) {
        let mut rest = line;
        while let Some((_, after)) = rest.split_once("README.md, \"") {
            let (section, tail) = after.split_once('"').expect("a closed quote");
            pointers += 1;
            assert!(
                readme
                    .lines()
                    .any(|l| l.starts_with("## ") && l[3..].starts_with(section)),
                "the index points at README section {section:?}, which the README lacks"
            );
            rest = tail;
        }
    }
    assert!(pointers > 0, "the index names no README section:\n{index}");

    let workflow =
        std::fs::read_to_string(dir.join(".github/workflows/replay.yml")).expect("a workflow");
    assert!(
        workflow.contains("git-dispatch validate --index"),
        "the workflow does not run `validate --index`:\n{workflow}"
    );
    assert!(
        workflow.contains("git-dispatch replay"),
        "the workflow does not replay:\n{workflow}"
    );
    assert!(
        !workflow.contains("your-org") && !workflow.contains("://"),
        "the workflow installs from a placeholder URL:\n{workflow}"
    );
}

#[test]
fn demo_piped_to_a_file_shows_every_step_and_keeps_its_table_aligned() {
    let world = World::new().build();
    let out = everyday(&world, &world.root, &["demo"]);
    out.assert_exit(0);

    // Standard output is a file here: step 3 must still say what the dispatcher did.
    let stdout = &out.stdout;
    let step3 = stdout
        .split_once("\n3. ")
        .and_then(|(_, rest)| rest.split_once("\n4. "))
        .map(|(step, _)| step)
        .unwrap_or_else(|| panic!("no steps 3 and 4:\n{out}"));
    assert!(
        step3
            .lines()
            .skip(1)
            .any(|l| l.contains("recorded 7 outcome")),
        "step 3 is empty when piped:\n{out}"
    );

    // Every row's columns start where the header's do, whatever the length of a kind or an id.
    let lines: Vec<&str> = stdout.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.trim_start().starts_with("id ") && l.contains(" state "))
        .unwrap_or_else(|| panic!("no table header:\n{out}"));
    let columns: Vec<usize> = ["kind", "state"]
        .iter()
        .map(|c| lines[header].find(&format!(" {c}")).expect("a column") + 1)
        .collect();
    let rows: Vec<&str> = lines[header + 1..]
        .iter()
        .take_while(|l| !l.trim().is_empty())
        .copied()
        .collect();
    assert_eq!(rows.len(), 7, "{out}");
    assert!(
        rows.iter().any(|r| r.contains("reboot-the-world")),
        "the long kind is missing:\n{out}"
    );
    for row in rows {
        for &at in &columns {
            assert!(
                row.len() > at && row.as_bytes()[at - 1] == b' ' && row.as_bytes()[at] != b' ',
                "a column of this row does not start under its header (offset {at}):\n{}\n{row}",
                lines[header]
            );
        }
    }
}
