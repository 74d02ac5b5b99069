//! `git-dispatch completions SHELL` and `git-dispatch man`: generated from the command line's own
//! definition, so they never drift from it.

use std::io;

use clap::CommandFactory;

use crate::cli::Cli;
use crate::error::CommandError;

pub(crate) fn completions(shell: clap_complete::Shell) -> Result<(), CommandError> {
    clap_complete::generate(
        shell,
        &mut Cli::command(),
        "git-dispatch",
        &mut io::stdout(),
    );
    Ok(())
}

pub(crate) fn man() -> Result<(), CommandError> {
    clap_mangen::Man::new(Cli::command())
        .render(&mut io::stdout())
        .map_err(|e| CommandError::config(anyhow::anyhow!("could not write the man page: {e}")))
}
