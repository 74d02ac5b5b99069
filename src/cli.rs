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
    /// In a clone of an inbox: write a request, check it, commit it alone and push it; prints its id.
    #[command(
        after_help = "The request is written to `requests/ID.yml` and checked with the \
        dispatcher's own checks against the clone's index and schemas; an invalid request is never \
        committed. A push the remote refuses because it moved is retried after `git pull --rebase` \
        (5 attempts).\n\n\
        Examples:\n  \
        git-dispatch submit backup --param database=main --param keep=7\n  \
        git-dispatch submit greet --param name=Ada --param times=2 --id greet-ada\n  \
        git-dispatch submit deploy --file deploy.yml --param db.name=main --no-push"
    )]
    Submit(SubmitArgs),
    /// In a clone of an inbox: pause every dispatcher (commits `control.yml`); running requests finish.
    #[command(
        after_help = "Requests keep queueing while paused; none is rejected for it. \
        `git-dispatch resume` ends the pause.\n\n\
        Examples:\n  \
        git-dispatch pause --reason \"database migration until 18:00\"\n  \
        git-dispatch resume"
    )]
    Pause(PauseArgs),
    /// In a clone of an inbox: end a pause (commits `control.yml`).
    Resume(ControlArgs),
    /// In a clone of an inbox: dispatcher NAME starts nothing new, but keeps running, syncing and pushing.
    #[command(after_help = "Examples:\n  \
        git-dispatch drain ops-1 --reason \"disk swap\"\n  \
        git-dispatch undrain ops-1")]
    Drain(DrainArgs),
    /// In a clone of an inbox: dispatcher NAME starts requests again.
    Undrain(DrainArgs),
    /// In a clone of an inbox: withdraw a request; it is recorded `cancelled` (stopped first if it runs).
    #[command(
        after_help = "Removes the request's file from `requests/` in a commit of its own \
        and pushes it; a dispatcher records the request `cancelled`, naming the commit's author and \
        the reason. A running request gets SIGTERM, then SIGKILL after its kind's grace. Exits 1 \
        for a request that has another outcome already, or none was submitted with ID.\n\n\
        Examples:\n  \
        git-dispatch cancel backup-db-7 --reason \"wrong database\""
    )]
    Cancel(CancelArgs),
    /// In a clone of an inbox: approve a request that waits for approvals (a signed commit).
    #[command(
        after_help = "Commits `approvals/ID/<ulid>.yml` for the version of the request \
        waiting in `requests/`, signed with your git signing setup (`git commit -S`: set \
        `gpg.format=ssh` and `user.signingkey`), and pushes it. It counts when its signer is one of \
        the kind's `approvers` in the dispatchers' --trust file and not the submitter.\n\n\
        Examples:\n  \
        git-dispatch approve deploy-42 --comment \"plan reviewed\""
    )]
    Approve(ApproveArgs),
    /// In a clone of an inbox: deny a request that waits for approvals; it is recorded `rejected`.
    Deny(DenyArgs),
    /// In a clone of an inbox: submit request ID again as `ID.rerun-N`, params overridable; prints its id.
    #[command(
        after_help = "Reads request ID at the upstream's tip (after a `git fetch`): its recorded \
        copy `processed/…/ID.yml`, or the file still waiting in `requests/`. The new request has \
        every key of the original but `id` (kind, params, resource, ...), with `--param`s applied \
        as `submit` applies them, and the id `ID.rerun-N`, N one more than the highest already \
        used; its status says `rerun_of: ID`. The original is not changed. It is then checked, \
        committed and pushed as `submit` does.\n\n\
        Examples:\n  \
        git-dispatch rerun db-main-2026-11-20\n  \
        git-dispatch rerun db-main-2026-11-20 --param keep=14 --no-push"
    )]
    Rerun(RerunArgs),
    /// In a clone of an inbox: the queue, recent outcomes and the last 24 hours at the upstream's tip.
    #[command(
        after_help = "Reads the upstream's tip after a `git fetch`, without checking anything \
        out. A request stays in `requests/` until its outcome is pushed; the one a dispatcher runs \
        is shown running, from the dispatchers' heartbeats under `refs/dispatch/`. With filters \
        (--state, --kind, --since, --dispatcher), the queue, the recent outcomes (up to 1000 \
        instead of 20) and the counts show only what matches them all.\n\n\
        Examples:\n  \
        git-dispatch status\n  \
        git-dispatch status --json | jq '.counts_24h.failed'\n  \
        git-dispatch status --state failed,timed_out --since 24h\n  \
        git-dispatch status --kind backup --dispatcher ops-1"
    )]
    Status(StatusArgs),
    /// In a clone of an inbox: one request's outcome, the commit that recorded it, and its log.
    #[command(after_help = "Examples:\n  \
        git-dispatch show db-main-2026-11-20\n  \
        git-dispatch show 01jd3k9x2m4q7r8s9t0v1w2x3y --log\n  \
        git-dispatch show db-main-2026-11-20 --json")]
    Show(ShowArgs),
    /// Scaffold a new inbox repository: index, example handlers, schemas, folders, a README.
    #[command(after_help = "Examples:\n  \
        git-dispatch init ops-inbox\n  \
        cd ops-inbox && git remote add origin git@example.org:ops/inbox.git && git push -u origin main")]
    Init(InitArgs),
    /// A self-contained demonstration: a temporary remote, a few requests, the dispatcher, the outcomes.
    Demo(DemoArgs),
    /// Run the golden request fixtures through the real pipeline and diff against their expectations.
    #[command(
        after_help = "A fixture is a folder DIR/NAME/ with request.yml, an optional fixture.yml \
        (`env:` for the handler, `clock:` a fixed RFC 3339 time passed as DISPATCH_NOW and \
        SOURCE_DATE_EPOCH) and the expectations expected.status.json and expected.log.\n\n\
        Examples:\n  \
        git-dispatch replay\n  \
        git-dispatch replay --bless\n  \
        git-dispatch replay tests/fixtures --filter greet -j 4"
    )]
    Replay(ReplayArgs),
    /// Preflight before enabling a host: the same options as `run`; checks everything, changes nothing.
    #[command(after_help = "Examples:\n  \
        git-dispatch doctor --remote git@example.org:ops/inbox.git --secrets-file /etc/git-dispatch/secrets\n  \
        GIT_DISPATCH_REMOTE=/srv/git/inbox.git git-dispatch doctor\n  \
        git-dispatch doctor --service    # systemd's ExecStartPre: only host faults fail")]
    Doctor(Box<DoctorArgs>),
    /// An end-to-end run in a temporary directory; silent on success, exit 0 or 1.
    Selftest,
    /// Shell completions on standard output.
    #[command(after_help = "Examples:\n  \
        git-dispatch completions bash > /etc/bash_completion.d/git-dispatch\n  \
        git-dispatch completions zsh > \"${fpath[1]}/_git-dispatch\"\n  \
        git-dispatch completions fish > ~/.config/fish/completions/git-dispatch.fish")]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// The man pages (roff): one on standard output, or all of them written to a folder.
    #[command(
        after_help = "`git dispatch --help` runs `man git-dispatch`: install the pages where \
        `man` looks.\n\n\
        Examples:\n  \
        git-dispatch man --dir /usr/local/share/man/man1\n  \
        git-dispatch man run | man -l -"
    )]
    Man(ManArgs),
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

    /// Serve the operator's page (`/`), `/api/status`, `/metrics` (Prometheus text format),
    /// `/healthz` and, with --webhook-secret-file, `POST /hooks/push` on this address, e.g.
    /// 127.0.0.1:9464.
    #[arg(
        long,
        visible_alias = "metrics-addr",
        env = "GIT_DISPATCH_HTTP_ADDR",
        value_name = "HOST:PORT"
    )]
    pub http_addr: Option<std::net::SocketAddr>,

    /// `GIT_DISPATCH_METRICS_ADDR`, the older name of `GIT_DISPATCH_HTTP_ADDR`.
    #[arg(
        long = "metrics-addr-env",
        hide = true,
        env = "GIT_DISPATCH_METRICS_ADDR"
    )]
    pub metrics_addr_env: Option<std::net::SocketAddr>,

    /// A file (mode 600) holding the secret that push webhooks (GitHub, Gitea, GitLab) are signed
    /// with; `POST /hooks/push` on --http-addr is served only with it.
    #[arg(long, env = "GIT_DISPATCH_WEBHOOK_SECRET_FILE", value_name = "FILE")]
    pub webhook_secret_file: Option<PathBuf>,

    /// How to fetch and push: libgit2 in process, or the system `git` (so the user's SSH config,
    /// known hosts and credential helpers apply).
    #[arg(
        long,
        env = "GIT_DISPATCH_GIT_TRANSPORT",
        value_enum,
        default_value = "libgit2"
    )]
    pub git_transport: crate::git::sync::Transport,

    /// With libgit2: the SSH private key to offer (otherwise the SSH agent).
    #[arg(long, env = "GIT_DISPATCH_SSH_KEY")]
    pub ssh_key: Option<PathBuf>,

    /// Handlers that run at once, on different resources (each resource is still serialised by its
    /// lock) [default: the number of CPUs]
    #[arg(long, env = "GIT_DISPATCH_JOBS")]
    pub jobs: Option<usize>,

    /// How long a claim on a resource lasts without a renewal: a dispatcher that cannot renew stops
    /// its handlers before it ends, and another records them `abandoned` after it.
    #[arg(long, env = "GIT_DISPATCH_LEASE", default_value = "30s")]
    pub lease: String,

    /// This dispatcher's labels: it takes only kinds whose `runs_on` labels it has all of.
    #[arg(long, env = "GIT_DISPATCH_LABELS", value_delimiter = ',')]
    pub labels: Vec<String>,

    /// The host's trusted signing keys: an OpenSSH `allowed_signers` file (as `git` uses with
    /// `gpg.format=ssh`). Submitters, approvers and admins are its principals.
    #[arg(long, env = "GIT_DISPATCH_TRUST", value_name = "FILE")]
    pub trust: Option<PathBuf>,

    /// The principals (of --trust) who may change the index, handlers, schemas and `control.yml`
    /// [default: every principal of --trust]
    #[arg(
        long,
        env = "GIT_DISPATCH_ADMINS",
        value_delimiter = ',',
        requires = "trust"
    )]
    pub admins: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Request files to check.
    #[arg(required_unless_present = "index")]
    pub files: Vec<PathBuf>,

    /// Also check `handlers/index.yml` and the schemas and handlers it names.
    #[arg(long)]
    pub index: bool,

    #[command(flatten)]
    pub repo: RepoArg,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the demonstration's directory instead of removing it.
    #[arg(long)]
    pub keep: bool,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The kind of request: a key of `handlers/index.yml`.
    pub kind: String,

    /// A params entry, KEY=VALUE; the value is a YAML scalar (`n=3` a number, `on=true` a boolean,
    /// `x="3"` a string) and dots nest (`db.name=main`). Repeatable; overrides `--file`.
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,

    /// A YAML request to start from (its `kind`, if any, must be KIND).
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,

    /// The request's id [default: the `id` in --file, else a new time-sortable ULID]
    #[arg(long)]
    pub id: Option<String>,

    /// Commit only; push later with `git push`.
    #[arg(long)]
    pub no_push: bool,

    #[command(flatten)]
    pub repo: RepoArg,
}

/// The clone a control command commits in, and whether it pushes.
#[derive(Debug, Args)]
pub struct ControlArgs {
    /// Commit only; push later with `git push`.
    #[arg(long)]
    pub no_push: bool,

    #[command(flatten)]
    pub repo: RepoArg,
}

#[derive(Debug, Args)]
pub struct PauseArgs {
    /// Why, said by `status`, `/healthz` and the dispatchers' logs.
    #[arg(long)]
    pub reason: Option<String>,

    #[command(flatten)]
    pub control: ControlArgs,
}

#[derive(Debug, Args)]
pub struct DrainArgs {
    /// The dispatcher's id (its `--dispatcher-id`).
    pub name: String,

    /// Why, said by the dispatcher's log and heartbeat (drain only).
    #[arg(long)]
    pub reason: Option<String>,

    #[command(flatten)]
    pub control: ControlArgs,
}

#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// The request's id.
    pub id: String,

    /// Said in the approval and its commit.
    #[arg(long)]
    pub comment: Option<String>,

    /// Commit only; push later with `git push`.
    #[arg(long)]
    pub no_push: bool,

    #[command(flatten)]
    pub repo: RepoArg,
}

#[derive(Debug, Args)]
pub struct DenyArgs {
    /// The request's id.
    pub id: String,

    /// Why: recorded in its status with who denied it.
    #[arg(long)]
    pub reason: Option<String>,

    /// Commit only; push later with `git push`.
    #[arg(long)]
    pub no_push: bool,

    #[command(flatten)]
    pub repo: RepoArg,
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The request's id.
    pub id: String,

    /// Why, recorded in its status with who cancelled it.
    #[arg(long)]
    pub reason: Option<String>,

    /// Commit only; push later with `git push`.
    #[arg(long)]
    pub no_push: bool,

    #[command(flatten)]
    pub repo: RepoArg,
}

#[derive(Debug, Args)]
pub struct RerunArgs {
    /// The id of the request to run again (finished, or still waiting).
    pub id: String,

    /// Overrides a params entry of the original, KEY=VALUE, as `submit --param` (a YAML scalar; dots
    /// nest). Repeatable.
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,

    /// Commit only; push later with `git push`.
    #[arg(long)]
    pub no_push: bool,

    #[command(flatten)]
    pub repo: RepoArg,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// One JSON object, `{"queue": [...], "recent": [...], "counts_24h": {...}}`, for scripts.
    #[arg(long)]
    pub json: bool,

    /// Only requests in these states (repeatable, or a comma list).
    #[arg(
        long = "state",
        value_name = "STATE",
        value_delimiter = ',',
        value_parser = [
            "queued", "awaiting_approval", "running", "succeeded", "failed", "timed_out",
            "rejected", "abandoned", "cancelled",
        ],
    )]
    pub states: Vec<String>,

    /// Only requests of these kinds (repeatable, or a comma list).
    #[arg(long = "kind", value_name = "KIND", value_delimiter = ',')]
    pub kinds: Vec<String>,

    /// Only outcomes recorded within this long (`24h`, `30m`, `7days`); the queue is not filtered by it.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub since: Option<std::time::Duration>,

    /// Only outcomes recorded by this dispatcher and the requests it runs (queued ones are left out).
    #[arg(long, value_name = "NAME")]
    pub dispatcher: Option<String>,

    #[command(flatten)]
    pub clone: CloneArgs,
}

/// The inbox repository a command works in.
#[derive(Debug, Args)]
pub struct RepoArg {
    /// The inbox repository (a clone) [default: the one around the current directory]
    #[arg(long = "repo")]
    pub path: Option<PathBuf>,
}

/// Which clone to read, and whether to fetch first.
#[derive(Debug, Args)]
pub struct CloneArgs {
    /// Do not `git fetch` first: show the upstream as last fetched.
    #[arg(long)]
    pub no_fetch: bool,

    #[command(flatten)]
    pub repo: RepoArg,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The request's id (as recorded: `processed/…/ID.status.json`).
    pub id: String,

    /// Also print the log of each attempt.
    #[arg(long)]
    pub log: bool,

    /// One JSON object: the status file, the commit that recorded it and, with --log, the logs.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub clone: CloneArgs,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Where to create the inbox repository; must be empty or not exist.
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The fixtures folder [default: tests/fixtures]
    pub dir: Option<PathBuf>,

    /// Write the expectations from this run instead of comparing.
    #[arg(long)]
    pub bless: bool,

    /// Only fixtures whose name contains this text.
    #[arg(long)]
    pub filter: Option<String>,

    /// Fixtures run at once.
    #[arg(short = 'j', long = "jobs", default_value_t = 1)]
    pub jobs: usize,

    #[command(flatten)]
    pub repo: RepoArg,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// The page of this subcommand (`run` for git-dispatch-run.1) [default: git-dispatch.1]
    pub subcommand: Option<String>,

    /// Write every page (git-dispatch.1, git-dispatch-run.1, ...) into this folder instead.
    #[arg(long, value_name = "DIR", conflicts_with = "subcommand")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub run: RunArgs,

    /// Before starting the service (systemd's `ExecStartPre`): exit 1 only for faults of the host
    /// (configuration, workdir, lock directory); an unreachable remote or a broken kind, which the
    /// running dispatcher tolerates, is printed as a warning.
    #[arg(long)]
    pub service: bool,
}
