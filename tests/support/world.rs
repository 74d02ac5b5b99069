//! The `World` builder: one temporary directory holding a bare remote (`remote.git`, branch `main`), a
//! submitter's clone (`submit/`) seeded with an inbox layout (the envelope schema, the `echo` and
//! `count` kinds), and the paths of the dispatcher's workdir and lock dir; and the dispatcher run
//! against it. No two tests share a path: each world lives in its own tempdir, removed on drop.

use std::cell::Cell;
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::rc::Rc;

use super::checkout::{Checkout, chmod};
use super::git::{EPOCH, GitDaemon, git_command};
use super::run::{BIN, Background, RUN_DEADLINE, RunOutput, checked, path_var};

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
    "timeout": { "type": "string" },
    "not_before": { "type": "string", "format": "date-time" },
    "then": { "type": "array", "items": { "type": "object" } },
    "on_failure": { "type": "array", "items": { "type": "object" } }
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
        let submitter = Checkout::new(submit, home.clone(), Rc::clone(&clock));
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
    /// Installs `script` as the remote's pre-receive hook (run by `git daemon`'s receive-pack).
    pub fn pre_receive_hook(&self, script: &str) {
        use std::os::unix::fs::PermissionsExt;
        let hook = self.remote.join("hooks/pre-receive");
        std::fs::write(&hook, script).expect("write the hook");
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755))
            .expect("chmod the hook");
    }

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
    pub fn spawn(&self, cmd: Command) -> Background {
        let n = self.next();
        let stdout = self.outputs.join(format!("{n}.stdout"));
        let stderr = self.outputs.join(format!("{n}.stderr"));
        Background::start(cmd, stdout, stderr)
    }

    /// A brand-new clone of the local remote.
    pub fn fresh_clone(&self) -> Checkout {
        self.clone_from(self.remote_arg())
    }

    /// A brand-new clone of `url` (e.g. the `GitDaemon`'s), in a new directory. A path is cloned
    /// through `upload-pack` (`--no-local`), as a URL is: Git's local clone hard-links the remote's
    /// object files and dies ("hardlink different from source") when one of them is a temporary
    /// file that a push writes and renames meanwhile.
    pub fn clone_from(&self, url: &str) -> Checkout {
        let dir = self.root.join(format!("clone-{}", self.next()));
        let mut cmd = git_command(&self.home, &self.root);
        cmd.args(["clone", "-q", "--no-local", url]).arg(&dir);
        checked(cmd);
        Checkout::new(dir, self.home.clone(), Rc::clone(&self.clock))
    }
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

/// The dispatcher writes into a local remote's `objects/pack` while tests clone it: a clone that
/// hard-linked those files failed when one was renamed under it, so clones share no file with it.
#[test]
fn harness_clones_a_local_remote_without_sharing_its_object_files() {
    use std::os::unix::fs::MetadataExt;
    fn files(dir: &std::path::Path, into: &mut Vec<(u64, u64)>) {
        for entry in fs::read_dir(dir).expect("a readable folder").flatten() {
            let meta = entry.metadata().expect("metadata");
            match meta.is_dir() {
                true => files(&entry.path(), into),
                false => into.push((meta.dev(), meta.ino())),
            }
        }
    }
    let world = World::new().build();
    world.submit("first.yml", "kind: echo\n");
    let (mut remote, mut cloned) = (Vec::new(), Vec::new());
    files(&world.remote.join("objects"), &mut remote);
    let clone = world.fresh_clone();
    files(&clone.path(".git/objects"), &mut cloned);

    assert!(!remote.is_empty() && !cloned.is_empty());
    let shared: Vec<_> = cloned.iter().filter(|f| remote.contains(f)).collect();
    assert!(
        shared.is_empty(),
        "{} object files hard-linked",
        shared.len()
    );
}
