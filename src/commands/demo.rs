//! `git-dispatch demo`.

use crate::cli::DemoArgs;
use crate::error::CommandError;

pub(crate) fn run(_args: &DemoArgs) -> Result<(), CommandError> {
    Err(CommandError::config(anyhow::anyhow!("demo: not yet")))
}
