//! cgroup v2. The hosts here mount the unified hierarchy beside the v1 ones that hold the
//! controllers, so a dispatcher picks v1 by itself; `GIT_DISPATCH_CGROUP=v2` makes it drive the
//! unified one, where each run still gets a folder of its own and its CPU time is read from it.
//! What the host offers there decides the rest: with `memory` (a v2-only host) a run over
//! `memory:` is an out-of-memory kill; without it (here) `memory:` stays an address-space rlimit.

use std::fs;
use std::path::PathBuf;

use super::{HOG, entry, index_with};
use crate::support::{World, log_file, root_or_skip};

/// Where the unified hierarchy is mounted.
fn unified() -> PathBuf {
    let mounts = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    mounts
        .lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let point = left.split_whitespace().nth(4)?;
            right.starts_with("cgroup2 ").then(|| PathBuf::from(point))
        })
        .expect("the hosts here mount cgroup2 (the unified hierarchy)")
}

#[test]
fn with_cgroup_v2_each_run_gets_a_folder_there_its_cpu_time_is_recorded_and_none_is_left() {
    if !root_or_skip(
        "with_cgroup_v2_each_run_gets_a_folder_there_its_cpu_time_is_recorded_and_none_is_left",
    ) {
        return;
    }
    let mount = unified();
    let world = World::new()
        .handler(
            "where.sh",
            "#!/bin/sh\ngrep '^0::' /proc/self/cgroup\n\
             i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done\n",
        )
        .handler("hog.sh", HOG)
        .index(&index_with(&[
            entry("where", "where.sh", &["timeout: 60s"]),
            entry("hog", "hog.sh", &["memory: 100MiB", "timeout: 60s"]),
        ]))
        .build();
    world.submit("where.yml", "kind: where\n");
    world.submit("hog.yml", "kind: hog\n");
    let mut cmd = world.run_command(world.remote_arg(), &["--until-empty"]);
    cmd.env("GIT_DISPATCH_CGROUP", "v2");
    let out = world.output(cmd);
    out.assert_exit(0);
    let said = out.all_output();
    let line = said
        .lines()
        .find(|l| l.contains("cgroups: "))
        .unwrap_or_else(|| panic!("the start does not say which cgroups: {said}"));
    assert!(line.contains("cgroups: cgroup v2 ("), "{line}");

    let clone = world.fresh_clone();
    let log = clone.read_string(&log_file("where", 1)).expect("a log");
    let own = log
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_else(|| panic!("no cgroup line: {log}"));
    let (folder, run) = own.rsplit_once('/').expect("a nested cgroup");
    assert!(run.starts_with("run-"), "{own}");
    assert!(
        folder
            .rsplit('/')
            .next()
            .is_some_and(|f| f.starts_with("git-dispatch-")),
        "not in the dispatcher's folder: {own}"
    );
    let status = clone.status("where");
    assert_eq!(status["state"], "succeeded", "{status:#}");
    assert!(status["cpu_ms"].is_u64(), "no CPU time read: {status:#}");

    let hog = clone.status("hog");
    assert_eq!(hog["state"], "failed", "{hog:#}");
    if line.contains("memory, ") || line.contains("(memory") {
        assert_eq!(hog["error"], "out of memory (limit 100MiB)", "{hog:#}");
    } else {
        assert!(
            line.contains("`memory:` stays an address-space rlimit"),
            "{line}"
        );
    }
    // The dispatcher's folder went with it.
    let left = mount.join(folder.trim_start_matches('/'));
    assert!(!left.exists(), "`{}` was left behind", left.display());
}
