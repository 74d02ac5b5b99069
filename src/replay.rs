//! Golden replay: request fixtures run through the real pipeline, hermetically, and compared with
//! their expected outcomes.
//!
//! A fixture is a folder `<dir>/<name>/` holding `request.yml` (committed as `requests/<name>.yml`, so
//! the id defaults to the fixture's name), an optional `fixture.yml` (`env:` variables for the handler,
//! `clock:` a fixed time handed over as `DISPATCH_NOW` and `SOURCE_DATE_EPOCH`), and the expectations
//! `expected.status.json` and `expected.log` (`expected.2.log`, ... for later attempts).
//!
//! Each fixture gets a temporary bare repository holding the working tree's current `handlers/` and
//! `schemas/` and the one request, and the dispatcher drains it exactly as `run --until-empty` would:
//! parse, validate, route, the sandbox, the outcome commit. The status is compared with its volatile
//! fields (times, durations, object ids, the host) left out, so blessing twice writes the same bytes.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::{Context, bail};
use git2::{FileMode, Oid, Repository, Signature, Time};
use serde::Deserialize;
use serde_json::Value;

use crate::config::RunConfig;
use crate::daemon::{Daemon, Shutdown};
use crate::layout;

/// Status fields that differ between two runs of the same fixture.
const VOLATILE: [&str; 10] = [
    "submitted_at",
    "memory_peak_bytes",
    "cpu_ms",
    "started_at",
    "finished_at",
    "duration_ms",
    "request_blob",
    "handler_blob",
    "submitted_in",
    "dispatcher",
];

/// A fixture's own settings: `fixture.yml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// RFC 3339.
    clock: Option<String>,
}

pub(crate) struct Fixture {
    pub name: String,
    pub dir: PathBuf,
}

/// What a fixture produced, normalised: the files its expectations are compared with.
pub(crate) struct Actual {
    /// File name in the fixture folder -> contents.
    pub files: BTreeMap<String, Vec<u8>>,
}

/// The fixtures under `dir`, by name, those matching `filter` (a substring of the name).
pub(crate) fn discover(dir: &Path, filter: Option<&str>) -> anyhow::Result<Vec<Fixture>> {
    let mut fixtures = Vec::new();
    let entries = fs::read_dir(dir).with_context(|| {
        format!(
            "fixtures folder `{}` could not be read; pass the folder as DIR",
            dir.display()
        )
    })?;
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        if !path.join("request.yml").is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if filter.is_none_or(|f| name.contains(f)) {
            fixtures.push(Fixture { name, dir: path });
        }
    }
    fixtures.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(fixtures)
}

impl Fixture {
    /// Runs the fixture against the inbox repository at `repo` (its working tree's `handlers/` and
    /// `schemas/`).
    pub(crate) fn run(&self, repo: &Path) -> anyhow::Result<Actual> {
        let settings: Settings = match fs::read(self.dir.join("fixture.yml")) {
            Ok(bytes) => serde_yaml::from_slice(&bytes)
                .with_context(|| format!("`{}/fixture.yml`", self.dir.display()))?,
            Err(_) => Settings::default(),
        };
        let request = fs::read(self.dir.join("request.yml"))
            .with_context(|| format!("`{}/request.yml`", self.dir.display()))?;
        let scratch = tempfile::Builder::new()
            .prefix("git-dispatch-replay-")
            .tempdir()?;
        let remote = scratch.path().join("remote.git");
        let request_path = format!("requests/{}.yml", self.name);
        seed(&remote, repo, &request_path, &request)?;

        let mut config =
            RunConfig::until_empty_local(&remote, &scratch.path().join("work"), "replay")?;
        config.fixed_env = settings.env.into_iter().collect();
        if let Some(clock) = &settings.clock {
            let t = humantime::parse_rfc3339(clock)
                .with_context(|| format!("`{}/fixture.yml`: `clock`", self.dir.display()))?;
            let epoch = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
            config
                .fixed_env
                .push(("DISPATCH_NOW".into(), clock.clone()));
            config
                .fixed_env
                .push(("SOURCE_DATE_EPOCH".into(), epoch.to_string()));
        }
        Daemon::open(config)
            .and_then(|daemon| daemon.serve(Shutdown::on_signals()))
            .map_err(|e| anyhow::anyhow!("the dispatcher failed: {e}"))?;
        outcome(&Repository::open_bare(&remote)?, &request_path)
    }

    /// Compares with the expectations; one unified diff per file that differs.
    pub(crate) fn compare(&self, actual: &Actual) -> Vec<String> {
        let mut diffs = Vec::new();
        let mut expected_names: Vec<String> = self.expected_files();
        for (name, bytes) in &actual.files {
            expected_names.retain(|n| n != name);
            let want = fs::read(self.dir.join(name)).unwrap_or_default();
            if want != *bytes {
                let (want, got) = (
                    String::from_utf8_lossy(&want),
                    String::from_utf8_lossy(bytes),
                );
                let diff = similar::TextDiff::from_lines(want.as_ref(), got.as_ref());
                let label = format!("{}/{name}", self.name);
                diffs.push(
                    diff.unified_diff()
                        .context_radius(3)
                        .header(&format!("expected {label}"), &format!("actual {label}"))
                        .to_string(),
                );
            }
        }
        for stale in expected_names {
            diffs.push(format!(
                "{}/{stale}: expected, but the run produced no such file\n",
                self.name
            ));
        }
        diffs
    }

    /// Writes the expectations, removing ones the run no longer produces.
    pub(crate) fn bless(&self, actual: &Actual) -> anyhow::Result<()> {
        for stale in self.expected_files() {
            if !actual.files.contains_key(&stale) {
                fs::remove_file(self.dir.join(&stale))?;
            }
        }
        for (name, bytes) in &actual.files {
            fs::write(self.dir.join(name), bytes)?;
        }
        Ok(())
    }

    fn expected_files(&self) -> Vec<String> {
        fs::read_dir(&self.dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("expected."))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A bare repository whose one commit holds `handlers/` and `schemas/` of `repo`'s working tree and
/// the request.
fn seed(remote: &Path, repo: &Path, request_path: &str, request: &[u8]) -> anyhow::Result<()> {
    let bare = Repository::init_bare(remote)?;
    let mut root = bare.treebuilder(None)?;
    for folder in ["handlers", "schemas"] {
        let path = repo.join(folder);
        if path.is_dir() {
            root.insert(
                folder,
                tree_from_dir(&bare, &path)?,
                i32::from(FileMode::Tree),
            )?;
        }
    }
    let mut requests = bare.treebuilder(None)?;
    let name = request_path.trim_start_matches("requests/");
    requests.insert(name, bare.blob(request)?, i32::from(FileMode::Blob))?;
    root.insert("requests", requests.write()?, i32::from(FileMode::Tree))?;
    let tree = bare.find_tree(root.write()?)?;
    let signature = Signature::new("git-dispatch replay", "replay@localhost", &Time::new(0, 0))?;
    let commit = bare.commit(None, &signature, &signature, "replay fixture", &tree, &[])?;
    bare.reference("refs/heads/main", commit, true, "replay fixture")?;
    bare.set_head("refs/heads/main")?;
    Ok(())
}

/// The tree of a folder on disk: regular files (executable bit kept) and sub-folders.
fn tree_from_dir(repo: &Repository, dir: &Path) -> anyhow::Result<Oid> {
    let mut builder = repo.treebuilder(None)?;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = fs::symlink_metadata(entry.path())?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if meta.is_dir() {
            builder.insert(
                name,
                tree_from_dir(repo, &entry.path())?,
                i32::from(FileMode::Tree),
            )?;
        } else if meta.is_file() {
            let mode = if meta.permissions().mode() & 0o111 != 0 {
                FileMode::BlobExecutable
            } else {
                FileMode::Blob
            };
            builder.insert(name, repo.blob_path(&entry.path())?, i32::from(mode))?;
        }
    }
    Ok(builder.write()?)
}

/// The recorded outcome of the request at `request_path`: its normalised status and its logs.
fn outcome(remote: &Repository, request_path: &str) -> anyhow::Result<Actual> {
    let tree = remote.head()?.peel_to_commit()?.tree()?;
    let read = |path: &str| -> anyhow::Result<Vec<u8>> {
        let entry = tree
            .get_path(Path::new(path))
            .with_context(|| format!("the outcome has no `{path}`"))?;
        Ok(remote.find_blob(entry.id())?.content().to_vec())
    };
    let mut status = None;
    for (key, place, blob) in layout::statuses(remote, &tree)? {
        let value: Value = serde_json::from_slice(remote.find_blob(blob)?.content())?;
        if value["request"] == request_path {
            status = Some((key, place, value));
        }
    }
    let Some((key, place, mut status)) = status else {
        bail!("no outcome was recorded for `{request_path}`");
    };
    let mut files = BTreeMap::new();
    let attempts = status["attempts"].as_u64().unwrap_or(0).max(1);
    for attempt in 1..=attempts {
        let expected = if attempt == 1 {
            "expected.log".to_owned()
        } else {
            format!("expected.{attempt}.log")
        };
        if let Some(bytes) = place
            .log_names(&key, attempt)
            .iter()
            .find_map(|path| read(path).ok())
        {
            files.insert(expected, bytes);
        }
    }
    if let Some(map) = status.as_object_mut() {
        for field in VOLATILE {
            map.remove(field);
        }
    }
    let mut json = serde_json::to_string_pretty(&status)?;
    json.push('\n');
    files.insert("expected.status.json".to_owned(), json.into_bytes());
    Ok(Actual { files })
}
