//! `git-dispatch run`: configure and start the [`Daemon`].

use crate::cli::RunArgs;
use crate::config::RunConfig;
use crate::daemon::{Daemon, DaemonError, say};
use crate::error::CommandError;

pub(crate) fn run(args: &RunArgs) -> Result<(), CommandError> {
    let config = RunConfig::from_args(args).map_err(CommandError::config)?;
    let summary = Daemon::open(config)
        .and_then(Daemon::serve)
        .map_err(|e| match e {
            DaemonError::Remote(_) => CommandError::remote(e),
            DaemonError::Sync(ref s) if s.is_transient() => CommandError::remote(e),
            _ => CommandError::config(e),
        })?;
    let counts: Vec<String> = summary
        .by_state
        .iter()
        .map(|(state, n)| format!("{n} {state}"))
        .collect();
    say(&format!(
        "done: {} outcome(s) recorded and pushed{}",
        summary.recorded,
        if counts.is_empty() {
            String::new()
        } else {
            format!(" ({})", counts.join(", "))
        }
    ));
    Ok(())
}
