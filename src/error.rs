//! Exit codes, decided in one place.
//!
//! Library code returns typed errors; the command glue wraps them in [`CommandError`], which carries
//! the exit code the SPEC promises: 0 ok, 1 the command's subject failed, 2 usage or configuration,
//! 3 the remote could not be reached or pushed to after all retries.

use std::fmt;

/// The exit codes of the command line contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// The command did what was asked.
    Ok = 0,
    /// The command's subject failed: an invalid request, a failed fixture.
    Subject = 1,
    /// Usage or configuration error.
    Config = 2,
    /// The remote could not be reached or pushed to after all retries.
    Remote = 3,
}

/// An error that ends a command, with the exit code it maps to.
#[derive(Debug)]
pub struct CommandError {
    pub code: ExitCode,
    pub error: anyhow::Error,
}

impl CommandError {
    pub fn new(code: ExitCode, error: impl Into<anyhow::Error>) -> Self {
        Self {
            code,
            error: error.into(),
        }
    }

    pub fn config(error: impl Into<anyhow::Error>) -> Self {
        Self::new(ExitCode::Config, error)
    }

    pub fn remote(error: impl Into<anyhow::Error>) -> Self {
        Self::new(ExitCode::Remote, error)
    }

    pub fn subject(error: impl Into<anyhow::Error>) -> Self {
        Self::new(ExitCode::Subject, error)
    }
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

/// Failures of the glue that are not classified otherwise are configuration problems: the
/// dispatcher could not even start doing its job.
impl From<anyhow::Error> for CommandError {
    fn from(error: anyhow::Error) -> Self {
        Self::config(error)
    }
}

/// The process exit code for a command's result; the one function that decides it.
pub fn exit_code(result: &Result<(), CommandError>) -> i32 {
    match result {
        Ok(()) => ExitCode::Ok as i32,
        Err(e) => e.code as i32,
    }
}
