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

/// Runs `script` in a real `bash` (no rc files) after sourcing the generated bash completions; the
/// completions offered, one per line.
fn bash_completions(world: &World, script: &str) -> Vec<String> {
    let mut cmd = world.dispatcher();
    cmd.args(["completions", "bash"]);
    let out = world.output(cmd);
    out.assert_exit(0);
    let file = world.root.join("git-dispatch.bash");
    std::fs::write(&file, &out.stdout).expect("write the completion script");
    let run = std::process::Command::new("bash")
        .args(["--norc", "--noprofile", "-c"])
        .arg(format!(
            "source '{}' || exit 9\n{script}\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"",
            file.display()
        ))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &world.home)
        .output()
        .expect("run bash");
    assert!(
        run.status.success(),
        "bash failed: {}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    String::from_utf8_lossy(&run.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn bash_completes_a_subcommands_options_for_git_dispatch() {
    let world = World::new().build();
    let offered = bash_completions(
        &world,
        "COMP_WORDS=(git-dispatch run --rem); COMP_CWORD=2\n\
         f=$(complete -p git-dispatch | sed -n 's/.*-F \\([^ ]*\\) .*/\\1/p')\n\
         \"$f\" git-dispatch --rem run",
    );
    assert!(
        offered.iter().any(|w| w == "--remote"),
        "`git-dispatch run --rem<TAB>` does not offer --remote: {offered:?}"
    );
    let offered = bash_completions(
        &world,
        "COMP_WORDS=(git-dispatch ru); COMP_CWORD=1\n\
         f=$(complete -p git-dispatch | sed -n 's/.*-F \\([^ ]*\\) .*/\\1/p')\n\
         \"$f\" git-dispatch ru git-dispatch",
    );
    assert!(
        offered.iter().any(|w| w == "run"),
        "`git-dispatch ru<TAB>` does not offer run: {offered:?}"
    );
}

#[test]
fn bash_completes_git_dispatch_through_gits_own_completion() {
    let world = World::new().build();
    // Git's completion (shipped with git) calls `_git_dispatch` for `git dispatch ...`.
    let git_completion = "/usr/share/bash-completion/completions/git";
    assert!(
        std::path::Path::new(git_completion).is_file(),
        "git's bash completion is not at {git_completion}"
    );
    let offered = bash_completions(
        &world,
        &format!(
            "source '{git_completion}'\n\
             COMP_WORDS=(git dispatch run --rem); COMP_CWORD=3\n\
             COMP_LINE='git dispatch run --rem'; COMP_POINT=${{#COMP_LINE}}\n\
             __git_wrap__git_main git --rem run"
        ),
    );
    assert!(
        offered.iter().any(|w| w == "--remote"),
        "`git dispatch run --rem<TAB>` does not offer --remote: {offered:?}"
    );
    let offered = bash_completions(
        &world,
        &format!(
            "source '{git_completion}'\n\
             COMP_WORDS=(git dispatch re); COMP_CWORD=2\n\
             COMP_LINE='git dispatch re'; COMP_POINT=${{#COMP_LINE}}\n\
             __git_wrap__git_main git re dispatch"
        ),
    );
    assert!(
        offered.iter().any(|w| w == "replay"),
        "`git dispatch re<TAB>` does not offer replay: {offered:?}"
    );
}

#[test]
fn man_pages_one_per_subcommand_with_exit_status_and_environment() {
    let world = World::new().build();
    let dir = world.root.join("man1");
    std::fs::create_dir(&dir).unwrap();
    let mut cmd = world.dispatcher();
    cmd.args(["man", "--dir"]).arg(&dir);
    world.output(cmd).assert_exit(0);

    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for sub in [
        "",
        "-run",
        "-validate",
        "-submit",
        "-status",
        "-show",
        "-init",
        "-demo",
        "-replay",
        "-doctor",
        "-selftest",
        "-completions",
        "-man",
    ] {
        let name = format!("git-dispatch{sub}.1");
        assert!(names.contains(&name), "no {name} in {names:?}");
        let page = std::fs::read_to_string(dir.join(&name)).unwrap();
        assert!(
            page.starts_with(".TH") || page.starts_with(".ie"),
            "{name} is not roff"
        );
        for section in [".SH \"EXIT STATUS\"", ".SH ENVIRONMENT"] {
            assert!(page.contains(section), "{name} lacks {section}:\n{page}");
        }
    }
    let run = std::fs::read_to_string(dir.join("git-dispatch-run.1")).unwrap();
    let environment = &run[run.find(".SH ENVIRONMENT").unwrap()..];
    assert!(
        environment.contains("GIT_DISPATCH_REMOTE") && environment.contains("XDG_STATE_HOME"),
        "the environment of `run` is not listed:\n{environment}"
    );
    let exit = &run[run.find(".SH \"EXIT STATUS\"").unwrap()..];
    assert!(exit.contains('3') && exit.contains('2'), "{exit}");

    // `git-dispatch man run` prints the same page.
    let mut cmd = world.dispatcher();
    cmd.args(["man", "run"]);
    let out = world.output(cmd);
    out.assert_exit(0);
    assert_eq!(out.stdout, run);

    // A page that does not exist is a usage error.
    let mut cmd = world.dispatcher();
    cmd.args(["man", "nope"]);
    world.output(cmd).assert_exit(2);
}

#[test]
fn the_last_attempt_announces_no_next_one() {
    let world = World::new().build();
    let url = format!("git://127.0.0.1:{}/remote.git", free_port());
    let cmd = world.run_command(&url, &["--until-empty", "--push-attempts", "2"]);

    let out = world.spawn(cmd).wait(Duration::from_secs(90));
    out.assert_exit(3);
    let attempts: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("(attempt "))
        .collect();
    assert_eq!(attempts.len(), 2, "{out}");
    assert!(attempts[0].contains("next in"), "{out}");
    assert!(
        !attempts[1].contains("next in"),
        "the last attempt announces a next one:\n{out}"
    );
    assert!(
        !out.stderr.contains("class=") && !out.stderr.contains("code="),
        "libgit2's class/code suffix reaches the user:\n{out}"
    );
}

#[test]
fn an_error_is_told_once_without_libgit2_suffixes() {
    let world = World::new().build();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let addr = taken.local_addr().expect("bound").to_string();

    let out = world.run(&["--metrics-addr", &addr]);
    out.assert_exit(2);
    assert_eq!(
        out.stderr.matches("Address already in use").count(),
        1,
        "the error text is repeated:\n{out}"
    );

    // A workdir whose clone is not a repository: libgit2's own error, told once, without its
    // `class=... code=...` suffix.
    let work = world.root.join("broken-work");
    std::fs::create_dir_all(work.join("repo.git")).unwrap();
    std::fs::write(work.join("repo.git/HEAD"), "garbage").unwrap();
    let mut cmd = world.dispatcher();
    cmd.args([
        "run",
        "--until-empty",
        "--remote",
        world.remote_arg(),
        "--workdir",
    ])
    .arg(&work);
    let out = world.output(cmd);
    out.assert_exit(2);
    assert!(
        !out.stderr.contains("class=") && !out.stderr.contains("code="),
        "libgit2's class/code suffix reaches the user:\n{out}"
    );
    assert_eq!(
        out.stderr.matches("not a repository").count(),
        1,
        "the error text is repeated:\n{out}"
    );
}
