//! The happy path and the shape of an outcome: a request committed to `requests/` comes back, after
//! `run --until-empty`, as one commit that moves it to `processed/` with its status file and log; handler
//! failures and timeouts are outcomes too; the inbox is drained first in, first out.

use std::path::Path;
use std::time::Duration;

use crate::support::{
    DEFAULT_INDEX, GitDaemon, World, add_kinds, instant_key, log_file, processed, sha256_hex,
    utc_rfc3339, wait_until,
};

const HELLO: &str = "kind: echo\nparams:\n  name: world\n";

#[test]
fn succeeded_request_is_recorded_with_its_bytes_status_and_log() {
    let world = World::new().build();
    let daemon = GitDaemon::serve(&world);
    let submitted_in = world.submit("hello.yml", HELLO);

    world.run_via(&daemon.url(), &[]).assert_exit(0);

    let clone = world.fresh_clone();
    assert_eq!(clone.ls("requests"), [".gitkeep"], "the inbox is drained");
    assert_eq!(
        clone.read(&processed("hello", "yml")).as_deref(),
        Some(HELLO.as_bytes()),
        "the request is kept byte for byte"
    );
    let status = clone.status("hello");
    assert_eq!(status["id"], "hello", "the id defaults to the file stem");
    assert_eq!(status["kind"], "echo");
    assert_eq!(status["state"], "succeeded");
    assert_eq!(status["exit_code"], 0);
    assert!(status["signal"].is_null(), "signal: {}", status["signal"]);
    assert_eq!(status["attempts"], 1);
    assert_eq!(status["handler"], "handlers/echo.sh");
    assert_eq!(status["submitted_in"], submitted_in.as_str());
    let request_blob = clone.git(&["rev-parse", &format!("{submitted_in}:requests/hello.yml")]);
    assert_eq!(status["request_blob"], request_blob.as_str());
    assert_eq!(
        clone.git(&["hash-object", &processed("hello", "yml")]),
        request_blob,
        "what was recorded is the blob that was read"
    );
    let handler_blob = clone.git(&["rev-parse", "HEAD:handlers/echo.sh"]);
    assert_eq!(status["handler_blob"], handler_blob.as_str());
    assert!(
        status["dispatcher"].as_str().is_some_and(|d| !d.is_empty()),
        "dispatcher: {}",
        status["dispatcher"]
    );

    let submitted_secs: i64 = clone
        .git(&["show", "-s", "--format=%ct", &submitted_in])
        .parse()
        .expect("commit time is a number");
    let submitted_at = status["submitted_at"]
        .as_str()
        .expect("submitted_at is a string");
    assert_eq!(
        submitted_at.get(..19),
        utc_rfc3339(submitted_secs).get(..19),
        "submitted_at is the time of the commit that added the request: {submitted_at}"
    );
    let started_at = status["started_at"]
        .as_str()
        .expect("started_at is a string");
    let finished_at = status["finished_at"]
        .as_str()
        .expect("finished_at is a string");
    assert!(
        instant_key(started_at) <= instant_key(finished_at),
        "started {started_at} after finished {finished_at}"
    );
    assert!(
        status["duration_ms"].is_u64(),
        "duration_ms: {}",
        status["duration_ms"]
    );

    assert_eq!(status["log"], log_file("hello", 1));
    let log = clone
        .read(&log_file("hello", 1))
        .expect("the log is committed");
    assert_eq!(
        String::from_utf8_lossy(&log),
        "echo handler ran for hello\n",
        "the log is the handler's output, exactly once"
    );
    assert_eq!(status["log_bytes"], log.len());
    assert_eq!(status["log_truncated"], false);
    assert_eq!(status["log_sha256"], sha256_hex(&log).as_str());
}

#[test]
fn outcome_is_one_commit_with_subject_and_dispatch_trailers() {
    let world = World::new().build();
    let submitted_in = world.submit("hello.yml", HELLO);

    world.run(&[]).assert_exit(0);

    let clone = world.fresh_clone();
    assert_eq!(
        clone.git(&["rev-parse", "HEAD^"]),
        submitted_in,
        "exactly one commit records the outcome"
    );
    let subjects = clone.log_subjects();
    let subject = subjects.last().expect("history is not empty");
    assert!(
        subject.starts_with("dispatch: hello succeeded (echo"),
        "subject: {subject}"
    );
    let trailer = |key: &str| {
        clone.git(&[
            "log",
            "-1",
            &format!("--format=%(trailers:key={key},valueonly)"),
        ])
    };
    assert_eq!(trailer("Dispatch-Id"), "hello");
    assert_eq!(trailer("Dispatch-Kind"), "echo");
    assert_eq!(trailer("Dispatch-State"), "succeeded");
    let mut changes: Vec<String> = clone
        .git(&["show", "--no-renames", "--name-status", "--format=", "HEAD"])
        .lines()
        .map(str::to_owned)
        .collect();
    changes.sort();
    assert_eq!(
        changes,
        [
            format!("A\t{}", log_file("hello", 1)),
            format!("A\t{}", processed("hello", "status.json")),
            format!("A\t{}", processed("hello", "yml")),
            "D\trequests/hello.yml".to_owned(),
        ]
    );
}

#[test]
fn log_interleaves_stdout_and_stderr_in_the_order_written() {
    let world = World::new()
        .handler(
            "echo.sh",
            "#!/bin/sh\necho out-1\necho err-2 >&2\necho out-3\necho err-4 >&2\necho out-5\n",
        )
        .build();
    world.submit("mixed.yml", "kind: echo\n");

    world.run(&[]).assert_exit(0);

    let log = world
        .fresh_clone()
        .read_string(&log_file("mixed", 1))
        .expect("the log is committed");
    let positions: Vec<usize> = ["out-1", "err-2", "out-3", "err-4", "out-5"]
        .iter()
        .map(|line| {
            log.find(line)
                .unwrap_or_else(|| panic!("`{line}` missing from log:\n{log}"))
        })
        .collect();
    assert!(positions.is_sorted(), "lines out of order in log:\n{log}");
}

#[test]
fn nonzero_exit_is_recorded_as_failed_and_run_still_exits_zero() {
    let world = World::new()
        .handler("fail.sh", "#!/bin/sh\necho about to fail\nexit 3\n")
        .index(&format!(
            "{DEFAULT_INDEX}fail:\n  handler: fail.sh\n  retries: 0\n  timeout: 30s\n  grace: 1s\n"
        ))
        .build();
    world.submit("doomed.yml", "kind: fail\n");

    world.run(&[]).assert_exit(0);

    let clone = world.fresh_clone();
    assert_eq!(clone.ls("requests"), [".gitkeep"]);
    let status = clone.status("doomed");
    assert_eq!(status["state"], "failed");
    assert_eq!(status["exit_code"], 3);
    assert_eq!(status["attempts"], 1);
    assert!(
        clone
            .read_string(&log_file("doomed", 1))
            .is_some_and(|log| log.contains("about to fail")),
        "the failed run's log is committed"
    );
    assert_eq!(clone.trailers("Dispatch-State"), ["failed"]);
}

#[test]
fn handler_running_past_its_timeout_is_killed_and_recorded_as_timed_out() {
    let world = World::new()
        .handler("slow.sh", "#!/bin/sh\necho started\nsleep 30\necho never\n")
        .index(&format!(
            "{DEFAULT_INDEX}slow:\n  handler: slow.sh\n  timeout: 1s\n  grace: 1s\n  retries: 0\n"
        ))
        .build();
    world.submit("nap.yml", "kind: slow\n");

    let run = world.run(&[]);
    run.assert_exit(0);
    assert!(
        run.elapsed < Duration::from_secs(20),
        "the handler was not cut short: {run}"
    );

    let clone = world.fresh_clone();
    let status = clone.status("nap");
    assert_eq!(status["state"], "timed_out");
    let log = clone
        .read_string(&log_file("nap", 1))
        .expect("the log is committed");
    assert!(
        log.contains("started") && !log.contains("never"),
        "log:\n{log}"
    );
}

#[test]
fn handler_ignoring_sigterm_is_killed_after_the_grace_period() {
    let world = World::new()
        .handler(
            "stubborn.sh",
            "#!/bin/sh\ntrap '' TERM\necho ignoring TERM\nsleep 30\necho never\n",
        )
        .index(&format!(
            "{DEFAULT_INDEX}stubborn:\n  handler: stubborn.sh\n  timeout: 1s\n  grace: 1s\n  retries: 0\n"
        ))
        .build();
    world.submit("mule.yml", "kind: stubborn\n");

    let run = world.run(&[]);
    run.assert_exit(0);
    assert!(
        run.elapsed < Duration::from_secs(20),
        "SIGKILL did not follow the grace period: {run}"
    );

    let status = world.fresh_clone().status("mule");
    assert_eq!(status["state"], "timed_out");
}

#[test]
fn inbox_is_drained_in_arrival_order_then_by_name_not_by_file_name() {
    let world = World::new().build();
    // Arrival (commit time) order: c, a, b, then y and z in one commit (a tie broken by name).
    world.submit("c.yml", "kind: echo\n");
    world.submit("a.yml", "kind: echo\n");
    world.submit("b.yml", "kind: echo\n");
    world.submit_many(&[("z.yml", b"kind: echo\n"), ("y.yml", b"kind: echo\n")]);

    world.run(&[]).assert_exit(0);

    let clone = world.fresh_clone();
    let expected = ["c", "a", "b", "y", "z"];
    assert_eq!(
        clone.trailers("Dispatch-Id"),
        expected,
        "outcome commits in history order"
    );
    let started: Vec<String> = expected
        .iter()
        .map(|id| {
            clone.status(id)["started_at"]
                .as_str()
                .expect("started_at")
                .to_owned()
        })
        .collect();
    assert!(
        started.iter().map(|s| instant_key(s)).is_sorted(),
        "started_at not in arrival order: {expected:?} -> {started:?}"
    );
}

#[test]
fn dotfiles_in_the_inbox_are_left_alone() {
    let world = World::new().build();
    world.submit(".notes", "not a request\n");
    world.submit("real.yml", "kind: echo\n");

    world.run(&[]).assert_exit(0);

    let clone = world.fresh_clone();
    assert_eq!(clone.ls("requests"), [".gitkeep", ".notes"]);
    assert_eq!(
        clone.read("requests/.notes").as_deref(),
        Some(&b"not a request\n"[..])
    );
    let keys: Vec<String> = clone.statuses().into_iter().map(|(key, _)| key).collect();
    assert_eq!(keys, ["real"], "only the request was recorded");
}

#[test]
fn drained_inbox_runs_again_to_exit_zero_without_pushing() {
    let world = World::new().build();
    world.submit("only.yml", "kind: echo\n");
    world.run(&[]).assert_exit(0);
    let drained = world.fresh_clone();
    assert_eq!(drained.status("only")["state"], "succeeded");
    let tip = drained.git(&["rev-parse", "HEAD"]);

    world.run(&[]).assert_exit(0);

    assert_eq!(
        world.fresh_clone().git(&["rev-parse", "HEAD"]),
        tip,
        "a run over an empty inbox pushed something"
    );
}

/// Git stores a folder as one object listing every entry, and an outcome commit rewrites the folders
/// it adds to: with outcomes in shard folders (one hex digit each), no folder grows with the number
/// of outcomes. 60 outcomes flat would make folders of 120 and 60 entries.
#[test]
fn outcomes_go_to_shard_folders_that_stay_small() {
    let world = World::new().build();
    submit_echoes(&world, (1..=60).map(|i| format!("r{i:02}.yml")));
    world.run(&[]).assert_exit(0);

    let clone = world.fresh_clone();
    assert_eq!(clone.statuses().len(), 60, "one status per request");
    let listing = clone.git(&["ls-tree", "-r", "-t", "HEAD", "processed", "logs"]);
    let mut folders = vec!["processed", "logs"];
    folders.extend(listing.lines().filter_map(|line| {
        let (meta, path) = line.split_once('\t')?;
        meta.contains(" tree ").then_some(path)
    }));
    assert!(folders.len() > 2, "no shard folders:\n{listing}");
    for folder in folders {
        let entries = clone.git(&["ls-tree", "--name-only", &format!("HEAD:{folder}")]);
        let entries: Vec<&str> = entries.lines().filter(|e| *e != ".gitkeep").collect();
        assert!(
            entries.len() <= 16,
            "`{folder}` holds {} entries: {entries:?}",
            entries.len()
        );
        if folder.matches('/').count() < 3 {
            assert!(
                entries
                    .iter()
                    .all(|e| e.len() == 1 && e.chars().all(|c| c.is_ascii_hexdigit())),
                "`{folder}` holds more than one-hex-digit shard folders: {entries:?}"
            );
        }
    }
}

/// Over a local path the dispatcher writes each push's pack into the remote itself, so it also does
/// what receive-pack would do next: `git gc --auto` there, which merges packs past
/// `gc.autoPackLimit`. Four runs push four packs at least; the remote keeps at most the merged one
/// and the last, and it and the workdir pass `git fsck`.
#[test]
fn pushes_to_a_local_path_remote_are_merged_by_gc_auto_and_pass_fsck() {
    let world = World::new().build();
    let remote = world.remote_arg().to_owned();
    let git_dir = |dir: &str, args: &[&str]| {
        let mut full = vec!["--git-dir", dir];
        full.extend_from_slice(args);
        world.submitter.git(&full)
    };
    git_dir(&remote, &["config", "gc.autoPackLimit", "2"]);
    let packs = || pack_count(&world.remote);
    for round in 1..=4 {
        submit_echoes(&world, (1..=5).map(|i| format!("g{round}-{i}.yml")));
        world.run(&[]).assert_exit(0);
        assert!(
            packs() <= 2,
            "round {round}: {} packs in the remote",
            packs()
        );
    }

    assert_eq!(world.fresh_clone().statuses().len(), 20);
    git_dir(&remote, &["fsck", "--strict", "--no-progress"]);
    let workdir = world.work.join("repo.git");
    git_dir(
        workdir.to_str().expect("UTF-8 path"),
        &["fsck", "--no-progress", "--connectivity-only"],
    );
}

/// How many packs the repository at `git_dir` holds.
fn pack_count(git_dir: &Path) -> usize {
    std::fs::read_dir(git_dir.join("objects/pack"))
        .expect("the pack folder")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "pack"))
        })
        .count()
}

/// Submits one `echo` request per name in one commit.
fn submit_echoes(world: &World, names: impl Iterator<Item = String>) {
    let names: Vec<String> = names.collect();
    let files: Vec<(&str, &[u8])> = names
        .iter()
        .map(|name| (name.as_str(), b"kind: echo\n".as_slice()))
        .collect();
    world.submit_many(&files);
}

#[test]
fn workdir_holds_outcomes_in_merged_packs_and_no_loose_objects() {
    // Each run fetches (a pack) and writes its outcomes out (a pack): sixteen runs leave 32 packs
    // unless the dispatcher merges them, which it does past 24.
    let world = World::new().build();
    let runs = 16;
    for n in 1..=runs {
        submit_echoes(&world, (1..=3).map(|i| format!("r{n:02}-{i}.yml")));
        world.run(&[]).assert_exit(0);
    }

    let drained = world.fresh_clone();
    assert_eq!(drained.statuses().len(), runs * 3);
    let workdir = world.work.join("repo.git");
    let git = |args: &[&str]| {
        let mut full = vec!["--git-dir", workdir.to_str().expect("UTF-8 path")];
        full.extend_from_slice(args);
        world.submitter.git(&full)
    };
    let counts = git(&["count-objects", "-v"]);
    let count = |key: &str| -> usize {
        counts
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{key}: ")))
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no `{key}` in:\n{counts}"))
    };
    assert_eq!(count("count"), 0, "loose objects in the workdir:\n{counts}");
    assert!(
        count("packs") <= 25,
        "the workdir's packs were not merged:\n{counts}"
    );
    // Every object the branch needs is there, and the branch is what the remote holds.
    git(&[
        "fsck",
        "--full",
        "--no-dangling",
        "--no-progress",
        "refs/heads/main",
    ]);
    assert_eq!(
        git(&["rev-parse", "refs/heads/main"]).trim(),
        drained.git(&["rev-parse", "HEAD"]).trim()
    );
}

/// A world with the requests `big-1` .. `big-<count>`, whose handler prints 600 KB: each outcome
/// is written out in a pack of its own (every 512 KiB of logs and trees), whatever the pushes.
fn big_world(count: usize) -> World {
    let world = World::new().build();
    let big = "#!/bin/sh\nhead -c 600000 /dev/zero | tr '\\0' x\n";
    add_kinds(&world, &[("big", big, "")]);
    let names: Vec<String> = (1..=count).map(|i| format!("big-{i}.yml")).collect();
    let files: Vec<(&str, &[u8])> = names
        .iter()
        .map(|name| (name.as_str(), b"kind: big\n".as_slice()))
        .collect();
    world.submit_many(&files);
    world
}

/// `git fsck --strict` in the repository at `git_dir` (the world's helper fails on an error).
fn fsck(world: &World, git_dir: &Path) {
    let git_dir = git_dir.to_str().expect("UTF-8 path");
    world.submitter.git(&[
        "--git-dir",
        git_dir,
        "fsck",
        "--strict",
        "--no-progress",
        "--no-dangling",
    ]);
}

#[test]
fn outcomes_written_out_between_pushes_reach_a_local_path_remote_whole() {
    // A push then merges a chain of packs into one: four 600 KB logs make four of them.
    let world = big_world(4);
    world.run(&[]).assert_exit(0);

    let clone = world.fresh_clone();
    for i in 1..=4 {
        let key = format!("big-{i}");
        assert_eq!(clone.status(&key)["state"], "succeeded");
        let log = clone
            .read_string(&log_file(&key, 1))
            .expect("the log is committed");
        assert_eq!(log.len(), 600_000, "`{key}`'s log");
    }
    fsck(&world, &world.remote);
    fsck(&world, &world.work.join("repo.git"));
}

#[test]
fn a_pack_gone_from_the_workdir_before_its_push_is_pushed_by_its_objects() {
    // The fail point makes every pack of outcomes missing when a push to the local remote copies
    // it from the workdir, as after a `git repack` that merged it meanwhile: the push copies the
    // objects the new commits add instead.
    let world = big_world(4);
    let mut cmd = world.run_command(world.remote_arg(), &["--until-empty", "--jobs", "1"]);
    cmd.env("GIT_DISPATCH_FAILPOINT", "copy-pack");
    world.output(cmd).assert_exit(0);
    fsck(&world, &world.remote);
    let clone = world.fresh_clone();
    for i in 1..=4 {
        assert_eq!(clone.status(&format!("big-{i}"))["state"], "succeeded");
    }
}

/// Pack files the process `pid` keeps open although they were removed.
fn removed_packs_open(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .map(|target| target.to_string_lossy().into_owned())
                .filter(|target| target.contains("pack-") && target.ends_with("(deleted)"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn outcomes_written_out_in_many_packs_reach_the_remote_as_one_per_push_and_no_removed_pack_stays_open()
 {
    let world = big_world(6);
    let before = pack_count(&world.remote);
    let remote = world.remote_arg().to_owned();
    let pushed = |i: usize| {
        let path = format!("main:{}", processed(&format!("big-{i}"), "status.json"));
        world
            .submitter
            .git_succeeds(&["--git-dir", &remote, "cat-file", "-e", &path])
    };

    let mut dispatcher = world.spawn(world.run_command(
        world.remote_arg(),
        &["--jobs", "1", "--poll-interval", "200ms"],
    ));
    let all_pushed = wait_until(Duration::from_secs(40), || {
        (1..=6).all(pushed) || !dispatcher.running()
    });
    assert!(
        all_pushed && dispatcher.running(),
        "the outcomes were not pushed: {}",
        dispatcher.output_so_far()
    );
    let mut open = Vec::new();
    let released = wait_until(Duration::from_secs(10), || {
        open = removed_packs_open(dispatcher.pid());
        open.is_empty()
    });
    assert!(
        released,
        "the dispatcher keeps removed packs open: {open:?}\n{}",
        dispatcher.output_so_far()
    );
    dispatcher.terminate();
    let out = dispatcher.wait(Duration::from_secs(40));
    out.assert_exit(0);

    let log = out.all_output();
    let pushes: Vec<usize> = log
        .lines()
        .filter_map(|l| l.split("pushed ").nth(1)?.split(' ').next()?.parse().ok())
        .collect();
    assert_eq!(pushes.iter().sum::<usize>(), 6, "{log}");
    assert!(
        pushes.iter().any(|&n| n >= 2),
        "no push carried several outcomes, so nothing was merged: {log}"
    );
    assert_eq!(
        pack_count(&world.remote),
        before + pushes.len(),
        "the remote did not gain one pack per push: {log}"
    );
    fsck(&world, &world.remote);
    fsck(&world, &world.work.join("repo.git"));
    let clone = world.fresh_clone();
    for i in 1..=6 {
        assert_eq!(clone.status(&format!("big-{i}"))["state"], "succeeded");
    }
}
