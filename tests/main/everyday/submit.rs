//! `submit`: typed nested params, or a file's id and params, written and checked, committed alone and
//! pushed; an invalid request or an id with an outcome is refused with nothing committed; a moved remote
//! is rebased onto; an unreachable one keeps the commit; ids made without `--id` sort in submit order;
//! `--no-push` commits locally, and a later `submit` does not push what it staged.

use std::path::Path;

use super::in_submitter;
use crate::support::{DEFAULT_INDEX, World, git_command, log_file};

/// A kind whose handler prints the params it was given, as JSON.
const PARAMS_HANDLER: &str = "#!/bin/sh\necho \"params: $DISPATCH_PARAMS\"\n";

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
