//! A throw-away inbox for `demo` and `selftest`: a bare remote seeded with the example inbox, a
//! submitter's clone that commits requests with plain `git`, and a dispatcher configuration that
//! drains it. Git runs without the user's configuration, so the result is the same on every machine.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::commands::scaffold;
use crate::config::RunConfig;
use crate::daemon::{Daemon, DaemonError, Shutdown, Summary};

pub(crate) struct Playground {
    dir: tempfile::TempDir,
    pub remote: PathBuf,
    pub submit: PathBuf,
}

impl Playground {
    /// A bare remote at `<tmp>/remote.git` holding the example inbox, and a clone at `<tmp>/submit`.
    pub(crate) fn new(prefix: &str) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .context("could not create a temporary directory")?;
        let root = dir.path();
        let remote = root.join("remote.git");
        let submit = root.join("submit");
        git(root, &["init", "-q", "--bare", "-b", "main", text(&remote)])?;
        git(root, &["clone", "-q", text(&remote), text(&submit)])?;
        git(&submit, &["checkout", "-q", "-b", "main"])?;
        scaffold::write(&submit).context("could not write the example inbox")?;
        git(&submit, &["add", "-A"])?;
        git(
            &submit,
            &["commit", "-q", "-m", "an inbox: handlers, schemas, folders"],
        )?;
        git(&submit, &["push", "-q", "origin", "main"])?;
        Ok(Self {
            dir,
            remote,
            submit,
        })
    }

    pub(crate) fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Commits each request on its own, as a user would, then pushes them together.
    pub(crate) fn submit(&self, requests: &[(&str, &str)]) -> anyhow::Result<()> {
        for (name, body) in requests {
            std::fs::write(self.submit.join("requests").join(name), body)
                .with_context(|| format!("could not write requests/{name}"))?;
            git(&self.submit, &["add", &format!("requests/{name}")])?;
            git(
                &self.submit,
                &["commit", "-q", "-m", &format!("request {name}")],
            )?;
        }
        git(&self.submit, &["push", "-q", "origin", "main"])
    }

    /// Runs the dispatcher in process until the inbox is empty and everything is pushed.
    pub(crate) fn drain(&self) -> Result<Summary, DaemonError> {
        let config =
            RunConfig::until_empty_local(&self.remote, &self.root().join("work"), "playground")
                .map_err(|e| DaemonError::Remote(format!("{e:#}")))?;
        Daemon::open(config).and_then(|daemon| daemon.serve(Shutdown::on_signals()))
    }

    /// A fresh clone of the remote: what a reviewer sees.
    pub(crate) fn fresh_clone(&self) -> anyhow::Result<PathBuf> {
        let check = self.root().join("check");
        git(
            self.root(),
            &["clone", "-q", text(&self.remote), text(&check)],
        )?;
        Ok(check)
    }

    /// Keeps the directory instead of removing it; returns its path.
    pub(crate) fn keep(self) -> PathBuf {
        self.dir.keep()
    }
}

fn text(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

/// Runs `git` as a user would, but without their configuration.
pub(crate) fn git(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    git_output(dir, args).map(|_| ())
}

pub(crate) fn git_output(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "Demo Submitter")
        .env("GIT_AUTHOR_EMAIL", "submitter@example.org")
        .env("GIT_COMMITTER_NAME", "Demo Submitter")
        .env("GIT_COMMITTER_EMAIL", "submitter@example.org")
        .output()
        .context("could not run `git`; is it installed?")?;
    if !output.status.success() {
        bail!(
            "`git {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
