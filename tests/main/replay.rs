//! Golden replay: `git-dispatch replay` runs request fixtures through the real pipeline in a hermetic
//! copy of the repository's handlers and schemas, and compares the outcome with the blessed one.

use std::fs;

use crate::support::{RunOutput, World};

const SAY: &str = "#!/bin/sh\necho \"say: $(cat \"$1\" | sed -n 's/^ *word: //p')\"\n";
const INDEX: &str = "say:\n  handler: say.sh\n  timeout: 10s\nfail:\n  handler: fail.sh\n";
const FAIL: &str = "#!/bin/sh\necho 'about to fail' >&2\nexit 7\n";

/// A world whose submitter clone holds the kinds `say` and `fail`, and three fixtures: one that
/// succeeds, one that fails, one that is rejected.
fn world_with_fixtures() -> World {
    let world = World::new()
        .handler("say.sh", SAY)
        .handler("fail.sh", FAIL)
        .index(INDEX)
        .build();
    let fixtures = world.submitter.path("tests/fixtures");
    for (name, request) in [
        ("says-hello", "kind: say\nparams:\n  word: hello\n"),
        ("fails", "kind: fail\n"),
        ("unknown-kind", "kind: nope\n"),
    ] {
        fs::create_dir_all(fixtures.join(name)).unwrap();
        fs::write(fixtures.join(name).join("request.yml"), request).unwrap();
    }
    world
}

fn replay(world: &World, args: &[&str]) -> RunOutput {
    let mut cmd = world.dispatcher();
    cmd.current_dir(&world.submitter.dir)
        .arg("replay")
        .args(args);
    world.output(cmd)
}

/// Every file under `tests/fixtures`, with its bytes, sorted.
fn snapshot(world: &World) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let root = world.submitter.path("tests/fixtures");
    for dir in fs::read_dir(&root).unwrap() {
        let dir = dir.unwrap().path();
        for file in fs::read_dir(&dir).unwrap() {
            let path = file.unwrap().path();
            let name = path.strip_prefix(&root).unwrap().display().to_string();
            files.push((name, fs::read(&path).unwrap()));
        }
    }
    files.sort();
    files
}

#[test]
fn bless_then_replay_passes_and_reports_nothing_but_the_summary() {
    let world = world_with_fixtures();
    replay(&world, &["--bless"]).assert_exit(0);
    let expected = world
        .submitter
        .read_string("tests/fixtures/says-hello/expected.log")
        .expect("bless wrote the log");
    assert_eq!(expected, "say: hello\n");
    let status = world
        .submitter
        .read_string("tests/fixtures/fails/expected.status.json")
        .expect("bless wrote the status");
    assert!(status.contains("\"state\": \"failed\""), "{status}");
    assert!(status.contains("\"exit_code\": 7"), "{status}");
    assert!(
        !status.contains("started_at"),
        "volatile fields are left out: {status}"
    );
    let rejected = world
        .submitter
        .read_string("tests/fixtures/unknown-kind/expected.status.json")
        .unwrap();
    assert!(rejected.contains("\"state\": \"rejected\""), "{rejected}");

    let out = replay(&world, &[]);
    out.assert_exit(0);
    assert_eq!(
        out.stdout.trim(),
        "3 passed, 0 failed",
        "unchanged fixtures are not reported"
    );
}

#[test]
fn a_changed_handler_output_fails_with_a_diff_naming_the_fixture() {
    let world = world_with_fixtures();
    replay(&world, &["--bless"]).assert_exit(0);
    world
        .submitter
        .write_executable("handlers/say.sh", "#!/bin/sh\necho 'say: goodbye'\n");

    let out = replay(&world, &[]);
    out.assert_exit(1);
    assert!(out.stdout.contains("FAILED says-hello"), "{out}");
    assert!(
        out.stdout.contains("-say: hello"),
        "the diff shows what was expected: {out}"
    );
    assert!(
        out.stdout.contains("+say: goodbye"),
        "the diff shows what ran: {out}"
    );
    assert!(
        !out.stdout.contains("FAILED fails"),
        "an unchanged fixture is not reported: {out}"
    );
    assert!(out.stdout.contains("2 passed, 1 failed"), "{out}");
}

#[test]
fn blessing_twice_writes_the_same_bytes() {
    let world = world_with_fixtures();
    replay(&world, &["--bless"]).assert_exit(0);
    let first = snapshot(&world);
    replay(&world, &["--bless"]).assert_exit(0);
    assert_eq!(
        first,
        snapshot(&world),
        "a second bless changed an expectation"
    );
}

#[test]
fn replay_leaves_the_users_repository_unchanged() {
    let world = world_with_fixtures();
    replay(&world, &["--bless"]).assert_exit(0);
    world.submitter.git(&["add", "-A"]);
    world.submitter.commit("fixtures");
    let head = world.submitter.git(&["rev-parse", "HEAD"]);
    let remote_before = world.fresh_clone().git(&["rev-parse", "HEAD"]);

    replay(&world, &[]).assert_exit(0);

    assert_eq!(world.submitter.git(&["rev-parse", "HEAD"]), head);
    assert_eq!(world.submitter.git(&["status", "--porcelain"]), "");
    assert_eq!(
        world.fresh_clone().git(&["rev-parse", "HEAD"]),
        remote_before
    );
}

#[test]
fn filter_runs_only_the_matching_fixtures() {
    let world = world_with_fixtures();
    replay(&world, &["--bless"]).assert_exit(0);
    let out = replay(&world, &["--filter", "hello", "-j", "2"]);
    out.assert_exit(0);
    assert_eq!(out.stdout.trim(), "1 passed, 0 failed");
}

#[test]
fn a_fixture_never_blessed_fails_and_says_so() {
    let world = world_with_fixtures();
    let out = replay(&world, &[]);
    out.assert_exit(1);
    assert!(out.stdout.contains("FAILED says-hello"), "{out}");
    assert!(out.stdout.contains("0 passed, 3 failed"), "{out}");
}

#[test]
fn a_fixture_sets_the_handlers_environment_and_clock() {
    let world = World::new()
        .handler(
            "say.sh",
            "#!/bin/sh\necho \"now=$DISPATCH_NOW epoch=$SOURCE_DATE_EPOCH tz=$TZ\"\n",
        )
        .index(INDEX)
        .build();
    let dir = world.submitter.path("tests/fixtures/clocked");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("request.yml"), "kind: say\n").unwrap();
    fs::write(
        dir.join("fixture.yml"),
        "env:\n  TZ: Europe/Paris\nclock: 2026-01-02T03:04:05Z\n",
    )
    .unwrap();
    replay(&world, &["--bless"]).assert_exit(0);
    assert_eq!(
        fs::read_to_string(dir.join("expected.log")).unwrap(),
        "now=2026-01-02T03:04:05Z epoch=1767323045 tz=Europe/Paris\n"
    );
}

#[test]
fn an_inbox_made_by_init_replays_its_own_fixture() {
    let world = World::new().build();
    let dir = world.root.join("fresh-inbox");
    let mut init = world.dispatcher();
    init.arg("init")
        .arg(&dir)
        .env("GIT_AUTHOR_NAME", "Init")
        .env("GIT_AUTHOR_EMAIL", "init@example.org")
        .env("GIT_COMMITTER_NAME", "Init")
        .env("GIT_COMMITTER_EMAIL", "init@example.org");
    world.output(init).assert_exit(0);
    assert!(dir.join(".github/workflows/replay.yml").is_file());
    let mut cmd = world.dispatcher();
    cmd.current_dir(&dir).arg("replay");
    let out = world.output(cmd);
    out.assert_exit(0);
    assert_eq!(out.stdout.trim(), "1 passed, 0 failed");
}

#[test]
fn a_folder_without_fixtures_fails_with_or_without_bless() {
    let world = world_with_fixtures();
    let empty = world.submitter.path("tests/empty");
    fs::create_dir_all(&empty).unwrap();
    for args in [&["tests/empty"][..], &["tests/empty", "--bless"][..]] {
        let out = replay(&world, args);
        out.assert_exit(1);
        assert!(
            out.stderr.contains("no fixtures in") && out.stderr.contains("tests/empty"),
            "the error does not say the folder holds no fixtures:\n{out}"
        );
    }
    // A filter that matches nothing is the same mistake.
    let out = replay(&world, &["--filter", "no-such-fixture"]);
    out.assert_exit(1);
    assert!(out.stderr.contains("no fixtures in"), "{out}");
}
