//! The harness: a `World` is one temporary directory holding a bare remote (`remote.git`, branch `main`), a
//! submitter's clone (`submit/`) seeded with an inbox layout, and the paths of the dispatcher's workdir and
//! lock dir. Everything is driven through the real `git` CLI and the real `git-dispatch` binary, and every
//! assertion is made on a fresh clone of the remote.
//!
//! Invariants: every child process runs with a cleared environment (no user or system Git config, a
//! private `HOME`, fixed identities and commit dates), every wait has a deadline, and no two tests share
//! a path (each world lives in its own tempdir).
//!
//! This file only declares the parts and re-exports them, so a test reads `use crate::support::{...}`:
//! `world` (the builder and the dispatcher run against it), `checkout` (a clone and its reading helpers),
//! `run` (the binary, `RunOutput`, `Background`), `git` (hermetic `git`, `GitDaemon`), `layout` (shard
//! and log paths), `text` (log sections, timestamps), `host` (root, `id`, stray processes), `wait`
//! (deadlines, free ports), `http` (what `--metrics-addr` serves), `servers` (sshd, smart HTTP), `fleet` (several
//! dispatchers on one remote and what their handlers leave) and `proxy` (a TCP proxy a test can cut).

mod checkout;
pub mod fleet;
mod git;
mod host;
mod http;
mod layout;
pub mod proxy;
mod run;
pub mod servers;
mod text;
mod wait;
mod world;

pub use checkout::Checkout;
pub use git::{ALL_FROZEN_HOOK, BRANCH_FROZEN_HOOK, GitDaemon, git_command};
pub use host::{Strays, id, root_or_skip, running_as_root};
pub use http::{chromium, http_get, http_post, metric};
pub use layout::{log_file, processed, sha256_hex, shard};
pub use run::{Background, RUN_DEADLINE, RunOutput};
pub use text::{between, instant_key, line_value, utc_rfc3339};
pub use wait::{free_port, wait_until};
pub use world::{DEFAULT_INDEX, REQUEST_SCHEMA, World, add_kinds};
