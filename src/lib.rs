//! git-dispatch: a Git-backed file-inbox dispatcher.
//!
//! The path of a request through the folders below, in the order it meets them:
//! 1. [`git`]: fetch the inbox repository into a bare clone and reconcile unpushed outcomes.
//! 2. [`inbox`]: list `requests/` in arrival order, check one request's bytes against the envelope
//!    and its kind's schema, and route its kind to a handler through `handlers/index.yml`.
//! 3. [`claim`]: the resource's claim on the remote, so that several dispatchers never start a
//!    request twice or run one resource on two hosts (made, renewed and released by [`daemon`]).
//! 4. [`run`]: on a worker, a `--jobs` slot, the resource's lock, the journal entry, the handler in
//!    the sandbox with its output captured, retries with backoff.
//! 5. [`outcome`]: what became of the request, written down as one commit (status, log, the request
//!    moved to `processed/`), made by [`git`] and pushed in batches.
//! 6. [`daemon`]: the loop that strings these together, with recovery after a crash and the events
//!    (signals, a local remote's changes, systemd, metrics).
//!
//! On the submitter's side, in a clone: [`submitter`] writes, commits and pushes a request and reads
//! the queue and the outcomes. [`commands`] holds one file per subcommand; [`cli`] and [`config`]
//! turn the command line into a checked configuration. Below everything: [`layout`] (where an
//! outcome is written in the repository), [`secrets`] (the host's secrets and the redactor),
//! [`log`], [`clock`] and [`failpoint`].
//!
//! A failure that belongs to one request becomes its outcome and the loop goes on; only a failure of
//! the dispatcher itself stops it.

mod claim;
mod cli;
mod clock;
mod commands;
mod config;
mod daemon;
pub mod error;
mod failpoint;
mod git;
mod inbox;
mod layout;
pub mod log;
mod outcome;
mod replay;
mod report;
mod run;
mod secrets;
mod submitter;

use std::ffi::OsString;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::error::{CommandError, exit_code};

/// Runs the command line `args` and returns the process exit code.
pub fn main(args: impl IntoIterator<Item = OsString>) -> i32 {
    let args: Vec<OsString> = args.into_iter().collect();
    if log::json_requested(&args) {
        log::set_format(log::LogFormat::Json);
    }
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() && log::json_requested(&args) => {
            log::fatal(e.render().to_string().trim_end(), 2);
            return 2;
        }
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let result = run(&cli);
    if let Err(e) = &result {
        log::fatal(&e.to_string(), exit_code(&result));
    }
    exit_code(&result)
}

fn run(cli: &Cli) -> Result<(), CommandError> {
    match &cli.command {
        Command::Run(args) => commands::run::run(args),
        Command::Validate(args) => commands::validate::run(args),
        Command::Submit(args) => commands::submit::run(args),
        Command::Pause(args) => commands::control::pause(args),
        Command::Resume(args) => commands::control::resume(args),
        Command::Drain(args) => commands::control::drain(args),
        Command::Undrain(args) => commands::control::undrain(args),
        Command::Cancel(args) => commands::cancel::run(args),
        Command::Approve(args) => commands::approve::approve(args),
        Command::Deny(args) => commands::approve::deny(args),
        Command::Rerun(args) => commands::rerun::run(args),
        Command::Status(args) => commands::status::run(args),
        Command::Show(args) => commands::show::run(args),
        Command::Init(args) => commands::init::run(args),
        Command::Demo(args) => commands::demo::run(args),
        Command::Replay(args) => commands::replay::run(args),
        Command::Doctor(args) => commands::doctor::run(args),
        Command::Selftest => commands::selftest::run(),
        Command::Completions { shell } => commands::completions::completions(*shell),
        Command::Man(args) => commands::man::run(args),
    }
}
