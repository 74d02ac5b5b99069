//! The one integration-test binary: drives the real `git-dispatch` executable against real Git remotes
//! (a bare repository, and `git daemon` where a real server matters) and asserts on what a fresh clone of
//! the remote shows. `support` is the harness; every other module pins down one feature of the contract
//! in the order a request meets it.

mod support;

#[path = "main/cli.rs"]
mod cli;
#[path = "main/concurrency.rs"]
mod concurrency;
#[path = "main/confinement/mod.rs"]
mod confinement;
#[path = "main/everyday/mod.rs"]
mod everyday;
#[path = "main/operations/mod.rs"]
mod operations;
#[path = "main/pipeline.rs"]
mod pipeline;
#[path = "main/records.rs"]
mod records;
#[path = "main/rejected.rs"]
mod rejected;
#[path = "main/reliability/mod.rs"]
mod reliability;
#[path = "main/replay.rs"]
mod replay;
#[path = "main/routing.rs"]
mod routing;
#[path = "main/sandbox.rs"]
mod sandbox;
#[path = "main/transports.rs"]
mod transports;
#[path = "main/validate_cmd.rs"]
mod validate_cmd;
