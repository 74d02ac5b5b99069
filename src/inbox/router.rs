//! `handlers/index.yml` -> [`HandlerIndex`]; a kind -> its [`Route`] (handler, limits, params schema).
//!
//! The index, the envelope schema and every params schema are read from one view of the repository
//! (the fetched commit) and compiled together into a [`Catalog`], so a new handler is a new file and an
//! index entry: no restart. An index that does not read (or an envelope schema that does not
//! compile) is a blocker ([`Catalog::blocker`]): requests wait for a fixed one instead of being
//! rejected for a mistake that is not theirs. A kind that a readable index does not list is
//! rejected.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use git2::Oid;
use serde::Deserialize;
use serde_yaml::Value as Yaml;

use crate::git::view::{EntryType, RepoView};
use crate::inbox::schema::Schema;
use crate::inbox::yaml::{describe_yaml, parse_yaml_mapping};
use crate::layout::is_valid_name;

pub(crate) const INDEX_PATH: &str = "handlers/index.yml";
pub(crate) const REQUEST_SCHEMA_PATH: &str = "schemas/request.schema.json";

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15 * 60);
const DEFAULT_GRACE: Duration = Duration::from_secs(5);
const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_secs(10);

/// One entry of the index, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKind {
    handler: String,
    schema: Option<String>,
    timeout: Option<String>,
    grace: Option<String>,
    resource: Option<String>,
    #[serde(default)]
    retries: u32,
    retry_backoff: Option<String>,
    memory: Option<String>,
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    secrets: Vec<String>,
    #[serde(default)]
    idempotent: bool,
    log_limit: Option<String>,
    nproc: Option<u64>,
    nofile: Option<u64>,
    fsize: Option<String>,
    runs_on: Option<Yaml>,
    network: Option<String>,
    #[serde(default)]
    writable: Vec<String>,
    isolation: Option<String>,
    pids: Option<u64>,
    cpu: Option<f64>,
    submitters: Option<Vec<String>>,
    #[serde(default)]
    approvals: u32,
    #[serde(default)]
    approvers: Vec<String>,
    approval_timeout: Option<String>,
}

/// How long a request waits for its approvals by default: a week.
const DEFAULT_APPROVAL_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// Defaults for the limits a kind may override.
const DEFAULT_NPROC: u64 = 1024;
const DEFAULT_NOFILE: u64 = 1024;
const DEFAULT_FSIZE: u64 = 4 << 30;

/// One kind, validated.
#[derive(Debug, Clone)]
pub(crate) struct KindSpec {
    /// Path of the handler inside `handlers/`.
    pub handler: String,
    /// File name of the params schema inside `schemas/`.
    pub schema: Option<String>,
    pub timeout: Duration,
    /// Between SIGTERM and SIGKILL when the timeout strikes.
    pub grace: Duration,
    pub resource: Option<String>,
    pub retries: u32,
    pub retry_backoff: Duration,
    /// Address-space limit in bytes.
    pub memory: Option<u64>,
    pub env: Vec<String>,
    pub secrets: Vec<String>,
    pub idempotent: bool,
    /// Bytes of output kept in the log; `None`: the dispatcher's `--log-limit`.
    pub log_limit: Option<u64>,
    /// `network: none`: the handler gets a network of its own with loopback only.
    pub no_network: bool,
    /// `RLIMIT_NPROC`, `RLIMIT_NOFILE`, `RLIMIT_FSIZE`.
    pub nproc: u64,
    pub nofile: u64,
    pub fsize: u64,
    /// The labels a dispatcher must all have to take requests of this kind (`run --labels`).
    pub runs_on: Vec<String>,
    /// `isolation: none`: the handler sees the host as the dispatcher's user would (no namespaces).
    pub no_isolation: bool,
    /// Host paths the handler may write, besides its working directory and private `/tmp`:
    /// absolute, without `.` or `..`.
    pub writable: Vec<String>,
    /// The cgroup's process limit (`pids.max`).
    pub pids: Option<u64>,
    /// The cgroup's CPU limit, in cores.
    pub cpu: Option<f64>,
    /// The principals (of `run --trust`) whose signed commits may add requests of this kind.
    pub submitters: Option<Vec<String>>,
    /// How many distinct approvers, none of them the submitter, must approve a request first.
    pub approvals: u32,
    pub approvers: Vec<String>,
    /// How long a request waits for its approvals before it is rejected as expired.
    pub approval_timeout: Duration,
}

/// The parsed index: kind name -> spec, or the reason that kind cannot be used.
#[derive(Debug, Default)]
pub(crate) struct HandlerIndex {
    pub kinds: BTreeMap<String, Result<KindSpec, String>>,
}

/// Everything needed to run requests of one kind.
#[derive(Clone)]
pub(crate) struct Route {
    pub spec: KindSpec,
    /// `handlers/<handler>`, the path in the repository.
    pub handler_path: String,
    /// The handler's blob, where the view is a commit.
    pub handler_blob: Option<Oid>,
    pub params_schema: Option<Arc<Schema>>,
}

/// The index and the schemas of one view, compiled.
pub(crate) struct Catalog {
    /// The index, or why it cannot be read at all.
    index: Result<HandlerIndex, String>,
    pub request_schema: Result<Arc<Schema>, String>,
    routes: BTreeMap<String, Result<Route, String>>,
}

impl Catalog {
    pub(crate) fn load(view: &dyn RepoView) -> Self {
        let index = read_index(view);
        let request_schema = load_schema(view, REQUEST_SCHEMA_PATH);
        let mut routes = BTreeMap::new();
        let mut schemas: BTreeMap<String, Result<Arc<Schema>, String>> = BTreeMap::new();
        if let Ok(index) = &index {
            for (name, spec) in &index.kinds {
                let route = spec.clone().and_then(|spec| {
                    let params_schema = match &spec.schema {
                        None => None,
                        Some(file) => Some(
                            schemas
                                .entry(file.clone())
                                .or_insert_with(|| load_schema(view, &format!("schemas/{file}")))
                                .clone()
                                .map_err(|e| format!("kind `{name}`: {e}"))?,
                        ),
                    };
                    let handler_path = format!("handlers/{}", spec.handler);
                    check_handler(view, &handler_path)
                        .map_err(|e| format!("kind `{name}`: handler `{handler_path}` {e}"))?;
                    Ok(Route {
                        handler_blob: view.oid(&handler_path),
                        handler_path,
                        params_schema,
                        spec,
                    })
                });
                routes.insert(name.clone(), route);
            }
        }
        Self {
            index,
            request_schema,
            routes,
        }
    }

    /// The route of `kind`, or why requests of that kind cannot run.
    pub(crate) fn route(&self, kind: &str) -> Result<&Route, String> {
        let index = self.index.as_ref().map_err(Clone::clone)?;
        match self.routes.get(kind) {
            Some(route) => route.as_ref().map_err(Clone::clone),
            None => {
                let known: Vec<&str> = index.kinds.keys().map(String::as_str).collect();
                Err(format!(
                    "`kind`: `{kind}` is not a kind listed in `{INDEX_PATH}` (known: {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ))
            }
        }
    }

    /// Whether the index reads and does not list `kind` at all.
    pub(crate) fn lacks(&self, kind: &str) -> bool {
        self.index.is_ok() && !self.routes.contains_key(kind)
    }

    /// The kinds that can be used, with their specs.
    pub(crate) fn kind_specs(&self) -> impl Iterator<Item = (&str, &KindSpec)> {
        self.routes
            .iter()
            .filter_map(|(name, route)| Some((name.as_str(), &route.as_ref().ok()?.spec)))
    }

    /// The kinds the index lists (usable or not).
    pub(crate) fn kinds(&self) -> Vec<&str> {
        self.routes.keys().map(String::as_str).collect()
    }

    /// Why no request can be checked at all: the index does not read, or the envelope schema does
    /// not compile. Requests wait for a fixed one.
    pub(crate) fn blocker(&self) -> Option<String> {
        match (&self.index, &self.request_schema) {
            (Err(e), _) | (_, Err(e)) => Some(e.clone()),
            _ => None,
        }
    }

    /// Every problem of the index and the schemas, for `validate --index` and `doctor`.
    pub(crate) fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Err(e) = &self.index {
            problems.push(e.clone());
        }
        if let Err(e) = &self.request_schema {
            problems.push(e.clone());
        }
        problems.extend(
            self.routes
                .values()
                .filter_map(|r| r.as_ref().err().cloned()),
        );
        problems
    }
}

fn load_schema(view: &dyn RepoView, path: &str) -> Result<Arc<Schema>, String> {
    match view.walk(path) {
        Ok(EntryType::File { .. }) => {}
        Ok(other) => return Err(format!("schema `{path}` is {}", other.describe())),
        Err(e) => return Err(format!("schema `{path}` is missing: {e}")),
    }
    let bytes = view
        .read(path)
        .map_err(|e| format!("schema `{path}` could not be read: {e}"))?
        .ok_or_else(|| format!("schema `{path}` is missing"))?;
    Schema::compile(path, &bytes).map(Arc::new)
}

/// The handler must be a regular executable file reached through real folders inside `handlers/`.
fn check_handler(view: &dyn RepoView, path: &str) -> Result<(), String> {
    match view.walk(path)? {
        EntryType::File { executable: true } => Ok(()),
        EntryType::File { executable: false } => {
            Err("is not executable (set its executable bit: `git update-index --chmod=+x`)".into())
        }
        other => Err(format!(
            "is {}, not a regular executable file",
            other.describe()
        )),
    }
}

fn read_index(view: &dyn RepoView) -> Result<HandlerIndex, String> {
    let bytes = view
        .read(INDEX_PATH)
        .map_err(|e| format!("`{INDEX_PATH}` could not be read: {e}"))?
        .ok_or_else(|| format!("`{INDEX_PATH}` is missing in {}", view.describe()))?;
    parse_index(&bytes)
}

/// Parses the index; a problem with one kind is kept with that kind and spares the others.
pub(crate) fn parse_index(bytes: &[u8]) -> Result<HandlerIndex, String> {
    let mapping = parse_yaml_mapping(bytes).map_err(|e| format!("`{INDEX_PATH}`: {e}"))?;
    let mut kinds = BTreeMap::new();
    for (key, value) in mapping {
        let Yaml::String(name) = key else {
            return Err(format!(
                "`{INDEX_PATH}`: every key must be a kind name, got {}",
                describe_yaml(&key)
            ));
        };
        let spec = parse_kind(&name, value).map_err(|e| format!("`{INDEX_PATH}`: {e}"));
        kinds.insert(name, spec);
    }
    Ok(HandlerIndex { kinds })
}

fn parse_kind(name: &str, value: Yaml) -> Result<KindSpec, String> {
    if !is_valid_name(name) {
        return Err(format!(
            "kind `{name}` is not a valid name (expected [A-Za-z0-9][A-Za-z0-9._-]{{0,127}})"
        ));
    }
    let raw: RawKind = serde_yaml::from_value(value).map_err(|e| format!("kind `{name}`: {e}"))?;
    let field = |f: &str| format!("`{name}.{f}`");
    let duration = |f: &str, v: &Option<String>, default| match v {
        None => Ok(default),
        Some(text) => parse_duration(text).map_err(|e| format!("{}: {e}", field(f))),
    };
    check_relative_path(&raw.handler).map_err(|e| format!("{}: {e}", field("handler")))?;
    if let Some(schema) = &raw.schema {
        check_relative_path(schema).map_err(|e| format!("{}: {e}", field("schema")))?;
    }
    if let Some(resource) = &raw.resource
        && !is_valid_name(resource)
    {
        return Err(format!(
            "{}: `{resource}` is not a valid lock name (expected [A-Za-z0-9][A-Za-z0-9._-]{{0,127}})",
            field("resource")
        ));
    }
    for (list, names) in [("env", &raw.env), ("secrets", &raw.secrets)] {
        if let Some(bad) = names.iter().find(|n| !is_env_name(n)) {
            return Err(format!(
                "{}: `{bad}` is not a variable name (expected [A-Za-z_][A-Za-z0-9_]*)",
                field(list)
            ));
        }
    }
    let size = |f: &str, v: &Option<String>| {
        v.as_deref()
            .map(|m| parse_size(m).map_err(|e| format!("{}: {e}", field(f))))
            .transpose()
    };
    let runs_on = parse_runs_on(raw.runs_on).map_err(|e| format!("{}: {e}", field("runs_on")))?;
    let memory = size("memory", &raw.memory)?;
    let log_limit = size("log_limit", &raw.log_limit)?;
    let fsize = size("fsize", &raw.fsize)?.unwrap_or(DEFAULT_FSIZE);
    let no_network = match raw.network.as_deref() {
        None | Some("host") => false,
        Some("none") => true,
        Some(other) => {
            return Err(format!(
                "{}: `{other}` is not a network (expected `none`, loopback only, or `host`)",
                field("network")
            ));
        }
    };
    let no_isolation = match raw.isolation.as_deref() {
        None | Some("full") => false,
        Some("none") => true,
        Some(other) => {
            return Err(format!(
                "{}: `{other}` is not an isolation (expected `full`, the default, or `none`)",
                field("isolation")
            ));
        }
    };
    for path in &raw.writable {
        check_host_path(path).map_err(|e| format!("{}: {e}", field("writable")))?;
    }
    if raw.pids == Some(0) {
        return Err(format!(
            "{}: 0 would let no process start (expected 1 or more)",
            field("pids")
        ));
    }
    if let Some(cpu) = raw.cpu
        && !(cpu.is_finite() && (0.01..=4096.0).contains(&cpu))
    {
        return Err(format!(
            "{}: `{cpu}` is not a number of cores (expected one from 0.01 to 4096, like `0.5`)",
            field("cpu")
        ));
    }
    if raw.approvals > 0 && raw.approvers.len() < raw.approvals as usize {
        return Err(format!(
            "{}: {} approval(s) need at least as many `approvers` (it lists {})",
            field("approvals"),
            raw.approvals,
            raw.approvers.len()
        ));
    }
    if raw.approvals == 0 && !raw.approvers.is_empty() {
        return Err(format!(
            "{}: `approvers` without `approvals: N` asks for nothing (set how many must approve)",
            field("approvers")
        ));
    }
    Ok(KindSpec {
        submitters: raw.submitters,
        approvals: raw.approvals,
        approvers: raw.approvers,
        approval_timeout: duration(
            "approval_timeout",
            &raw.approval_timeout,
            DEFAULT_APPROVAL_TIMEOUT,
        )?,
        no_network,
        no_isolation,
        writable: raw.writable,
        pids: raw.pids,
        cpu: raw.cpu,
        timeout: duration("timeout", &raw.timeout, DEFAULT_TIMEOUT)?,
        grace: duration("grace", &raw.grace, DEFAULT_GRACE)?,
        retry_backoff: duration("retry_backoff", &raw.retry_backoff, DEFAULT_RETRY_BACKOFF)?,
        handler: raw.handler,
        schema: raw.schema,
        resource: raw.resource,
        retries: raw.retries,
        memory,
        env: raw.env,
        secrets: raw.secrets,
        idempotent: raw.idempotent,
        log_limit,
        nproc: raw.nproc.unwrap_or(DEFAULT_NPROC),
        nofile: raw.nofile.unwrap_or(DEFAULT_NOFILE),
        fsize,
        runs_on,
    })
}

/// `runs_on: [gpu, linux]`: a list of labels, each a valid name.
fn parse_runs_on(value: Option<Yaml>) -> Result<Vec<String>, String> {
    let items = match value {
        None => return Ok(Vec::new()),
        Some(Yaml::Sequence(items)) => items,
        Some(other) => {
            return Err(format!(
                "expected a list of labels like `[gpu]`, got {}",
                describe_yaml(&other)
            ));
        }
    };
    let mut labels = Vec::new();
    for item in items {
        match item {
            Yaml::String(label) if is_valid_name(&label) => {
                if !labels.contains(&label) {
                    labels.push(label);
                }
            }
            Yaml::String(label) => {
                return Err(format!(
                    "`{label}` is not a valid label (expected [A-Za-z0-9][A-Za-z0-9._-]{{0,127}})"
                ));
            }
            other => {
                return Err(format!(
                    "expected a list of labels like `[gpu]`, got {} in it",
                    describe_yaml(&other)
                ));
            }
        }
    }
    Ok(labels)
}

/// A path that stays inside its folder: relative, no `.`/`..`/empty components.
fn check_relative_path(path: &str) -> Result<(), String> {
    if path.is_empty() || path.starts_with('/') {
        return Err(format!(
            "`{path}` must be a relative path inside its folder"
        ));
    }
    if path
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err(format!(
            "`{path}` must stay inside its folder (no `..`, `.` or empty components)"
        ));
    }
    Ok(())
}

/// A host path for `writable:`: absolute, without `.`, `..` or empty components.
fn check_host_path(path: &str) -> Result<(), String> {
    let rest = path.strip_prefix('/').filter(|rest| !rest.is_empty());
    let ok = rest.is_some_and(|rest| {
        rest.trim_end_matches('/')
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
    });
    if ok && !path.contains('\0') {
        Ok(())
    } else {
        Err(format!(
            "`{path}` must be an absolute path other than `/`, without `.`, `..` or empty components"
        ))
    }
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `15m`, `10s`, `1h 30m`, `500ms`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("`{text}` is not a duration like `30s`, `5m` or `1h` ({e})"))
}

/// `512MiB`, `1GiB`, `64KiB`, `100000` (bytes).
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    text.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("`{text}` is not a size like `512MiB` or `1GiB` ({e})"))
}
