//! Raw command-line arguments -> a validated [`RunConfig`]: durations parsed, paths absolute, limits
//! in bytes. Every problem here is a configuration error (exit 2).

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use nix::unistd::{User, geteuid, getgrouplist};

use crate::cli::RunArgs;
use crate::git::sync::Access;
use crate::git::url::{local_path, without_password};
use crate::inbox::router::{parse_duration, parse_size};
use crate::log::say;
use crate::run::spawn::Identity;
use crate::secrets::{Redactor, Secrets};

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
    /// The user handlers run as; `None`: the dispatcher's own.
    pub run_as: Option<Identity>,
    pub secrets: Arc<Secrets>,
    /// `--secrets-file`, absolute: hidden from isolated handlers.
    pub secrets_file: Option<PathBuf>,
    /// Built from every secret: applied to logs, errors and the dispatcher's own lines.
    pub redactor: Redactor,
    /// Handlers and their index from the host instead of the repository.
    pub handlers_dir: Option<PathBuf>,
    pub access: Access,
    /// Validate and route only: nothing runs, nothing is committed or pushed.
    pub dry_run: bool,
    /// Where the page, the API, `/metrics`, `/healthz` and the webhooks are served.
    pub http_addr: Option<std::net::SocketAddr>,
    /// `--webhook-secret-file`'s secret: `POST /hooks/push` is served only with one.
    pub webhook_secret: Option<WebhookSecret>,
    /// Variables every handler gets on top of the SPEC's (`replay` fixtures set these).
    pub fixed_env: Vec<(String, String)>,
    /// How long a claim lasts without a renewal (see [`crate::claim`]).
    pub lease: Duration,
    /// This dispatcher's labels, for the kinds' `runs_on`.
    pub labels: Vec<String>,
    /// The host's name, as the heartbeat and the claims say it.
    pub host: String,
    /// `--trust` and `--admins`: whose signatures count.
    pub trust: Option<Trust>,
}

/// The secret push webhooks are signed with (`--webhook-secret-file`); never printed.
#[derive(Clone)]
pub(crate) struct WebhookSecret(pub Vec<u8>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(..)")
    }
}

impl WebhookSecret {
    /// The file's text without its trailing line break; refused when others can read the file, or
    /// when it is empty.
    fn load(path: &Path) -> anyhow::Result<Self> {
        let text = crate::secrets::read_private(path)
            .map_err(|e| anyhow::anyhow!("--webhook-secret-file: {e}"))?;
        let secret = text.trim_end_matches(['\n', '\r']);
        if secret.is_empty() {
            bail!(
                "--webhook-secret-file: `{}` is empty; put the webhook's secret in it",
                path.display()
            );
        }
        Ok(Self(secret.as_bytes().to_vec()))
    }
}

/// The host's trust (see [`crate::git::verify`]).
#[derive(Debug, Clone)]
pub(crate) struct Trust {
    /// The `allowed_signers` file.
    pub file: std::path::PathBuf,
    /// Who may change the index, handlers, schemas and `control.yml`.
    pub admins: Vec<String>,
}

impl RunConfig {
    pub(crate) fn from_args(args: &RunArgs) -> anyhow::Result<Self> {
        let (remote, password) = without_password(&normalize_remote(&args.remote)?);
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
        let host = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        let dispatcher_id = match &args.dispatcher_id {
            Some(id) => id.clone(),
            None if host.is_empty() => bail!("could not read the host name; pass --dispatcher-id"),
            None => host.clone(),
        };
        if !crate::claim::protocol::is_ref_safe(&dispatcher_id) {
            bail!(
                "--dispatcher-id `{dispatcher_id}`: expected a name of letters, digits, `.`, `_` \
                 and `-` (at most 128, starting with a letter or digit, without `..` or a \
                 `.lock` ending)"
            );
        }
        let lease = parse_duration(&args.lease).map_err(|e| anyhow::anyhow!("--lease: {e}"))?;
        if lease < Duration::from_secs(2) {
            bail!("--lease must be at least 2s");
        }
        let mut labels = Vec::new();
        for label in args
            .labels
            .iter()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty())
        {
            if !crate::layout::is_valid_name(label) {
                bail!(
                    "--labels: `{label}` is not a label: expected letters, digits, `.`, `_` and `-`, \
                     starting with a letter or digit"
                );
            }
            labels.push(label.to_owned());
        }
        let trust = match &args.trust {
            None => None,
            Some(file) => {
                let file = absolute(file)?;
                let text = std::fs::read_to_string(&file)
                    .map_err(|e| anyhow::anyhow!("--trust: `{}`: {e}", file.display()))?;
                let known = crate::git::verify::principals(&text);
                if known.is_empty() {
                    bail!(
                        "--trust: `{}` names no principal (expected `allowed_signers` lines: \
                         `PRINCIPAL KEYTYPE KEY`)",
                        file.display()
                    );
                }
                let admins: Vec<String> = args
                    .admins
                    .iter()
                    .map(|a| a.trim().to_owned())
                    .filter(|a| !a.is_empty())
                    .collect();
                if let Some(stranger) = admins.iter().find(|a| !known.contains(a)) {
                    bail!(
                        "--admins: `{stranger}` is not a principal of `{}` (it names {})",
                        file.display(),
                        known.join(", ")
                    );
                }
                Some(Trust {
                    file,
                    admins: if admins.is_empty() { known } else { admins },
                })
            }
        };
        let log_limit =
            parse_size(&args.log_limit).map_err(|e| anyhow::anyhow!("--log-limit: {e}"))?;
        let secrets = match &args.secrets_file {
            Some(path) => Secrets::load(&absolute(path)?)?,
            None => Secrets::default(),
        };
        let redactor = secrets.redactor();
        let handlers_dir = match &args.handlers_dir {
            Some(dir) if dir.is_dir() => Some(absolute(dir)?),
            Some(dir) => bail!("--handlers-dir: `{}` is not a directory", dir.display()),
            None => None,
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
            jobs: match args.jobs {
                Some(0) => bail!("--jobs must be at least 1"),
                Some(n) => n,
                None => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            },
            log_limit,
            push_batch: crate::failpoint::push_batch(Duration::from_secs(1)),
            run_as: resolve_run_as(args.run_as.as_deref())?,
            secrets_file: args.secrets_file.as_deref().map(absolute).transpose()?,
            secrets: Arc::new(secrets),
            redactor,
            handlers_dir,
            access: Access {
                transport: args.git_transport,
                ssh_key: args.ssh_key.as_deref().map(absolute).transpose()?,
                password,
            },
            dry_run: args.dry_run,
            http_addr: args.http_addr.or(args.metrics_addr_env),
            webhook_secret: args
                .webhook_secret_file
                .as_deref()
                .map(WebhookSecret::load)
                .transpose()?,
            fixed_env: Vec::new(),
            lease,
            labels,
            host,
            trust,
        })
    }
}

impl RunConfig {
    /// The defaults of `run --until-empty` against a remote on a local path, for the dispatcher's own
    /// in-process uses (`demo`, `selftest`, `replay`).
    pub(crate) fn until_empty_local(
        remote: &Path,
        workdir: &Path,
        id: &str,
    ) -> anyhow::Result<Self> {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from([
            "git-dispatch".as_ref(),
            "run".as_ref(),
            "--until-empty".as_ref(),
            "--push-attempts=3".as_ref(),
            "--remote".as_ref(),
            remote.as_os_str(),
            "--workdir".as_ref(),
            workdir.as_os_str(),
            "--dispatcher-id".as_ref(),
            id.as_ref(),
        ] as [&std::ffi::OsStr; 10])?;
        match cli.command {
            crate::cli::Command::Run(args) => Self::from_args(&args),
            _ => unreachable!("parsed as `run`"),
        }
    }
}

/// Started as root, handlers run as `--run-as` (default `nobody`); root itself only when asked by
/// name. Started as anyone else, handlers run as that user.
pub(crate) fn resolve_run_as(run_as: Option<&str>) -> anyhow::Result<Option<Identity>> {
    let euid = geteuid();
    let lookup = |name: &str| -> anyhow::Result<User> {
        User::from_name(name)
            .with_context(|| format!("--run-as: could not look up user `{name}`"))?
            .with_context(|| format!("--run-as: there is no user `{name}` on this host"))
    };
    if !euid.is_root() {
        if let Some(name) = run_as
            && lookup(name)?.uid != euid
        {
            bail!(
                "--run-as {name}: only a dispatcher started as root can run handlers as another user \
                 (this one runs as uid {euid})"
            );
        }
        return Ok(None);
    }
    let name = run_as.unwrap_or("nobody");
    let user = lookup(name)?;
    if user.uid.is_root() {
        say("warning: handlers run as root (`--run-as root`): they can do anything on this host");
    }
    let c_name = CString::new(name).context("--run-as: the user name holds a NUL byte")?;
    let groups = getgrouplist(&c_name, user.gid)
        .with_context(|| format!("--run-as: could not list the groups of `{name}`"))?;
    Ok(Some(Identity {
        uid: user.uid,
        gid: user.gid,
        groups,
    }))
}

/// A local path becomes absolute (the dispatcher may change directory); URLs stay as they are.
fn normalize_remote(remote: &str) -> anyhow::Result<String> {
    if remote.is_empty() {
        bail!("--remote must not be empty");
    }
    if let Some(path) = local_path(remote) {
        let path = absolute(&path)?;
        if !path.exists() {
            bail!(
                "--remote `{}`: the path does not exist (a remote on this host is the path of a Git \
                 repository)",
                path.display()
            );
        }
        return Ok(if remote.starts_with("file://") {
            remote.to_owned()
        } else {
            path.to_string_lossy().into_owned()
        });
    }
    Ok(remote.to_owned())
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
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    Ok(state.join("git-dispatch").join(name.trim_matches('_')))
}
