//! Operations: what the person who runs the dispatcher on a host relies on. `doctor` checks a host
//! before it is enabled and changes nothing; `run --dry-run` says what would happen and does nothing;
//! `--log-format json` gives one JSON object per line; `--metrics-addr` serves `/metrics` and a
//! `/healthz` that turns 503 when the remote goes away; SIGTERM finishes the running handler, records
//! and pushes, and takes nothing new, while a second SIGINT exits at once (130) and takes the handler
//! with it; `selftest`, the shell completions and the man page; `--git-transport cli` against a real
//! `git daemon`; `--once` takes exactly one request.
//!
//! Every test asserts on what a fresh clone of the remote (or the bare remote itself) shows, and on the
//! dispatcher's real output. Left-over handler processes are found by a `sleep` argument unique to the
//! test and to this test process.
//!
//! This file holds what the modules below share: the deadline and what "changed nothing" compares.

use std::time::Duration;

use crate::support::{World, git_command};

// `doctor` checks a host and changes nothing.
mod doctor;
// `--dry-run` does nothing; `--once` takes one request.
mod run_modes;
// `--log-format json`: one object per line, fatal errors included.
mod json_logs;
// `/metrics` and `/healthz`.
mod metrics;
// `/api/status` and the operator's page.
mod page;
// `POST /hooks/push`: verified push webhooks wake a polling dispatcher.
mod webhooks;
// SIGTERM finishes and records the running handler; a second SIGINT exits at once.
mod shutdown;
// `--git-transport cli` through a real `git daemon`.
mod git_transport;
// What a package ships: `selftest`, completions, the man page, the systemd unit.
mod packaging;

/// How long a dispatcher process of these tests may run before the test gives up on it.
const DEADLINE: Duration = Duration::from_secs(40);

/// `git --git-dir <the bare remote> args...`: trimmed stdout, `None` if git fails.
fn remote_git(world: &World, args: &[&str]) -> Option<String> {
    let mut cmd = git_command(&world.home, &world.root);
    cmd.arg("--git-dir").arg(&world.remote).args(args);
    let out = cmd.output().expect("spawn git");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
}

/// The commit `main` points at in the bare remote.
fn remote_tip(world: &World) -> String {
    remote_git(world, &["rev-parse", "refs/heads/main"]).expect("the remote has `main`")
}

/// The waiting requests and the processed files a fresh clone shows: what "changed nothing" compares.
fn inbox_and_processed(world: &World) -> (Vec<String>, Vec<String>) {
    let clone = world.fresh_clone();
    (clone.ls("requests"), clone.files("processed"))
}
