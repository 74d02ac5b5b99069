//! `doctor`: on a healthy host it prints `ok` lines and exits 0; it names a missing and a
//! non-executable handler, each with a fix, and exits 1 for an unreachable remote or a secrets file
//! others can read; and it changes nothing: not the remote, not the inbox, and it creates no workdir,
//! lock dir or state folder.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use super::{inbox_and_processed, remote_tip};
use crate::support::{DEFAULT_INDEX, World, free_port};

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

/// `doctor` says which isolation this host gives: as root here, namespaces and v1 cgroups.
#[test]
fn doctor_reports_the_isolation_this_host_gives() {
    if !crate::support::root_or_skip("doctor_reports_the_isolation_this_host_gives") {
        return;
    }
    let world = World::new().build();

    let out = doctor(&world, world.remote_arg(), &[]);

    out.assert_exit(0);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("ok") && l.contains("isolation: namespaces: mount")),
        "no namespaces in the report:\n{out}"
    );
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("ok") && l.contains("isolation: cgroups: cgroup v1")),
        "no cgroups in the report:\n{out}"
    );
}
