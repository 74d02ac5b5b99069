//! The harness: a `World` is one temporary directory holding a bare remote (`remote.git`, branch `main`), a
//! submitter's clone (`submit/`) seeded with an inbox layout, and the paths of the dispatcher's workdir and
//! lock dir. Everything is driven through the real `git` CLI and the real `git-dispatch` binary, and every
//! assertion is made on a fresh clone of the remote.
//!
//! Invariants: every child process runs with a cleared environment (no user or system Git config, a
//! private `HOME`, fixed identities and commit dates), every wait has a deadline, and no two tests share
//! a path (each world lives in its own tempdir).

use std::cell::Cell;
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod servers;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_git-dispatch");

/// Commit time of the seed commit (2023-11-14T22:13:20Z). Every commit the harness makes is one minute
/// after the previous one, so arrival order is the order of `submit` calls.
pub const EPOCH: i64 = 1_700_000_000;

/// How long one `run --until-empty` may take before the test gives up and kills it.
pub const RUN_DEADLINE: Duration = Duration::from_secs(40);

/// How often `wait_until` re-checks its condition.
const POLL: Duration = Duration::from_millis(20);

/// The envelope schema every request must pass (what `init` would scaffold).
pub const REQUEST_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "git-dispatch request",
  "type": "object",
  "required": ["kind"],
  "additionalProperties": false,
  "properties": {
    "kind": { "type": "string", "minLength": 1 },
    "id": { "type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$" },
    "resource": { "type": "string", "minLength": 1 },
    "params": { "type": "object" },
    "timeout": { "type": "string" }
  }
}
"#;

/// The params schema of the `count` kind: `count` is a required integer.
pub const COUNT_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["count"],
  "additionalProperties": false,
  "properties": { "count": { "type": "integer" } }
}
"#;

/// The seeded index: `echo` (no params schema) and `count` (params schema `count.schema.json`).
/// Tests that add kinds append to it: `format!("{DEFAULT_INDEX}new:\n  handler: new.sh\n")`.
pub const DEFAULT_INDEX: &str = "\
echo:
  handler: echo.sh
  timeout: 30s
  grace: 1s
count:
  handler: count.sh
  schema: count.schema.json
  timeout: 30s
  grace: 1s
";

pub const ECHO_HANDLER: &str = "#!/bin/sh\necho \"echo handler ran for $DISPATCH_ID\"\n";
pub const COUNT_HANDLER: &str = "#!/bin/sh\necho \"count handler params: $DISPATCH_PARAMS\"\n";

/// The `PATH` every child gets: the test runner's own.
fn path_var() -> OsString {
    std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into())
}

/// A `git` command with a hermetic environment: no user or system config, a private `HOME`, fixed
/// identities and a fixed date (commits override the date to advance the clock).
pub fn git_command(home: &Path, cwd: &Path) -> Command {
    let mut cmd = Command::new("git");
    let date = format!("{EPOCH} +0000");
    cmd.current_dir(cwd)
        .env_clear()
        .env("PATH", path_var())
        .env("HOME", home)
        .env("LC_ALL", "C")
        .env("TZ", "UTC")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_SYSTEM", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", "Sam Submitter")
        .env("GIT_AUTHOR_EMAIL", "sam@example.test")
        .env("GIT_AUTHOR_DATE", &date)
        .env("GIT_COMMITTER_NAME", "Sam Submitter")
        .env("GIT_COMMITTER_EMAIL", "sam@example.test")
        .env("GIT_COMMITTER_DATE", &date);
    cmd
}

/// Runs a command to completion and returns its trimmed stdout; panics with its stderr on failure.
fn checked(mut cmd: Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
}

/// Polls `cond` every 20 ms until it holds (true) or `timeout` passes (false). The only sleep in the suite.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(POLL);
    }
}

/// A TCP port that was free a moment ago (bind to port 0, read it, release it).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener
        .local_addr()
        .expect("bound socket has an address")
        .port()
}

/// RFC 3339 (UTC, whole seconds) of a Unix time, to compare with the dispatcher's timestamps.
pub fn utc_rfc3339(secs: i64) -> String {
    // Howard Hinnant's civil_from_days.
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A sortable key for an RFC 3339 timestamp of one dispatcher (same offset): the date-time to the second,
/// then the fraction in nanoseconds, so `12:00:01Z` sorts before `12:00:01.5Z` whatever the precision.
pub fn instant_key(rfc3339: &str) -> (String, u32) {
    let (seconds, rest) = rfc3339.split_at_checked(19).unwrap_or((rfc3339, ""));
    let digits: String = rest
        .strip_prefix('.')
        .unwrap_or("")
        .chars()
        .take_while(char::is_ascii_digit)
        .take(9)
        .collect();
    let nanos = format!("{digits:0<9}").parse().unwrap_or(0);
    (seconds.to_owned(), nanos)
}

/// `a/b/c`: the shard folders of an outcome, as the README documents them: the first three hex digits
/// of the SHA-256 of the key, one folder each. Computed here independently of the dispatcher.
pub fn shard(key: &str) -> String {
    let hex = sha256_hex(key.as_bytes());
    let digits: Vec<String> = hex.chars().take(3).map(String::from).collect();
    digits.join("/")
}

/// `processed/a/b/c/KEY.EXT`: `EXT` is `yml` or `status.json`.
pub fn processed(key: &str, ext: &str) -> String {
    format!("processed/{}/{key}.{ext}", shard(key))
}

/// `logs/a/b/c/KEY.log` for attempt 1, `KEY@N.log` for attempt N.
pub fn log_file(key: &str, attempt: u32) -> String {
    if attempt <= 1 {
        format!("logs/{}/{key}.log", shard(key))
    } else {
        format!("logs/{}/{key}@{attempt}.log", shard(key))
    }
}

/// Lowercase hex SHA-256 (sha2 is a normal dependency of the crate, so tests may use it).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    use std::fmt::Write as _;
    Sha256::digest(bytes)
        .iter()
        .fold(String::with_capacity(64), |mut hex, b| {
            // Writing to a String cannot fail.
            let _ = write!(hex, "{b:02x}");
            hex
        })
}

/// The text between a line `begin` and a line `end` in `log` (exclusive, with its trailing newline).
pub fn between<'a>(log: &'a str, begin: &str, end: &str) -> &'a str {
    let start = log
        .find(&format!("{begin}\n"))
        .unwrap_or_else(|| panic!("no `{begin}` line in log:\n{log}"))
        + begin.len()
        + 1;
    let len = log[start..]
        .find(&format!("{end}\n"))
        .unwrap_or_else(|| panic!("no `{end}` line after `{begin}` in log:\n{log}"));
    &log[start..start + len]
}

/// The value of the first line `KEY=value` in `log`.
pub fn line_value<'a>(log: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key}=");
    log.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no `{key}=` line in log:\n{log}"))
}

/// Whether this test process runs with effective uid 0 (the `Uid:` line of `/proc/self/status`: real,
/// effective, saved, filesystem). The sandbox only switches users when the dispatcher is root.
pub fn running_as_root() -> bool {
    let status = fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .is_some_and(|euid| euid == "0")
}

/// For a test that means nothing unless the dispatcher runs as root: true when it may go on; otherwise
/// says why it stops and returns false. (`sandbox_tests_ran_as_root_in_ci` keeps such skips out of CI.)
#[must_use]
pub fn root_or_skip(test: &str) -> bool {
    let root = running_as_root();
    if !root {
        eprintln!(
            "skipped `{test}`: it needs root (the dispatcher only switches handlers to another user when it \
             runs as root); run the suite as root to exercise it"
        );
    }
    root
}

/// The trimmed output of `id ARGS...` (e.g. `["-u", "nobody"]`), to compare with what a handler prints.
pub fn id(args: &[&str]) -> String {
    let mut cmd = Command::new("id");
    cmd.env_clear().env("PATH", path_var()).args(args);
    checked(cmd)
}

/// Writes `bytes` to `path`, creating parent directories.
fn write_file(path: &Path, bytes: &[u8]) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("create parent directories");
    }
    fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// Collects the seed inbox: `World::new()` starts from the default layout, the builder methods add to it,
/// `build()` creates the remote and pushes the seed commit.
#[must_use = "a WorldBuilder does nothing until `.build()`"]
pub struct WorldBuilder {
    index: String,
    handlers: Vec<(String, String)>,
    schemas: Vec<(String, String)>,
}

impl WorldBuilder {
    /// Adds (or replaces) the executable `handlers/<name>`.
    pub fn handler(mut self, name: &str, script: &str) -> Self {
        self.handlers.retain(|(n, _)| n != name);
        self.handlers.push((name.to_owned(), script.to_owned()));
        self
    }

    /// Replaces `handlers/index.yml`.
    pub fn index(mut self, yaml: &str) -> Self {
        yaml.clone_into(&mut self.index);
        self
    }

    /// Adds (or replaces) `schemas/<name>`.
    pub fn schema(mut self, name: &str, json: &str) -> Self {
        self.schemas.retain(|(n, _)| n != name);
        self.schemas.push((name.to_owned(), json.to_owned()));
        self
    }

    /// Creates the tempdir, the bare remote and the submitter's clone, and pushes the seed commit.
    pub fn build(self) -> World {
        let tmp = tempfile::Builder::new()
            .prefix("git-dispatch-test-")
            .tempdir()
            .expect("create tempdir");
        let root = tmp.path().to_path_buf();
        // The handler may run as an unprivileged user: it must be able to reach `markers/`.
        chmod(&root, 0o755);
        let home = root.join("home");
        let markers = root.join("markers");
        let locks = root.join("locks");
        let outputs = root.join("outputs");
        for dir in [&home, &markers, &locks, &outputs] {
            fs::create_dir(dir).expect("create world directory");
        }
        chmod(&markers, 0o1777);
        chmod(&locks, 0o755);

        let remote = root.join("remote.git");
        let mut init = git_command(&home, &root);
        init.args(["init", "-q", "--bare", "-b", "main"])
            .arg(&remote);
        checked(init);

        let submit = root.join("submit");
        let mut init = git_command(&home, &root);
        init.args(["init", "-q", "-b", "main"]).arg(&submit);
        checked(init);

        let clock = Rc::new(Cell::new(EPOCH));
        let submitter = Checkout {
            dir: submit,
            home: home.clone(),
            clock: Rc::clone(&clock),
        };
        submitter.git(&[
            "remote",
            "add",
            "origin",
            remote.to_str().expect("utf-8 tempdir"),
        ]);
        submitter.write("schemas/request.schema.json", REQUEST_SCHEMA);
        submitter.write("handlers/index.yml", &self.index);
        for (name, script) in &self.handlers {
            submitter.write_executable(&format!("handlers/{name}"), script);
        }
        for (name, json) in &self.schemas {
            submitter.write(&format!("schemas/{name}"), json);
        }
        for keep in ["requests/.gitkeep", "processed/.gitkeep", "logs/.gitkeep"] {
            submitter.write(keep, "");
        }
        submitter.git(&["add", "-A"]);
        submitter.commit("seed the inbox");
        submitter.git(&["push", "-q", "-u", "origin", "main"]);

        World {
            work: root.join("work"),
            remote,
            home,
            markers,
            locks,
            outputs,
            submitter,
            clock,
            counter: Cell::new(0),
            root,
            _tmp: tmp,
        }
    }
}

/// One test's universe. Dropping it removes everything (children are killed by their own guards).
pub struct World {
    pub root: PathBuf,
    /// `HOME` of every child process: empty, so no user config leaks in.
    pub home: PathBuf,
    /// The bare remote, branch `main`.
    pub remote: PathBuf,
    /// The dispatcher's `--workdir` (not created: the dispatcher creates it).
    pub work: PathBuf,
    /// The dispatcher's `--lock-dir`.
    pub locks: PathBuf,
    /// A world-writable directory (mode 1777) for handlers to leave markers the test waits for.
    pub markers: PathBuf,
    /// Where the stdout/stderr of each dispatcher process go, one numbered pair per process.
    outputs: PathBuf,
    /// The submitter's clone of the remote (`submit/`).
    pub submitter: Checkout,
    /// The commit clock shared by every checkout of this world; advanced by one minute per commit.
    clock: Rc<Cell<i64>>,
    /// Numbers fresh clones and output files so no two share a path.
    counter: Cell<u32>,
    _tmp: tempfile::TempDir,
}

impl World {
    /// The default inbox: `echo` and `count` kinds, the envelope schema, `.gitkeep`s. Returns the builder
    /// (named `World::new` so a test reads `World::new().handler(..).build()`).
    #[allow(clippy::new_ret_no_self)]
    pub fn new() -> WorldBuilder {
        WorldBuilder {
            index: DEFAULT_INDEX.to_owned(),
            handlers: vec![
                ("echo.sh".to_owned(), ECHO_HANDLER.to_owned()),
                ("count.sh".to_owned(), COUNT_HANDLER.to_owned()),
            ],
            schemas: vec![("count.schema.json".to_owned(), COUNT_SCHEMA.to_owned())],
        }
    }

    fn next(&self) -> u32 {
        let n = self.counter.get() + 1;
        self.counter.set(n);
        n
    }

    /// The remote's path as the `--remote` argument.
    pub fn remote_arg(&self) -> &str {
        self.remote.to_str().expect("tempdir paths are UTF-8")
    }

    /// Writes the executable `handlers/<name>` in the submitter's clone (not committed: see `publish`).
    pub fn handler(&self, name: &str, script: &str) {
        self.submitter
            .write_executable(&format!("handlers/{name}"), script);
    }

    /// Replaces `handlers/index.yml` in the submitter's clone (not committed: see `publish`).
    pub fn index(&self, yaml: &str) {
        self.submitter.write("handlers/index.yml", yaml);
    }

    /// Writes `schemas/<name>` in the submitter's clone (not committed: see `publish`).
    pub fn schema(&self, name: &str, json: &str) {
        self.submitter.write(&format!("schemas/{name}"), json);
    }

    /// Commits everything written in the submitter's clone and pushes it; returns the commit.
    pub fn publish(&self, message: &str) -> String {
        self.submitter.sync();
        self.submitter.git(&["add", "-A"]);
        let oid = self.submitter.commit(message);
        self.submitter.push();
        oid
    }

    /// Submits `requests/<name>` in its own commit and pushes; returns the commit that added it.
    pub fn submit(&self, name: &str, bytes: impl AsRef<[u8]>) -> String {
        self.submitter.submit(name, bytes)
    }

    /// Submits several requests in one commit (same arrival time: ties are broken by name).
    pub fn submit_many(&self, files: &[(&str, &[u8])]) -> String {
        self.submitter.submit_many(files)
    }

    /// Commits `requests/<name>` as a symlink to `target` and pushes; returns the commit.
    pub fn submit_symlink(&self, name: &str, target: &str) -> String {
        self.submitter.submit_symlink(name, target)
    }

    /// `git-dispatch` with a cleared environment (`PATH`, `HOME` only), run from the world's root.
    pub fn dispatcher(&self) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.current_dir(&self.root)
            .env_clear()
            .env("PATH", path_var())
            .env("HOME", &self.home);
        cmd
    }

    /// `git-dispatch run --remote REMOTE --workdir WORK --lock-dir LOCKS EXTRA...` (no mode flag: add
    /// `--once`/`--until-empty` in `extra`, or none for the polling loop).
    pub fn run_command(&self, remote: &str, extra: &[&str]) -> Command {
        let mut cmd = self.dispatcher();
        cmd.args(["run", "--remote", remote, "--workdir"])
            .arg(&self.work)
            .arg("--lock-dir")
            .arg(&self.locks)
            .args(extra);
        cmd
    }

    /// Drains the inbox of the local remote: `run ... --until-empty EXTRA...`, to completion.
    pub fn run(&self, extra: &[&str]) -> RunOutput {
        self.run_via(self.remote_arg(), extra)
    }

    /// Drains the inbox of the remote at `url` (e.g. a `GitDaemon`): `run ... --until-empty EXTRA...`.
    pub fn run_via(&self, url: &str, extra: &[&str]) -> RunOutput {
        let mut cmd = self.run_command(url, &["--until-empty"]);
        cmd.args(extra);
        self.output(cmd)
    }

    /// Runs `cmd` to completion (within `RUN_DEADLINE`).
    pub fn output(&self, cmd: Command) -> RunOutput {
        self.spawn(cmd).wait(RUN_DEADLINE)
    }

    /// Starts `cmd` in the background, its stdout/stderr going to files of this world.
    pub fn spawn(&self, mut cmd: Command) -> Background {
        let n = self.next();
        let stdout = self.outputs.join(format!("{n}.stdout"));
        let stderr = self.outputs.join(format!("{n}.stderr"));
        cmd.stdin(Stdio::null())
            .stdout(fs::File::create(&stdout).expect("create stdout file"))
            .stderr(fs::File::create(&stderr).expect("create stderr file"));
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        Background {
            child: Some(child),
            command: format!("{cmd:?}"),
            stdout,
            stderr,
            started: Instant::now(),
        }
    }

    /// A brand-new clone of the local remote.
    pub fn fresh_clone(&self) -> Checkout {
        self.clone_from(self.remote_arg())
    }

    /// A brand-new clone of `url` (e.g. the `GitDaemon`'s), in a new directory.
    pub fn clone_from(&self, url: &str) -> Checkout {
        let dir = self.root.join(format!("clone-{}", self.next()));
        let mut cmd = git_command(&self.home, &self.root);
        cmd.args(["clone", "-q", url]).arg(&dir);
        checked(cmd);
        Checkout {
            dir,
            home: self.home.clone(),
            clock: Rc::clone(&self.clock),
        }
    }
}

/// A working clone of the remote: the submitter's, or a fresh one to assert on.
pub struct Checkout {
    pub dir: PathBuf,
    home: PathBuf,
    clock: Rc<Cell<i64>>,
}

impl Checkout {
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
    pub fn write(&self, rel: &str, bytes: impl AsRef<[u8]>) {
        write_file(&self.path(rel), bytes.as_ref());
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

/// What a finished dispatcher process left: exit code (`None` if killed by a signal), output, time.
pub struct RunOutput {
    pub code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl RunOutput {
    /// Panics, showing the output, unless the process exited with `code`.
    #[track_caller]
    pub fn assert_exit(&self, code: i32) -> &Self {
        assert_eq!(self.code, Some(code), "unexpected exit status\n{self}");
        self
    }

    /// stdout and stderr together, for messages that may go to either.
    pub fn all_output(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl fmt::Display for RunOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit code: {:?}, signal: {:?}, after {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.signal, self.elapsed, self.stdout, self.stderr
        )
    }
}

/// A process started by `World::spawn`; killed (SIGKILL) on drop if the test did not reap it.
pub struct Background {
    /// `None` once reaped.
    child: Option<Child>,
    command: String,
    stdout: PathBuf,
    stderr: PathBuf,
    started: Instant,
}

impl Background {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("not yet reaped").id()
    }

    /// Sends SIGTERM (through `kill -TERM`, as an operator would).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .env_clear()
            .env("PATH", path_var())
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("spawn kill");
        assert!(status.success(), "kill -TERM {} failed", self.pid());
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        let child = self.child.as_mut().expect("not yet reaped");
        child.try_wait().expect("try_wait").is_none()
    }

    /// Waits until its output holds `needle`; `false` when it exited or `timeout` passed first.
    pub fn wait_for_output(&mut self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || {
            self.output_so_far().contains(needle) || !self.running()
        }) && self.running()
            && self.output_so_far().contains(needle)
    }

    /// Its output so far, for failure messages.
    pub fn output_so_far(&self) -> String {
        format!(
            "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command,
            fs::read_to_string(&self.stdout).unwrap_or_default(),
            fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }

    /// Waits for exit within `timeout`; on timeout kills it and panics with its output.
    pub fn wait(mut self, timeout: Duration) -> RunOutput {
        let mut child = self.child.take().expect("not yet reaped");
        let mut status = None;
        let exited = wait_until(timeout, || {
            status = child.try_wait().expect("try_wait");
            status.is_some()
        });
        if !exited {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "still running after {timeout:?}, killed: {}",
                self.output_so_far()
            );
        }
        let status = status.expect("exited");
        RunOutput {
            code: status.code(),
            signal: std::os::unix::process::ExitStatusExt::signal(&status),
            stdout: fs::read_to_string(&self.stdout).unwrap_or_default(),
            stderr: fs::read_to_string(&self.stderr).unwrap_or_default(),
            elapsed: self.started.elapsed(),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `git daemon` serving the world's root on 127.0.0.1 with `receive-pack` enabled, so pushes go through a
/// real server (its atomic ref update rejects a non-fast-forward). Killed on drop.
pub struct GitDaemon {
    child: Child,
    port: u16,
}

impl GitDaemon {
    pub fn serve(world: &World) -> GitDaemon {
        // The port may be taken between `free_port` and the daemon's bind: try a few.
        for attempt in 1..=5 {
            let port = free_port();
            let log = fs::File::create(world.root.join(format!("daemon-{attempt}.log")))
                .expect("create daemon log");
            let mut cmd = git_command(&world.home, &world.root);
            cmd.arg("daemon")
                .args(["--reuseaddr", "--export-all", "--enable=receive-pack"])
                .arg("--informative-errors")
                .arg(format!("--base-path={}", world.root.display()))
                .arg("--listen=127.0.0.1")
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                // `git daemon` starts the real `git-daemon` as a child: a group of their own lets
                // drop kill both, so no daemon outlives its test.
                .process_group(0);
            let mut child = cmd.spawn().expect("spawn git daemon");
            let mut exited = false;
            let ready = wait_until(Duration::from_secs(10), || {
                exited = child.try_wait().expect("try_wait").is_some();
                exited || TcpStream::connect(("127.0.0.1", port)).is_ok()
            });
            if ready && !exited {
                return GitDaemon { child, port };
            }
            kill_group(&mut child);
        }
        panic!(
            "git daemon did not start; see {}/daemon-*.log",
            world.root.display()
        );
    }

    /// `git://127.0.0.1:<port>/remote.git`
    pub fn url(&self) -> String {
        format!("git://127.0.0.1:{}/remote.git", self.port)
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

/// SIGKILL to the process group `child` leads, then reap it.
fn kill_group(child: &mut Child) {
    let pgid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pids fit in i32"));
    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
}

#[test]
fn harness_serves_the_remote_over_git_daemon_with_ordered_commit_times() {
    let world = World::new().build();
    let daemon = GitDaemon::serve(&world);
    let other = world.clone_from(&daemon.url());
    other.submit("first.yml", "kind: echo\n");
    other.submit_symlink("link.yml", "/etc/passwd");

    let clone = world.fresh_clone();
    assert_eq!(clone.ls("requests"), [".gitkeep", "first.yml", "link.yml"]);
    let mode = clone.git(&["ls-tree", "HEAD", "requests/link.yml"]);
    assert!(
        mode.starts_with("120000"),
        "not committed as a symlink: {mode}"
    );
    let times: Vec<i64> = clone
        .git(&["log", "--reverse", "--format=%ct"])
        .lines()
        .map(|t| t.parse().expect("commit time"))
        .collect();
    assert_eq!(times, [EPOCH + 60, EPOCH + 120, EPOCH + 180]);
}

#[test]
fn harness_formats_unix_times_as_rfc3339_utc() {
    assert_eq!(utc_rfc3339(EPOCH), "2023-11-14T22:13:20Z");
    assert_eq!(utc_rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(utc_rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    assert!(instant_key("2026-01-01T12:00:01Z") < instant_key("2026-01-01T12:00:01.5Z"));
    assert!(instant_key("2026-01-01T12:00:01.25+00:00") < instant_key("2026-01-01T12:00:01.3Z"));
}

/// Adds kinds to the seeded index (each `(kind, handler script, extra index lines)`), commits, pushes.
pub fn add_kinds(world: &World, kinds: &[(&str, &str, &str)]) {
    let mut index = DEFAULT_INDEX.to_owned();
    for (kind, script, extra) in kinds {
        world.handler(&format!("{kind}.sh"), script);
        index.push_str(&format!(
            "{kind}:\n  handler: {kind}.sh\n  timeout: 30s\n  grace: 1s\n{extra}"
        ));
    }
    world.index(&index);
    world.publish("add the kinds of this test");
}

/// `sleep` processes a run may leave behind, told apart by their argument: a whole number of seconds
/// (hours: never done by the time a test looks) with this test process's pid as the fraction, so
/// neither parallel tests nor another test run on the same host share it. Only live processes count
/// (zombies are dead). Dropping it SIGKILLs them, so a failing test does not leave them on the host.
pub struct Strays {
    /// `sleep SECONDS.PID`, as a handler script writes it.
    pub command: String,
    /// The same as `/proc/PID/cmdline` shows it.
    cmdline: Vec<u8>,
}

impl Strays {
    pub fn sleeping(seconds: u32) -> Self {
        let arg = format!("{seconds}.{}", std::process::id());
        Self {
            command: format!("sleep {arg}"),
            cmdline: format!("sleep\0{arg}\0").into_bytes(),
        }
    }

    pub fn pids(&self) -> Vec<i32> {
        let Ok(procs) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        procs
            .flatten()
            .filter_map(|entry| {
                let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
                let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
                // `pid (comm) state ...`: the last `)` ends comm.
                let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
                let alive = state != "Z" && state != "X";
                (alive && fs::read(entry.path().join("cmdline")).ok()? == self.cmdline)
                    .then_some(pid)
            })
            .collect()
    }

    /// Panics if one is still alive. The run has ended, so anything killed was killed before: SIGKILL
    /// is delivered at once, but a loaded machine may take a moment to schedule the exit, so half a
    /// second is allowed (against a sleep of hours).
    #[track_caller]
    pub fn assert_gone(&self, what: &str) {
        let mut left = Vec::new();
        let gone = wait_until(Duration::from_millis(500), || {
            left = self.pids();
            left.is_empty()
        });
        assert!(
            gone,
            "{what}: `{}` still runs after the dispatcher exited (pids {left:?})",
            self.command
        );
    }
}

impl Drop for Strays {
    fn drop(&mut self) {
        for pid in self.pids() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
