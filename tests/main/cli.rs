//! The command line's promises: `--version`, exit code 2 for usage/configuration errors, 3 for a remote
//! that cannot be reached, and `run` options read from `GIT_DISPATCH_*` environment variables.

use std::time::Duration;

use crate::support::{World, free_port};

#[test]
fn version_flag_prints_the_package_version() {
    let world = World::new().build();
    let mut cmd = world.dispatcher();
    cmd.arg("--version");

    let out = world.output(cmd);
    out.assert_exit(0);
    assert!(
        out.stdout.contains(env!("CARGO_PKG_VERSION")),
        "no version in stdout:\n{out}"
    );
}

#[test]
fn run_without_a_remote_is_a_usage_error() {
    let world = World::new().build();
    let mut cmd = world.dispatcher();
    cmd.args(["run", "--until-empty", "--workdir"])
        .arg(&world.work);

    world.output(cmd).assert_exit(2);
}

#[test]
fn once_and_until_empty_together_are_a_usage_error() {
    let world = World::new().build();
    world.submit("untouched.yml", "kind: echo\n");

    world.run(&["--once"]).assert_exit(2);

    assert_eq!(
        world.fresh_clone().ls("requests"),
        [".gitkeep", "untouched.yml"],
        "a usage error must not take requests"
    );
}

#[test]
fn unparsable_poll_interval_is_a_usage_error() {
    let world = World::new().build();

    world.run(&["--poll-interval", "soonish"]).assert_exit(2);
}

#[test]
fn unreachable_remote_exits_3() {
    let world = World::new().build();
    // Nothing listens on a port that was just freed.
    let url = format!("git://127.0.0.1:{}/remote.git", free_port());
    let mut cmd = world.run_command(&url, &["--until-empty"]);
    // Fewer retries keep the test fast where the option exists; an unknown variable is ignored.
    cmd.env("GIT_DISPATCH_PUSH_ATTEMPTS", "2");

    let out = world.spawn(cmd).wait(Duration::from_secs(90));
    out.assert_exit(3);
    assert!(!out.stderr.trim().is_empty(), "no error message:\n{out}");
}

#[test]
fn run_options_are_read_from_git_dispatch_environment_variables() {
    let world = World::new().build();
    world.submit("from-env.yml", "kind: echo\n");
    let mut cmd = world.dispatcher();
    cmd.args(["run", "--until-empty"])
        .env("GIT_DISPATCH_REMOTE", &world.remote)
        .env("GIT_DISPATCH_WORKDIR", &world.work)
        .env("GIT_DISPATCH_LOCK_DIR", &world.locks)
        .env("GIT_DISPATCH_BRANCH", "main");

    world.output(cmd).assert_exit(0);

    assert_eq!(world.fresh_clone().status("from-env")["state"], "succeeded");
}
