//! Privileges: a dispatcher running as root runs handlers as `nobody` (only `nobody`'s groups), as
//! root only when told to (`--run-as root`) and with a warning; one not started as root refuses to
//! switch users; a handler cannot write into the dispatcher's workdir or lock dir.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;

use super::{entry, index_with};
use crate::support::{World, id, line_value, log_file, root_or_skip, running_as_root};

/// Prints who the handler runs as.
const WHOAMI: &str =
    "#!/bin/sh\necho \"UID=$(id -u)\"\necho \"GID=$(id -g)\"\necho \"GROUPS=$(id -G)\"\n";

fn whoami_world() -> World {
    World::new()
        .handler("whoami.sh", WHOAMI)
        .index(&index_with(&[entry(
            "whoami",
            "whoami.sh",
            &["timeout: 30s", "grace: 1s"],
        )]))
        .build()
}

#[test]
fn sandbox_tests_ran_as_root_in_ci() {
    // The tests below that need root stop early (and pass) elsewhere; in CI that would count them as
    // coverage they are not, so CI must run the suite as root.
    if std::env::var_os("CI").is_some() {
        assert!(
            running_as_root(),
            "CI is set but the tests do not run as root: the sandbox tests that switch users were skipped"
        );
    }
}

#[test]
fn as_root_the_handler_runs_as_nobody_with_only_nobodys_groups() {
    if !root_or_skip("as_root_the_handler_runs_as_nobody_with_only_nobodys_groups") {
        return;
    }
    let world = whoami_world();
    world.submit("who.yml", "kind: whoami\n");

    world.run(&[]).assert_exit(0);

    let log = world
        .fresh_clone()
        .read_string(&log_file("who", 1))
        .expect("the log is committed");
    assert_eq!(
        line_value(&log, "UID"),
        id(&["-u", "nobody"]),
        "not nobody's uid:\n{log}"
    );
    assert_ne!(line_value(&log, "UID"), "0");
    assert_eq!(line_value(&log, "GID"), id(&["-g", "nobody"]));
    let mut groups: Vec<&str> = line_value(&log, "GROUPS").split_whitespace().collect();
    groups.sort_unstable();
    let nobody_groups = id(&["-G", "nobody"]);
    let mut expected: Vec<&str> = nobody_groups.split_whitespace().collect();
    expected.sort_unstable();
    assert_eq!(
        groups, expected,
        "the handler kept groups of the dispatcher (root's supplementary groups were not dropped)"
    );
}

#[test]
fn run_as_root_runs_the_handler_as_uid_0_and_warns() {
    if !root_or_skip("run_as_root_runs_the_handler_as_uid_0_and_warns") {
        return;
    }
    let world = whoami_world();
    world.submit("who.yml", "kind: whoami\n");

    let mut run = world.run_command(world.remote_arg(), &["--until-empty"]);
    run.env("GIT_DISPATCH_RUN_AS", "root");
    let out = world.output(run);
    out.assert_exit(0);

    let log = world
        .fresh_clone()
        .read_string(&log_file("who", 1))
        .expect("the log is committed");
    assert_eq!(line_value(&log, "UID"), "0");
    assert!(
        out.stderr
            .lines()
            .any(|line| line.contains("warning") && line.contains("root")),
        "no warning about handlers running as root\n{out}"
    );
}

#[test]
fn a_dispatcher_not_started_as_root_refuses_to_run_handlers_as_another_user() {
    if !root_or_skip("a_dispatcher_not_started_as_root_refuses_to_run_handlers_as_another_user") {
        return;
    }
    let world = whoami_world();
    world.submit("who.yml", "kind: whoami\n");
    let uid: u32 = id(&["-u", "nobody"]).parse().expect("a numeric uid");
    let gid: u32 = id(&["-g", "nobody"]).parse().expect("a numeric gid");

    let mut run = world.run_command(world.remote_arg(), &["--until-empty", "--run-as", "root"]);
    run.uid(uid).gid(gid);
    let out = world.output(run);

    out.assert_exit(2);
    assert!(
        out.stderr.contains("--run-as"),
        "the error does not name `--run-as`\n{out}"
    );
    assert_eq!(
        world.fresh_clone().ls("requests"),
        [".gitkeep", "who.yml"],
        "a refused configuration still took the request"
    );
}

#[test]
fn the_handler_cannot_write_into_the_dispatchers_workdir_or_lock_dir() {
    if !root_or_skip("the_handler_cannot_write_into_the_dispatchers_workdir_or_lock_dir") {
        return;
    }
    let intruder = r#"#!/bin/sh
echo "CWD-OWNER=$(stat -c %u .)"
touch ./mine && echo "CWD-WRITABLE=yes"
for dir in "$WORKDIR" "$LOCKDIR"; do
  touch "$dir/handler-was-here" && echo "WROTE $dir/handler-was-here"
  mkdir "$dir/handler-dir" && echo "WROTE $dir/handler-dir"
done
echo "DONE"
"#;
    let world = World::new()
        .handler("intruder.sh", intruder)
        .index(&index_with(&[entry(
            "intruder",
            "intruder.sh",
            // Not isolated: there, the dispatcher's state is hidden altogether (`isolation.rs`);
            // here the user alone must keep the handler out.
            &[
                "env: [WORKDIR, LOCKDIR]",
                "timeout: 30s",
                "grace: 1s",
                "isolation: none",
            ],
        )]))
        .build();
    // The lock dir is the host's (made by root for the harness): root's, not writable by others.
    let locks = fs::metadata(&world.locks).expect("stat the lock dir");
    assert!(
        locks.uid() == 0 && locks.mode() & 0o022 == 0,
        "fixture: the lock dir should be root's with mode 0755, is uid {} mode {:o}",
        locks.uid(),
        locks.mode() & 0o7777
    );
    world.submit("intrude.yml", "kind: intruder\n");

    let mut run = world.run_command(world.remote_arg(), &["--until-empty"]);
    run.env("WORKDIR", &world.work).env("LOCKDIR", &world.locks);
    world.output(run).assert_exit(0);

    let log = world
        .fresh_clone()
        .read_string(&log_file("intrude", 1))
        .expect("the log is committed");
    assert_eq!(
        line_value(&log, "CWD-OWNER"),
        id(&["-u", "nobody"]),
        "the working directory is not the handler's own:\n{log}"
    );
    assert_eq!(
        line_value(&log, "CWD-WRITABLE"),
        "yes",
        "control: the handler cannot write anywhere:\n{log}"
    );
    assert!(log.contains("DONE"), "the handler did not finish:\n{log}");
    assert!(!log.contains("WROTE"), "the handler wrote:\n{log}");
    assert_eq!(
        log.matches("Permission denied").count(),
        4,
        "every attempt should fail with `Permission denied`:\n{log}"
    );
    for dir in [&world.work, &world.locks] {
        for name in ["handler-was-here", "handler-dir"] {
            let path = dir.join(name);
            assert!(!path.exists(), "`{}` was created", path.display());
        }
    }
}
