//! git-dispatch: a Git-backed file-inbox dispatcher.
//!
//! The life of a request, and the module that handles each step:
//! 1. [`sync`]: fetch the inbox repository into a bare clone and reconcile unpushed outcomes.
//! 2. [`inbox`]: list `requests/` in arrival order (first in, first out; ties by name).
//! 3. [`request`]: bytes -> a checked request (YAML without duplicate keys, the envelope schema).
//! 4. [`router`]: `kind` -> its handler and limits, from `handlers/index.yml` at the fetched commit
//!    ([`snapshot`] compiles it and writes the handlers out).
//! 5. [`lock`]: an exclusive flock on the request's resource.
//! 6. [`sandbox`]: run the handler confined, time- and memory-boxed; [`capture`] caps its log.
//! 7. [`outcome`]: one commit that moves the request to `processed/` with its status and log.
//! 8. [`sync`] again: push in batches, with backoff; [`daemon`] is the loop that strings it together.
//!
//! On the submitter's side, in a clone: [`draft`] builds a request and [`checkout`] commits and pushes
//! it (`submit`); [`history`] reads the queue and the recorded outcomes (`status`, `show`).
//!
//! A failure that belongs to one request becomes its outcome and the loop goes on; only a failure of
//! the dispatcher itself stops it.

mod capture;
mod checkout;
mod cli;
mod commands;
mod config;
mod daemon;
mod draft;
pub mod error;
mod failpoint;
mod history;
mod inbox;
mod journal;
mod layout;
mod lock;
pub mod log;
mod metrics;
mod outcome;
mod pack;
mod priority;
mod replay;
mod request;
mod router;
mod runner;
mod sandbox;
mod scaffold;
mod schema;
mod scratch;
mod secrets;
mod snapshot;
mod spare;
mod spawn;
mod sync;
mod tree_edit;
mod view;

use std::ffi::OsString;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::error::{CommandError, exit_code};

/// Runs the command line `args` and returns the process exit code.
pub fn main(args: impl IntoIterator<Item = OsString>) -> i32 {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let result = run(&cli);
    if let Err(e) = &result {
        eprintln!("git-dispatch: error: {e}");
    }
    exit_code(&result)
}

fn run(cli: &Cli) -> Result<(), CommandError> {
    match &cli.command {
        Command::Run(args) => commands::run::run(args),
        Command::Validate(args) => commands::validate::run(args),
        Command::Submit(args) => commands::submit::run(args),
        Command::Status(args) => commands::status::run(args),
        Command::Show(args) => commands::show::run(args),
        Command::Init(args) => commands::init::run(args),
        Command::Demo(args) => commands::demo::run(args),
        Command::Replay(args) => commands::replay::run(args),
        Command::Doctor(args) => commands::doctor::run(args),
        Command::Selftest => commands::selftest::run(),
        Command::Completions { shell } => commands::completions::completions(*shell),
        Command::Man => commands::completions::man(),
    }
}
