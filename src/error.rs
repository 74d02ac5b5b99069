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
        f.write_str(&describe(self.error.chain()))
    }
}

/// The text a user reads for an error and its causes, the one place errors become messages: each
/// cause once (a message that already shows its source is not followed by it again), and without
/// libgit2's `; class=... (N); code=... (N)` suffixes.
pub(crate) fn describe<'a>(
    chain: impl IntoIterator<Item = &'a (dyn std::error::Error + 'static)>,
) -> String {
    let mut text = String::new();
    for cause in chain {
        let cause = user_text(&cause.to_string());
        if text.contains(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

/// `message` without libgit2's `; class=Net (12)` and `; code=NotFound (-3)` suffixes, which name
/// its internal error tables and tell a user nothing.
pub(crate) fn user_text(message: &str) -> String {
    let mut text = message.to_owned();
    for marker in ["; class=", "; code="] {
        while let Some(start) = text.find(marker) {
            let rest = &text[start + marker.len()..];
            let word = rest
                .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                .unwrap_or(rest.len());
            let Some(number) = rest[word..].strip_prefix(" (") else {
                break;
            };
            let Some(close) = number.find(')') else {
                break;
            };
            if !number[..close]
                .chars()
                .all(|c| c.is_ascii_digit() || c == '-')
            {
                break;
            }
            let end = start + marker.len() + word + 2 + close + 1;
            text.replace_range(start..end, "");
        }
    }
    text
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libgit2_suffixes_are_stripped() {
        let e = git2::Error::new(
            git2::ErrorCode::NotFound,
            git2::ErrorClass::Repository,
            "path is not a repository: /x",
        );
        assert!(e.to_string().contains("class="), "{e}");
        assert_eq!(user_text(&e.to_string()), "path is not a repository: /x");
        assert_eq!(
            user_text("git: a; class=Net (12); code=GenericError (-1): then more"),
            "git: a: then more"
        );
        assert_eq!(user_text("no suffix; class=odd"), "no suffix; class=odd");
    }

    #[test]
    fn a_cause_already_told_is_not_repeated() {
        let io = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let told = io.to_string();
        let e = anyhow::Error::new(io).context(format!("could not serve metrics: {told}"));
        let text = CommandError::config(e).to_string();
        assert_eq!(text.matches(&told).count(), 1, "{text}");
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(CommandError::config(e).to_string(), "outer: inner");
    }
}
