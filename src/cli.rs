//! The command line: clap derive structs only. Every `run` option also reads `GIT_DISPATCH_<OPTION>`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "git-dispatch",
    version,
    about = "A Git-backed file-inbox dispatcher: requests committed to a repository come back as pushed outcomes",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the dispatcher: pull, take the next request, run its handler, record and push the outcome.
    #[command(after_help = "Examples:\n  \
        git-dispatch run --remote git@example.org:ops/inbox.git --until-empty\n  \
        GIT_DISPATCH_REMOTE=/srv/git/inbox.git git-dispatch run --poll-interval 30s")]
    Run(Box<RunArgs>),
    /// Check request files (and the index) against the repository's index and schemas.
    #[command(after_help = "Examples:\n  \
        git-dispatch validate requests/backup-db.yml\n  \
        git-dispatch validate --index")]
    Validate(ValidateArgs),
    /// A self-contained demonstration: a temporary remote, a few requests, the dispatcher, the outcomes.
    Demo(DemoArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// URL or path of the inbox repository.
    #[arg(long, env = "GIT_DISPATCH_REMOTE")]
    pub remote: String,

    /// Branch that holds the inbox.
    #[arg(long, env = "GIT_DISPATCH_BRANCH", default_value = "main")]
    pub branch: String,

    /// The dispatcher's own state: a bare clone and its journal [default: ~/.local/state/git-dispatch/<remote>]
    #[arg(long, env = "GIT_DISPATCH_WORKDIR")]
    pub workdir: Option<PathBuf>,

    /// Where the per-resource lock files live [default: <workdir>/locks]
    #[arg(long, env = "GIT_DISPATCH_LOCK_DIR")]
    pub lock_dir: Option<PathBuf>,

    /// How often to look at the remote when idle.
    #[arg(long, env = "GIT_DISPATCH_POLL_INTERVAL", default_value = "15s")]
    pub poll_interval: String,

    /// Take at most one request, record and push it, then exit.
    #[arg(long, env = "GIT_DISPATCH_ONCE", conflicts_with = "until_empty")]
    pub once: bool,

    /// Drain the inbox, push every outcome, then exit.
    #[arg(long, env = "GIT_DISPATCH_UNTIL_EMPTY")]
    pub until_empty: bool,

    /// Requests larger than this are rejected.
    #[arg(long, env = "GIT_DISPATCH_MAX_REQUEST_SIZE", default_value = "64KiB")]
    pub max_request_size: String,

    /// How many times a push or fetch is tried before `--until-empty`/`--once` gives up (exit 3).
    #[arg(long, env = "GIT_DISPATCH_PUSH_ATTEMPTS", default_value_t = 6)]
    pub push_attempts: u32,

    /// The name this host records in `dispatcher` [default: the host name]
    #[arg(long, env = "GIT_DISPATCH_DISPATCHER_ID")]
    pub dispatcher_id: Option<String>,

    /// The user handlers run as when the dispatcher is started as root [default: nobody]. Running
    /// them as root needs `--run-as root`.
    #[arg(long, env = "GIT_DISPATCH_RUN_AS")]
    pub run_as: Option<String>,

    /// `NAME=value` lines on this host, mode 600, owned by the dispatcher's user; a kind gets the
    /// names it lists under `secrets:`.
    #[arg(long, env = "GIT_DISPATCH_SECRETS_FILE")]
    pub secrets_file: Option<PathBuf>,

    /// Take `index.yml` and the handlers from this directory on the host instead of the repository's
    /// `handlers/`, so pushing to the repository cannot change what code runs.
    #[arg(long, env = "GIT_DISPATCH_HANDLERS_DIR")]
    pub handlers_dir: Option<PathBuf>,

    /// Bytes of each handler's output kept in its log (head and tail); a kind may set `log_limit`.
    #[arg(long, env = "GIT_DISPATCH_LOG_LIMIT", default_value = "1MiB")]
    pub log_limit: String,

    /// Fetch, validate and route, and print what would run; run, commit and push nothing.
    #[arg(long, env = "GIT_DISPATCH_DRY_RUN")]
    pub dry_run: bool,

    /// The dispatcher's own log on standard error: human text, or JSON lines.
    #[arg(
        long,
        env = "GIT_DISPATCH_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: crate::log::LogFormat,

    /// Serve `/metrics` (Prometheus text format) and `/healthz` on this address, e.g. 127.0.0.1:9464.
    #[arg(long, env = "GIT_DISPATCH_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// How to fetch and push: libgit2 in process, or the system `git` (so the user's SSH config,
    /// known hosts and credential helpers apply).
    #[arg(
        long,
        env = "GIT_DISPATCH_GIT_TRANSPORT",
        value_enum,
        default_value = "libgit2"
    )]
    pub git_transport: crate::sync::Transport,

    /// With libgit2: the SSH private key to offer (otherwise the SSH agent).
    #[arg(long, env = "GIT_DISPATCH_SSH_KEY")]
    pub ssh_key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Request files to check.
    #[arg(required_unless_present = "index")]
    pub files: Vec<PathBuf>,

    /// Also check `handlers/index.yml` and the schemas and handlers it names.
    #[arg(long)]
    pub index: bool,

    /// The inbox repository whose index and schemas apply [default: the repository around the current directory]
    #[arg(long)]
    pub repo: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the demonstration's directory instead of removing it.
    #[arg(long)]
    pub keep: bool,
}
