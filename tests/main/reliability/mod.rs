//! Reliability: whatever happens to the dispatcher or the remote, no request is lost and none is recorded
//! twice. The dispatcher is crashed at each fail point (`GIT_DISPATCH_FAILPOINT`, debug builds) and
//! restarted on the same workdir; attempts are retried with their own logs; a push refused by a hook or
//! a remote that goes away leaves the outcome committed locally until it can be pushed; hostile files in
//! the inbox are each recorded once as `rejected`; a second dispatcher cannot share a workdir.
//!
//! Every test asserts on a fresh clone of the remote; the crash tests also compare the dispatcher's own
//! branch (`WORK/repo.git`) with the remote's, which is how an unpushed outcome would show. Where a real
//! server matters the remote is served by `PortDaemon` (`port_daemon.rs`) rather than the harness's
//! `GitDaemon`: it can come back on the same port, and killing it really closes the port.
//!
//! This file holds what the modules below share: the counting handler, the deadline, and the
//! exactly-once assertions.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::support::{Checkout, World, git_command};

// The dispatcher crashed at each fail point and restarted on the same workdir.
mod crash_recovery;
// Failed attempts retried with their own logs; rejections never run.
mod retries;
// A workdir is one dispatcher's: a held lock is waited for, a second dispatcher refused.
mod workdir_lock;
// The stale-run watchdog records a run whose worker never reports.
mod watchdog;
// `git daemon` on a port it can come back on, for outages.
mod port_daemon;
// A push refused by a hook, a remote that goes away and comes back.
mod remote_outages;
// Hostile files in the inbox: each rejected once, nothing escapes.
mod hostile_inbox;
// A push on a thread of its own, collected when it reports.
mod push_thread;
// Outcomes pushed at once when nothing runs here.
mod push_pace;

/// How long a dispatcher process of these tests may run before it is killed and the test fails.
const DEADLINE: Duration = Duration::from_secs(40);

/// The start of the note the dispatcher appends to the log of an attempt a crash interrupted.
const CRASH_NOTE: &str = "[git-dispatch: the dispatcher stopped while attempt 1 ran";

/// `handlers/<name>`: appends `$DISPATCH_ATTEMPT` to `markers/runs-<id>` (so a test can count runs),
/// prints one line, then runs `tail` (shell, may be empty).
fn counting_handler(world: &World, tail: &str) -> String {
    format!(
        "#!/bin/sh\necho \"$DISPATCH_ATTEMPT\" >> '{}/runs-'\"$DISPATCH_ID\"\n\
         echo \"attempt $DISPATCH_ATTEMPT of $DISPATCH_ID\"\n{tail}",
        world.markers.display()
    )
}

/// How many times the counting handler ran for `id` (the attempt numbers it saw).
fn runs(world: &World, id: &str) -> Vec<String> {
    fs::read_to_string(world.markers.join(format!("runs-{id}")))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// `git --git-dir DIR args...` in the world's hermetic environment; trimmed stdout.
fn git_dir(world: &World, dir: &Path, args: &[&str]) -> String {
    let mut cmd = git_command(&world.home, &world.root);
    cmd.arg("--git-dir").arg(dir).args(args);
    let out = cmd.output().expect("spawn git");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
}

/// The `Dispatch-Id` trailers of `refs/heads/main` in the bare repository `dir`, newest first.
fn outcome_ids(world: &World, dir: &Path) -> Vec<String> {
    git_dir(
        world,
        dir,
        &[
            "log",
            "--format=%(trailers:key=Dispatch-Id,valueonly,separator=)",
            "refs/heads/main",
        ],
    )
    .lines()
    .map(str::trim)
    .filter(|id| !id.is_empty())
    .map(str::to_owned)
    .collect()
}

/// The dispatcher's local branch is the remote's: every outcome it recorded is pushed, and it keeps no
/// commit of its own.
fn assert_local_branch_is_the_remote(world: &World) {
    let local = git_dir(
        world,
        &world.work.join("repo.git"),
        &["rev-parse", "refs/heads/main"],
    );
    let remote = git_dir(world, &world.remote, &["rev-parse", "refs/heads/main"]);
    assert_eq!(
        local, remote,
        "the dispatcher's branch is not the remote's (unpushed or stray commits)"
    );
}

/// Every `processed/*.status.json` of `clone`, grouped by its `request` field (`requests/<file>`).
fn statuses_by_request(clone: &Checkout) -> BTreeMap<String, Vec<(String, Value)>> {
    let mut by_request: BTreeMap<String, Vec<(String, Value)>> = BTreeMap::new();
    for (key, status) in clone.statuses() {
        let request = status["request"]
            .as_str()
            .unwrap_or_else(|| panic!("status `{key}` has no `request`: {status:#}"))
            .to_owned();
        by_request.entry(request).or_default().push((key, status));
    }
    by_request
}

/// The exactly-once invariants on a fresh clone: the inbox is empty; each of `files` (names in
/// `requests/`) has exactly one status and there are no others; each status has exactly one outcome
/// commit and no commit records a key twice. Returns each file's (key, status).
fn assert_each_recorded_once(
    clone: &Checkout,
    files: &[&str],
) -> BTreeMap<String, (String, Value)> {
    assert_eq!(clone.ls("requests"), [".gitkeep"], "the inbox is not empty");
    let by_request = statuses_by_request(clone);
    let expected: BTreeSet<String> = files.iter().map(|f| format!("requests/{f}")).collect();
    let recorded: BTreeSet<String> = by_request.keys().cloned().collect();
    assert_eq!(recorded, expected, "requests recorded vs submitted");
    let mut once = BTreeMap::new();
    for (request, mut statuses) in by_request {
        assert_eq!(
            statuses.len(),
            1,
            "`{request}` has {} statuses: {statuses:#?}",
            statuses.len()
        );
        let file = request.trim_start_matches("requests/").to_owned();
        once.insert(file, statuses.pop().expect("length checked"));
    }

    let ids = clone.trailers("Dispatch-Id");
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(
        unique.len(),
        ids.len(),
        "an id has two outcome commits: {ids:?}"
    );
    let keys: BTreeSet<&String> = once.values().map(|(key, _)| key).collect();
    assert_eq!(unique, keys, "outcome commits vs status files");
    once
}
