//! Raw command-line arguments -> a validated [`RunConfig`]: durations parsed, paths absolute, limits
//! in bytes. Every problem here is a configuration error (exit 2).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::cli::RunArgs;
use crate::router::{parse_duration, parse_size};

/// When `run` stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Poll forever, until SIGTERM or SIGINT.
    Serve,
    /// Take one request (if any), record and push it.
    Once,
    /// Drain the inbox, record and push everything.
    UntilEmpty,
}

#[derive(Debug, Clone)]
pub(crate) struct RunConfig {
    pub remote: String,
    pub branch: String,
    pub workdir: PathBuf,
    pub lock_dir: PathBuf,
    pub poll_interval: Duration,
    pub mode: Mode,
    pub max_request_size: u64,
    pub push_attempts: u32,
    pub dispatcher_id: String,
    /// How many handlers run at once.
    pub jobs: usize,
    /// Bytes of each handler's output kept in its log.
    pub log_limit: u64,
    /// Outcomes are pushed in batches at most this old while a backlog drains.
    pub push_batch: Duration,
}

impl RunConfig {
    pub(crate) fn from_args(args: &RunArgs) -> anyhow::Result<Self> {
        let remote = normalize_remote(&args.remote)?;
        let workdir = match &args.workdir {
            Some(dir) => absolute(dir)?,
            None => default_workdir(&remote)?,
        };
        let lock_dir = match &args.lock_dir {
            Some(dir) => absolute(dir)?,
            None => workdir.join("locks"),
        };
        let poll_interval = parse_duration(&args.poll_interval)
            .map_err(|e| anyhow::anyhow!("--poll-interval: {e}"))?;
        if poll_interval.is_zero() {
            bail!("--poll-interval must be more than zero");
        }
        let max_request_size = parse_size(&args.max_request_size)
            .map_err(|e| anyhow::anyhow!("--max-request-size: {e}"))?;
        if args.push_attempts == 0 {
            bail!("--push-attempts must be at least 1");
        }
        let dispatcher_id = match &args.dispatcher_id {
            Some(id) => id.clone(),
            None => nix::unistd::gethostname()
                .context("could not read the host name; pass --dispatcher-id")?
                .to_string_lossy()
                .into_owned(),
        };
        let mode = if args.once {
            Mode::Once
        } else if args.until_empty {
            Mode::UntilEmpty
        } else {
            Mode::Serve
        };
        Ok(Self {
            remote,
            branch: args.branch.clone(),
            workdir,
            lock_dir,
            poll_interval,
            mode,
            max_request_size,
            push_attempts: args.push_attempts,
            dispatcher_id,
            jobs: 1,
            log_limit: 1024 * 1024,
            push_batch: Duration::from_secs(1),
        })
    }
}

/// A local path becomes absolute (the dispatcher may change directory); URLs stay as they are.
fn normalize_remote(remote: &str) -> anyhow::Result<String> {
    if remote.is_empty() {
        bail!("--remote must not be empty");
    }
    if local_path(remote).is_some() {
        return Ok(absolute(Path::new(remote))?.to_string_lossy().into_owned());
    }
    Ok(remote.to_owned())
}

/// The remote as a local folder, where it is one (a path or a `file://` URL).
pub(crate) fn local_path(remote: &str) -> Option<PathBuf> {
    if let Some(path) = remote.strip_prefix("file://") {
        return Some(PathBuf::from(path));
    }
    let scp_like = remote
        .split_once(':')
        .is_some_and(|(host, _)| !host.contains('/'));
    (!remote.contains("://") && !scp_like).then(|| PathBuf::from(remote))
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("`{}` is not a usable path", path.display()))
}

fn default_workdir(remote: &str) -> anyhow::Result<PathBuf> {
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .context("neither XDG_STATE_HOME nor HOME is set; pass --workdir")?;
    let name: String = remote
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
        .collect();
    Ok(state.join("git-dispatch").join(name.trim_matches('_')))
}
