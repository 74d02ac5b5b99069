//! A working clone of the remote (`Checkout`): the submitter's, which writes, commits on the world's
//! clock and pushes requests, or a fresh one a test asserts on, read through its files, its status
//! files (each where the layout puts its key), its commit subjects and trailers.

use std::cell::Cell;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::rc::Rc;

use serde_json::Value;

use super::git::git_command;
use super::layout::processed;
use super::run::checked;

/// Writes `bytes` to `path`, creating parent directories.
fn write_file(path: &Path, bytes: &[u8]) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("create parent directories");
    }
    fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

pub(super) fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// A working clone of the remote: the submitter's, or a fresh one to assert on.
pub struct Checkout {
    pub dir: PathBuf,
    home: PathBuf,
    clock: Rc<Cell<i64>>,
}

impl Checkout {
    /// A checkout of the clone at `dir`, whose commits take their dates from the world's `clock`.
    pub(super) fn new(dir: PathBuf, home: PathBuf, clock: Rc<Cell<i64>>) -> Self {
        Self { dir, home, clock }
    }

    /// Runs git here and returns its trimmed stdout; panics on failure.
    pub fn git(&self, args: &[&str]) -> String {
        let mut cmd = git_command(&self.home, &self.dir);
        cmd.args(args);
        checked(cmd)
    }

    /// Whether `git args` exits 0 (for predicates such as `merge-base --is-ancestor`).
    pub fn git_succeeds(&self, args: &[&str]) -> bool {
        let mut cmd = git_command(&self.home, &self.dir);
        cmd.args(args).stdout(Stdio::null()).stderr(Stdio::null());
        cmd.status().expect("spawn git").success()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// Writes a file in the working tree (parents created; nothing staged).
    /// An index gets the world's `markers/` among its kinds' `writable:` paths (see
    /// [`markers_writable`]).
    pub fn write(&self, rel: &str, bytes: impl AsRef<[u8]>) {
        let markers = self.home.parent().map(|root| root.join("markers"));
        match (rel, std::str::from_utf8(bytes.as_ref()), markers) {
            ("handlers/index.yml", Ok(index), Some(markers)) if markers.is_dir() => {
                write_file(
                    &self.path(rel),
                    markers_writable(index, &markers).as_bytes(),
                );
            }
            _ => write_file(&self.path(rel), bytes.as_ref()),
        }
    }

    /// Writes a file with mode 755.
    pub fn write_executable(&self, rel: &str, text: &str) {
        let path = self.path(rel);
        write_file(&path, text.as_bytes());
        chmod(&path, 0o755);
    }

    /// The bytes of `rel` in the working tree, `None` if it does not exist.
    pub fn read(&self, rel: &str) -> Option<Vec<u8>> {
        fs::read(self.path(rel)).ok()
    }

    /// `read` as (lossy) text.
    pub fn read_string(&self, rel: &str) -> Option<String> {
        self.read(rel)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The sorted entry names of directory `rel` (dotfiles included; empty if it does not exist).
    pub fn ls(&self, rel: &str) -> Vec<String> {
        let Ok(entries) = fs::read_dir(self.path(rel)) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .map(|e| {
                e.expect("read dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }

    /// Every file under folder `rel`, as paths relative to `rel`, sorted (empty if it does not
    /// exist).
    pub fn files(&self, rel: &str) -> Vec<String> {
        fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) {
            let Ok(entries) = fs::read_dir(dir) else {
                return;
            };
            for entry in entries {
                let entry = entry.expect("read dir entry");
                let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
                if entry.file_type().expect("file type").is_dir() {
                    walk(&entry.path(), &format!("{name}/"), out);
                } else {
                    out.push(name);
                }
            }
        }
        let mut files = Vec::new();
        walk(&self.path(rel), "", &mut files);
        files.sort();
        files
    }

    /// The status file of `key`, parsed; panics listing `processed/` if it is missing.
    pub fn status(&self, key: &str) -> Value {
        let rel = processed(key, "status.json");
        let bytes = self.read(&rel).unwrap_or_else(|| {
            panic!(
                "no `{rel}` in the remote; processed/ holds {:?}",
                self.files("processed")
            )
        });
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("`{rel}` is not JSON: {e}"))
    }

    /// Every status file under `processed/` as (key, parsed status), sorted by key. Each must be
    /// where the layout puts its key.
    pub fn statuses(&self) -> Vec<(String, Value)> {
        let mut statuses: Vec<(String, Value)> = self
            .files("processed")
            .into_iter()
            .filter_map(|rel| {
                let key = rel.rsplit('/').next()?.strip_suffix(".status.json")?;
                assert_eq!(
                    format!("processed/{rel}"),
                    processed(key, "status.json"),
                    "a status file outside its shard"
                );
                Some(key.to_owned())
            })
            .map(|key| {
                let status = self.status(&key);
                (key, status)
            })
            .collect();
        statuses.sort_by(|a, b| a.0.cmp(&b.0));
        statuses
    }

    /// The single `rejected` outcome whose `error` names `requests/<rel>`; panics listing every status
    /// otherwise. Returns its record key and status.
    pub fn rejected_for(&self, rel: &str) -> (String, Value) {
        let needle = format!("requests/{rel}");
        let all = self.statuses();
        let mut matching: Vec<(String, Value)> = all
            .iter()
            .filter(|(_, s)| {
                s["state"] == "rejected" && s["error"].as_str().is_some_and(|e| e.contains(&needle))
            })
            .cloned()
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "expected exactly one rejected outcome naming `{needle}`, statuses: {all:#?}"
        );
        matching.pop().expect("length checked above")
    }

    /// Commit subjects, oldest first.
    pub fn log_subjects(&self) -> Vec<String> {
        self.git(&["log", "--reverse", "--format=%s"])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The values of trailer `key` over the history, oldest commit first (commits without it skipped).
    pub fn trailers(&self, key: &str) -> Vec<String> {
        self.git(&[
            "log",
            "--reverse",
            &format!("--format=%(trailers:key={key},valueonly)"),
        ])
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect()
    }

    /// Fast-forwards to the remote (for polling one clone instead of cloning again).
    pub fn sync(&self) {
        self.git(&["pull", "-q", "--ff-only"]);
    }

    /// Commits what is staged with the next tick of the world's clock; returns the commit.
    pub fn commit(&self, message: &str) -> String {
        let tick = self.clock.get() + 60;
        self.clock.set(tick);
        let date = format!("{tick} +0000");
        let mut cmd = git_command(&self.home, &self.dir);
        cmd.args(["commit", "-q", "--allow-empty", "-m", message])
            .env("GIT_AUTHOR_DATE", &date)
            .env("GIT_COMMITTER_DATE", &date);
        checked(cmd);
        self.git(&["rev-parse", "HEAD"])
    }

    pub fn push(&self) {
        self.git(&["push", "-q", "origin", "HEAD:main"]);
    }

    /// Writes `requests/<name>` in its own commit and pushes; returns the commit that added it.
    pub fn submit(&self, name: &str, bytes: impl AsRef<[u8]>) -> String {
        self.submit_many(&[(name, bytes.as_ref())])
    }

    /// Writes several requests, commits them together and pushes; returns the commit.
    pub fn submit_many(&self, files: &[(&str, &[u8])]) -> String {
        self.sync();
        for (name, bytes) in files {
            let rel = format!("requests/{name}");
            self.write(&rel, bytes);
            self.git(&["add", "--", &rel]);
        }
        let names: Vec<&str> = files.iter().map(|(name, _)| *name).collect();
        let oid = self.commit(&format!("request {}", names.join(", ")));
        self.push();
        oid
    }

    /// Commits `requests/<name>` as a symlink to `target` and pushes; returns the commit.
    pub fn submit_symlink(&self, name: &str, target: &str) -> String {
        self.sync();
        let rel = format!("requests/{name}");
        std::os::unix::fs::symlink(target, self.path(&rel)).expect("create symlink");
        self.git(&["add", "--", &rel]);
        let oid = self.commit(&format!("request {name} (a symlink)"));
        self.push();
        oid
    }
}

/// The index with `markers/` among the `writable:` paths of every kind that names neither
/// `writable:` nor `isolation:`, so that handlers isolated in a view of their own can leave markers
/// there. An index that is not a mapping of kinds (tests of broken indexes) is left as written.
pub fn markers_writable(index: &str, markers: &Path) -> String {
    let Ok(serde_yaml::Value::Mapping(mut kinds)) = serde_yaml::from_str(index) else {
        return index.to_owned();
    };
    let markers = markers.to_str().expect("utf-8 tempdir").to_owned();
    for (_, kind) in kinds.iter_mut() {
        if let serde_yaml::Value::Mapping(fields) = kind
            && !fields.contains_key("writable")
            && !fields.contains_key("isolation")
        {
            fields.insert(
                "writable".into(),
                serde_yaml::Value::Sequence(vec![markers.clone().into()]),
            );
        }
    }
    serde_yaml::to_string(&kinds).expect("a mapping serialises")
}
