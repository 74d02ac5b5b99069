//! [`Checkout`]: a submitter's clone of an inbox repository, as `submit`, `status` and `show` use it.
//!
//! What changes the clone or talks to the remote (add, commit, fetch, push, pull --rebase) goes through
//! the `git` command line, so the user's identity, configuration, hooks and credential helpers apply
//! exactly as they would by hand. What only reads (the branch, its upstream, trees at a commit) goes
//! through git2 and never touches the working tree or the index.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use git2::{Oid, Repository, RepositoryState};
use thiserror::Error;

/// How much of git's standard error an error message keeps.
const STDERR_TAIL: usize = 2000;

#[derive(Debug, Error)]
pub(crate) enum CheckoutError {
    #[error(
        "`{}` is not inside a Git repository; run this in a clone of the inbox, or pass --repo DIR",
        path.display()
    )]
    NotARepository {
        path: PathBuf,
        #[source]
        source: git2::Error,
    },
    #[error(
        "`{}` is a bare repository; run this in a clone with a working tree, or pass --repo DIR",
        path.display()
    )]
    Bare { path: PathBuf },
    #[error("HEAD is not on a branch; check out the inbox's branch first (e.g. `git switch main`)")]
    Detached,
    #[error(
        "branch `{branch}` has no upstream to push to; set one with `git branch --set-upstream-to=origin/{branch}`, or pass --no-push"
    )]
    NoUpstream { branch: String },
    #[error("could not run `git`: {source}; is it installed and on PATH?")]
    Spawn {
        #[source]
        source: io::Error,
    },
    #[error("`git {argv}` failed ({status}): {stderr}")]
    Failed {
        argv: String,
        status: String,
        stderr: String,
    },
    #[error("`git {argv}` was rejected by the remote: {stderr}")]
    PushRejected { argv: String, stderr: String },
    #[error(
        "`git pull --rebase` stopped on a conflict (and was aborted, the clone is as it was): {stderr}"
    )]
    RebaseConflict { stderr: String },
    #[error("git: {0}")]
    Git(#[from] git2::Error),
}

/// The branch a clone pushes to and fetches from.
#[derive(Debug, Clone)]
pub(crate) struct Upstream {
    /// The remote's name, e.g. `origin`.
    pub remote: String,
    /// The branch on the remote, e.g. `refs/heads/main`.
    pub merge: String,
    /// Its remote-tracking ref here, e.g. `refs/remotes/origin/main`.
    pub tracking: String,
}

impl Upstream {
    /// `origin/main`, as git shows it.
    pub(crate) fn short(&self) -> String {
        self.tracking
            .strip_prefix("refs/remotes/")
            .unwrap_or(&self.tracking)
            .to_owned()
    }
}

/// A commit to read from and the name it was found under.
#[derive(Debug, Clone)]
pub(crate) struct Tip {
    pub oid: Oid,
    /// `origin/main`, or `HEAD` when the branch has no upstream (yet).
    pub name: String,
}

pub(crate) struct Checkout {
    /// The top of the working tree.
    pub root: PathBuf,
    pub repo: Repository,
}

impl Checkout {
    /// The clone around `dir`, or around the current directory.
    pub(crate) fn open(dir: Option<&Path>) -> Result<Self, CheckoutError> {
        let start = match dir {
            Some(dir) => dir.to_owned(),
            None => std::env::current_dir().map_err(|source| CheckoutError::Spawn { source })?,
        };
        let repo =
            Repository::discover(&start).map_err(|source| CheckoutError::NotARepository {
                path: start.clone(),
                source,
            })?;
        let root = repo
            .workdir()
            .map(Path::to_path_buf)
            .ok_or(CheckoutError::Bare { path: start })?;
        Ok(Self { root, repo })
    }

    /// The full name of the branch HEAD is on, e.g. `refs/heads/main` (it may have no commit yet).
    pub(crate) fn branch(&self) -> Result<String, CheckoutError> {
        let head = self.repo.find_reference("HEAD")?;
        head.symbolic_target()
            .ok()
            .flatten()
            .filter(|target| target.starts_with("refs/heads/"))
            .map(str::to_owned)
            .ok_or(CheckoutError::Detached)
    }

    /// The upstream of the current branch (`branch.<name>.remote` and `.merge`).
    pub(crate) fn upstream(&self) -> Result<Upstream, CheckoutError> {
        let branch = self.branch()?;
        let no_upstream = || CheckoutError::NoUpstream {
            branch: branch.trim_start_matches("refs/heads/").to_owned(),
        };
        let text = |buf: git2::Buf| buf.as_str().ok().map(str::to_owned);
        let remote = self
            .repo
            .branch_upstream_remote(&branch)
            .ok()
            .and_then(text)
            .ok_or_else(no_upstream)?;
        let merge = self
            .repo
            .branch_upstream_merge(&branch)
            .ok()
            .and_then(text)
            .ok_or_else(no_upstream)?;
        let tracking = self
            .repo
            .branch_upstream_name(&branch)
            .ok()
            .and_then(text)
            .ok_or_else(no_upstream)?;
        Ok(Upstream {
            remote,
            merge,
            tracking,
        })
    }

    /// The upstream's tip as last fetched; without an upstream (or before the first fetch), HEAD.
    pub(crate) fn tip(&self) -> Result<Tip, CheckoutError> {
        if let Ok(upstream) = self.upstream()
            && let Ok(oid) = self.repo.refname_to_id(&upstream.tracking)
        {
            return Ok(Tip {
                oid,
                name: upstream.short(),
            });
        }
        let oid = self.repo.refname_to_id("HEAD")?;
        Ok(Tip {
            oid,
            name: "HEAD".to_owned(),
        })
    }

    /// Runs `git args` in the working tree; returns its standard output.
    pub(crate) fn git(&self, args: &[&str]) -> Result<String, CheckoutError> {
        run_git(&self.root, args)
    }

    /// `git fetch` of the upstream's remote.
    pub(crate) fn fetch(&self, upstream: &Upstream) -> Result<(), CheckoutError> {
        self.git(&["fetch", "--quiet", &upstream.remote]).map(drop)
    }

    /// Fetches every ref under `refs/dispatch/` of the upstream's remote (the dispatchers'
    /// heartbeats and claims) into [`dispatch_namespace`], dropping those the remote deleted.
    pub(crate) fn fetch_dispatch_refs(&self, upstream: &Upstream) -> Result<(), CheckoutError> {
        let refspec = format!("+refs/dispatch/*:{}*", dispatch_namespace(&upstream.remote));
        self.git(&[
            "fetch",
            "--quiet",
            "--prune",
            "--no-tags",
            &upstream.remote,
            &refspec,
        ])
        .map(drop)
    }

    /// Commits `rel` alone (whatever else is staged stays staged) with `message`; returns the commit.
    /// On failure `rel` is unstaged again, so the index is as it was.
    pub(crate) fn commit_file(&self, rel: &str, message: &str) -> Result<Oid, CheckoutError> {
        self.git(&["add", "--", rel])?;
        if let Err(e) = self.git(&["commit", "--quiet", "-m", message, "--", rel]) {
            // Best effort: there is nothing to reset to on a branch with no commit yet.
            let _ = self.git(&["reset", "--quiet", "--", rel]);
            return Err(e);
        }
        Ok(self.repo.refname_to_id("HEAD")?)
    }

    /// How many commits of HEAD the upstream does not have (as last fetched).
    pub(crate) fn unpushed(&self, upstream: &Upstream) -> Result<usize, CheckoutError> {
        let mut walk = self.repo.revwalk()?;
        walk.push_head()?;
        if let Ok(remote) = self.repo.refname_to_id(&upstream.tracking) {
            walk.hide(remote)?;
        }
        Ok(walk.count())
    }

    /// Pushes HEAD to the upstream branch. A ref the remote refuses (it moved, a hook declined) is
    /// [`CheckoutError::PushRejected`]; anything else (unreachable, no permission) is `Failed`.
    pub(crate) fn push(&self, upstream: &Upstream) -> Result<(), CheckoutError> {
        let refspec = format!("HEAD:{}", upstream.merge);
        match self.git(&["push", "--quiet", &upstream.remote, &refspec]) {
            Err(CheckoutError::Failed { argv, stderr, .. })
                // Git prints these markers untranslated, whatever the user's locale.
                if stderr.contains("[rejected]") || stderr.contains("[remote rejected]") =>
            {
                Err(CheckoutError::PushRejected { argv, stderr })
            }
            other => other.map(drop),
        }
    }

    /// `git pull --rebase --autostash`: puts HEAD's unpushed commits on the upstream's new tip. A
    /// conflict is aborted, leaving the clone as it was.
    pub(crate) fn pull_rebase(&self) -> Result<(), CheckoutError> {
        match self.git(&["pull", "--quiet", "--rebase", "--autostash"]) {
            Ok(_) => Ok(()),
            Err(CheckoutError::Failed { stderr, .. })
                if self.repo.state() != RepositoryState::Clean =>
            {
                let _ = self.git(&["rebase", "--abort"]);
                Err(CheckoutError::RebaseConflict { stderr })
            }
            Err(e) => Err(e),
        }
    }
}

/// Where a clone keeps the `refs/dispatch/*` of `remote` as last fetched: `refs/git-dispatch/<remote>/`,
/// outside `refs/heads/`, `refs/remotes/` and `refs/tags/`, so that no branch or tag can collide with
/// them.
pub(crate) fn dispatch_namespace(remote: &str) -> String {
    format!("refs/git-dispatch/{remote}/")
}

/// Runs `git args` in `dir` with the user's environment; the error carries the argv, the exit status
/// and the tail of standard error.
pub(crate) fn run_git(dir: &Path, args: &[&str]) -> Result<String, CheckoutError> {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|source| CheckoutError::Spawn { source })?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stderr = stderr.trim();
    let start = stderr
        .char_indices()
        .rev()
        .nth(STDERR_TAIL)
        .map_or(0, |(i, _)| i);
    Err(CheckoutError::Failed {
        argv: args.join(" "),
        status: output.status.to_string(),
        stderr: stderr[start..].to_owned(),
    })
}
