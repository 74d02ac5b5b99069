//! The submitter's everyday commands, run in a clone: `submit` (write, check, commit alone, push,
//! rebase when the remote moved), `status` (queue, recent outcomes, counts), `show ID` (one outcome
//! and its log), `init DIR` (a new inbox the dispatcher can serve) and `demo`.
//!
//! This file holds what the modules below share: running a command as a submitter would, and its
//! `--json` output.

use std::path::Path;

use serde_json::Value;

use crate::support::{RunOutput, World};

// `submit`: write, check, commit alone, push, rebase.
mod submit;
// `rerun ID`: the same request again as `ID.rerun-N`.
mod rerun;
// `status`: the queue, recent outcomes, counts.
mod status;
// `status` and the dispatchers: heartbeats, claims, what runs where, why a request waits.
mod dispatchers;
// `show ID`: one outcome and its log.
mod show;
// `init DIR`: a new inbox the dispatcher can serve.
mod init;
// `demo`: the whole path, shown step by step.
mod demo;

/// `git-dispatch ARGS` run in `dir`, with a Git identity (the commands use the user's `git`) and no
/// user or system Git configuration.
pub(crate) fn everyday(world: &World, dir: &Path, args: &[&str]) -> RunOutput {
    let mut cmd = world.dispatcher();
    cmd.current_dir(dir)
        .args(args)
        .env("LC_ALL", "C")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", "Sam Submitter")
        .env("GIT_AUTHOR_EMAIL", "sam@example.test")
        .env("GIT_COMMITTER_NAME", "Sam Submitter")
        .env("GIT_COMMITTER_EMAIL", "sam@example.test");
    world.output(cmd)
}

/// `git-dispatch ARGS` in the submitter's clone.
fn in_submitter(world: &World, args: &[&str]) -> RunOutput {
    everyday(world, &world.submitter.dir, args)
}

fn json(out: &RunOutput) -> Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{out}"))
}
