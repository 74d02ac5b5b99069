//! `git-dispatch run`: configure and start the [`Daemon`].

use crate::cli::RunArgs;
use crate::config::RunConfig;
use crate::daemon::{Daemon, DaemonError, Shutdown};
use crate::error::CommandError;
use crate::log::say;

pub(crate) fn run(args: &RunArgs) -> Result<(), CommandError> {
    crate::log::set_format(args.log_format);
    let config = RunConfig::from_args(args).map_err(CommandError::config)?;
    if config.dry_run {
        let lines = Daemon::open(config)
            .and_then(Daemon::dry_run)
            .map_err(classify)?;
        if lines.is_empty() {
            println!("the inbox is empty");
        }
        for line in lines {
            println!("{line}");
        }
        return Ok(());
    }
    let summary = Daemon::open(config)
        .and_then(|daemon| daemon.serve(Shutdown::on_signals()))
        .map_err(classify)?;
    say(&summary.to_string());
    Ok(())
}

/// The exit code of a dispatcher failure: 3 for the remote, 2 for everything else.
fn classify(e: DaemonError) -> CommandError {
    match e {
        DaemonError::Remote(_) => CommandError::remote(e),
        DaemonError::Sync(ref s) if s.is_transient() => CommandError::remote(e),
        _ => CommandError::config(e),
    }
}
