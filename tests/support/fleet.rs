//! Several dispatchers on one remote. A `Member` is one `git-dispatch run` in serve mode with its own
//! `--dispatcher-id`, workdir and lock dir (so that only the claims through the remote can keep two
//! of them from running one resource at once), started with `GD_TEST_HOST=host-<id>` in its
//! environment for its handlers (a kind passes it through with `env: [GD_TEST_HOST]`); it can be
//! killed and started again on the same workdir. `Runs` is the handler every member runs and what it
//! leaves: `ID PID HOST START_NS` in `markers/starts` when it starts and `ID PID HOST START_NS
//! END_NS` in `markers/runs` when it ends. `recorded_ids` reads the outcomes on the remote.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::checkout::Checkout;
use super::run::{Background, RunOutput};
use super::wait::wait_until;
use super::world::World;

/// The variable that tells a handler which "host" runs it.
pub const HOST_VAR: &str = "GD_TEST_HOST";

/// Nanoseconds since the Unix epoch, as `date +%s%N` prints them.
pub fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after the epoch")
        .as_nanos()
}

/// One dispatcher of the fleet: `run --remote URL --workdir ROOT/work-ID --lock-dir ROOT/locks-ID
/// --dispatcher-id ID --poll-interval 200ms EXTRA...`, host `host-ID`.
pub struct Member {
    pub id: String,
    pub work: PathBuf,
    locks: PathBuf,
    url: String,
    extra: Vec<String>,
    process: Option<Background>,
}

impl Member {
    /// Starts it.
    pub fn start(world: &World, url: &str, id: &str, extra: &[&str]) -> Member {
        Member::start_as(world, url, id, id, extra)
    }

    /// Starts it with `--dispatcher-id ID` on the workdir and lock dir of `name` (`work-NAME`), so
    /// that two members may share one id.
    pub fn start_as(world: &World, url: &str, name: &str, id: &str, extra: &[&str]) -> Member {
        let mut member = Member {
            id: id.to_owned(),
            work: world.root.join(format!("work-{name}")),
            locks: world.root.join(format!("locks-{name}")),
            url: url.to_owned(),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            process: None,
        };
        member.restart(world);
        member
    }

    /// The host name its handlers see.
    pub fn host(&self) -> String {
        format!("host-{}", self.id)
    }

    /// The command that starts it, on the same workdir every time.
    pub fn command(&self, world: &World) -> Command {
        fs::create_dir_all(&self.locks).expect("create the lock dir");
        let mut cmd = world.dispatcher();
        cmd.args(["run", "--remote", &self.url, "--workdir"])
            .arg(&self.work)
            .arg("--lock-dir")
            .arg(&self.locks)
            .args(["--dispatcher-id", &self.id, "--poll-interval", "200ms"])
            .args(&self.extra)
            .env(HOST_VAR, self.host());
        cmd
    }

    /// Starts it again (after `kill`), same id, workdir and options.
    pub fn restart(&mut self, world: &World) {
        assert!(self.process.is_none(), "{} is still running", self.id);
        self.process = Some(world.spawn(self.command(world)));
    }

    /// SIGKILL, then reaps it.
    pub fn kill(&mut self) -> RunOutput {
        let process = self.process.take().expect("running");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(process.pid()).expect("pid fits"));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        process.wait(Duration::from_secs(10))
    }

    /// SIGTERM, then waits (within `timeout`) for it to finish what it runs and exit.
    pub fn stop(&mut self, timeout: Duration) -> RunOutput {
        let process = self.process.take().expect("running");
        process.terminate();
        process.wait(timeout)
    }

    /// Waits until its output holds `needle`; `false` when it exited or `timeout` passed first.
    pub fn wait_for_output(&mut self, needle: &str, timeout: Duration) -> bool {
        self.process
            .as_mut()
            .is_some_and(|p| p.wait_for_output(needle, timeout))
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Background::pid)
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        self.process.as_mut().is_some_and(Background::running)
    }

    /// Its output so far, for failure messages.
    pub fn output_so_far(&self) -> String {
        self.process.as_ref().map_or_else(
            || format!("{}: not running", self.id),
            Background::output_so_far,
        )
    }
}

/// Every member's output so far, for failure messages.
pub fn outputs(fleet: &[Member]) -> String {
    fleet
        .iter()
        .map(Member::output_so_far)
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// One handler run, as the handler wrote it: `end` is `None` when it never wrote its end (killed).
#[derive(Clone, Debug)]
pub struct Run {
    pub id: String,
    pub pid: String,
    pub host: String,
    pub start: u128,
    pub end: Option<u128>,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let end = self
            .end
            .map_or_else(|| "no end".to_owned(), |end| format!("end {end}"));
        write!(
            f,
            "`{}` (pid {} on {}, start {}, {end})",
            self.id, self.pid, self.host, self.start
        )
    }
}

/// The shared files the handler of `Runs::handler` appends to (in the world's `markers/`, which any
/// handler's user may write).
pub struct Runs {
    starts: PathBuf,
    ends: PathBuf,
}

impl Runs {
    pub fn new(world: &World) -> Runs {
        Runs {
            starts: world.markers.join("starts"),
            ends: world.markers.join("runs"),
        }
    }

    /// A handler that notes its start, sleeps `seconds` (e.g. `0.1`) and notes its end. One `echo`
    /// of less than a pipe's buffer to a file opened for appending is one write: lines never mix.
    pub fn handler(&self, seconds: &str) -> String {
        format!(
            "#!/bin/sh\nstart=$(date +%s%N)\necho \"$DISPATCH_ID $$ ${HOST_VAR} $start\" >> {starts}\n\
             sleep {seconds}\necho \"$DISPATCH_ID $$ ${HOST_VAR} $start $(date +%s%N)\" >> {ends}\n",
            starts = self.starts.display(),
            ends = self.ends.display(),
        )
    }

    /// How many handlers started so far.
    pub fn started(&self) -> usize {
        fs::read_to_string(&self.starts)
            .unwrap_or_default()
            .lines()
            .count()
    }

    /// Every run that started, with its end when it wrote one.
    pub fn read(&self) -> Vec<Run> {
        let ends: HashMap<(String, String), u128> = fs::read_to_string(&self.ends)
            .unwrap_or_default()
            .lines()
            .map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                assert_eq!(f.len(), 5, "a torn line in `runs`: {line:?}");
                let end = f[4].parse().expect("END_NS");
                ((f[0].to_owned(), f[1].to_owned()), end)
            })
            .collect();
        fs::read_to_string(&self.starts)
            .unwrap_or_default()
            .lines()
            .map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                assert_eq!(f.len(), 4, "a torn line in `starts`: {line:?}");
                Run {
                    id: f[0].to_owned(),
                    pid: f[1].to_owned(),
                    host: f[2].to_owned(),
                    start: f[3].parse().expect("START_NS"),
                    end: ends.get(&(f[0].to_owned(), f[1].to_owned())).copied(),
                }
            })
            .collect()
    }
}

/// How many times each id occurs.
pub fn tally<'a>(ids: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for id in ids {
        *counts.entry(id.to_owned()).or_insert(0) += 1;
    }
    counts
}

/// Panics naming the first two runs of one resource whose times overlap. `resource_of` maps an id to
/// its resource; `end_of` gives the end of a run that wrote none (when it was killed at the latest).
#[track_caller]
pub fn assert_no_overlap(
    runs: &[Run],
    resource_of: &HashMap<String, String>,
    end_of: impl Fn(&Run) -> u128,
) {
    let mut by_resource: BTreeMap<&str, Vec<(u128, u128, &Run)>> = BTreeMap::new();
    for run in runs {
        let resource = resource_of
            .get(&run.id)
            .unwrap_or_else(|| panic!("a run of an unknown id: {run:?}"));
        let end = run.end.unwrap_or_else(|| end_of(run));
        by_resource
            .entry(resource)
            .or_default()
            .push((run.start, end, run));
    }
    for (resource, mut spans) in by_resource {
        spans.sort_by_key(|s| s.0);
        for pair in spans.windows(2) {
            assert!(
                pair[0].1 <= pair[1].0,
                "two runs of resource `{resource}` overlap by {} ms: {} and {}",
                (pair[0].1 - pair[1].0) / 1_000_000,
                pair[0].2,
                pair[1].2
            );
        }
    }
}

/// The `Dispatch-Id` trailers of the remote's branch, oldest first, as `clone` sees it after a fetch.
pub fn recorded_ids(clone: &Checkout) -> Vec<String> {
    clone.git(&["fetch", "-q", "origin"]);
    clone
        .git(&[
            "log",
            "--reverse",
            "origin/main",
            "--format=%(trailers:key=Dispatch-Id,valueonly)",
        ])
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Waits until the remote records an outcome for `n` distinct ids (looking every 300 ms).
pub fn wait_for_outcomes(clone: &Checkout, n: usize, timeout: Duration) -> bool {
    let mut last: Option<Instant> = None;
    wait_until(timeout, || {
        if last.is_some_and(|t| t.elapsed() < Duration::from_millis(300)) {
            return false;
        }
        last = Some(Instant::now());
        tally(recorded_ids(clone).iter().map(String::as_str)).len() >= n
    })
}
