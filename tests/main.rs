//! The one integration-test binary: drives the real `git-dispatch` executable against real Git remotes
//! (a bare repository, and `git daemon` where a real server matters) and asserts on what a fresh clone of
//! the remote shows. `support` is the harness; every other module pins down one feature of the contract,
//! listed below in the order a request meets it: the command line and the submitter's commands, the
//! checks a request must pass, routing, running it, its record, the remote it travels through, and the
//! operator's and the fixture author's tools.

mod support;

// The command line: `--version`, exit codes, options from `GIT_DISPATCH_*`.
#[path = "main/cli.rs"]
mod cli;
// The submitter's commands in a clone: `submit`, `status`, `show`, `init`, `demo`.
#[path = "main/everyday/mod.rs"]
mod everyday;
// `validate FILE...` before pushing: exit 0, or 1 naming each invalid file and field.
#[path = "main/validate_cmd.rs"]
mod validate_cmd;
// The operator's switches: pause and resume, drain and undrain, cancel, and what blocks the queue.
#[path = "main/control/mod.rs"]
mod control;
// Follow-ups (`then`, `on_failure`) and `not_before`; the `notify` kind.
#[path = "main/chains.rs"]
mod chains;
// Schedules: one request per slot, catch-up, overlap, invalid ones reported.
#[path = "main/schedules.rs"]
mod schedules;
// Signed submissions and approvals against the host's trust.
#[path = "main/identity.rs"]
mod identity;
// Whatever is wrong with a request, it is recorded `rejected` and the ones behind it run.
#[path = "main/rejected.rs"]
mod rejected;
// A `kind` is looked up in the index of the fetched commit, with no restart.
#[path = "main/routing.rs"]
mod routing;
// The happy path: a request runs and comes back as one outcome commit, first in, first out.
#[path = "main/pipeline.rs"]
mod pipeline;
// What a handler is given: argv, stdin, environment, working directory, its resource's lock.
#[path = "main/sandbox.rs"]
mod sandbox;
// What a handler cannot do: switch users, pass its limits, outlive its run, see other secrets.
#[path = "main/confinement/mod.rs"]
mod confinement;
// Each outcome's files are its own and written once.
#[path = "main/records.rs"]
mod records;
// Others pushing while a handler runs: the outcome is re-created on the new tip.
#[path = "main/concurrency.rs"]
mod concurrency;
// The remote over real servers (sshd, smart HTTP) and what happens when it cannot be reached.
#[path = "main/transports.rs"]
mod transports;
// Crashes, retries, outages, hostile inboxes: nothing lost, nothing recorded twice.
#[path = "main/reliability/mod.rs"]
mod reliability;
// The operator's tools: `doctor`, dry runs, JSON logs, metrics, signals, packaging.
#[path = "main/operations/mod.rs"]
mod operations;
// `replay`: request fixtures through the real pipeline, compared with the blessed outcome.
#[path = "main/replay.rs"]
mod replay;
// Several dispatchers on one remote: each request started at most once, recorded once, no resource
// on two hosts at once; fencing, capability routing.
#[path = "main/dispatchers/mod.rs"]
mod dispatchers;
