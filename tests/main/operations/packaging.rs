//! What a package ships: `selftest` passes silently, completions for bash, zsh and fish and the man page
//! are generated, and the shipped systemd unit's pre-start passes with a broken kind but fails on a
//! fault of the host.

use std::fs;
use std::time::Duration;

use crate::support::{DEFAULT_INDEX, World};

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
