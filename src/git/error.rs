//! [`SyncError`]: what can go wrong between the dispatcher's workdir and the remote.
//!
//! Every part of the Git layer that reaches the workdir or the remote returns it; the daemon sorts
//! it with [`SyncError::is_transient`] into what a later try may cure (the remote unreachable, a
//! push rejected because the remote moved) and what it may not (a workdir of another remote, a
//! remote without the branch).

use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub(crate) enum SyncError {
    #[error("workdir `{path}`: {source}")]
    Workdir {
        path: PathBuf,
        #[source]
        source: git2::Error,
    },
    #[error(
        "workdir `{path}` belongs to remote `{found}`, not `{wanted}`; use another --workdir or remove it"
    )]
    OtherRemote {
        path: PathBuf,
        found: String,
        wanted: String,
    },
    #[error("remote `{url}` could not be reached: {message}")]
    Unreachable { url: String, message: String },
    #[error("remote `{url}` has no branch `{branch}`; is it an inbox repository?")]
    NoBranch { url: String, branch: String },
    #[error("remote `{url}` rejected the push of `{refname}`: {reason}")]
    Rejected {
        url: String,
        refname: String,
        reason: String,
    },
    #[error("git: {0}")]
    Git(#[from] git2::Error),
}

impl SyncError {
    /// Whether trying again later may help (as opposed to a configuration problem).
    pub(crate) fn is_transient(&self) -> bool {
        matches!(
            self,
            SyncError::Unreachable { .. } | SyncError::Rejected { .. }
        )
    }
}
