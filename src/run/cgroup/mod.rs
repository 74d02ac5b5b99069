//! A cgroup per run: `memory:` as a real memory limit (what the run's processes use, not the
//! address space they reserve), `pids:` and `cpu:`, and the run's peak memory, CPU time and
//! out-of-memory kills read back when it ends.
//!
//! The dispatcher makes a folder of its own, `git-dispatch-<pid>-<n>`, under its own cgroup (so
//! whatever bounds the dispatcher bounds its runs too), one `run-<n>` in it per run, and removes
//! both when done; folders of dispatchers that died are removed by the next one to start. The
//! child moves itself in before it executes the handler (`spawn`), so every process of the run is
//! counted from its first instruction.
//!
//! On v1 a run's folders are used again by a later run with the same limits, once they are empty
//! ([`RunCgroup`]'s drop): making and removing the two folders a run needs cost about 0.23 ms a run
//! against nothing for emptied ones (a loop of 2,000 `/bin/true` in a cgroup, on the benchmark
//! machine), a tenth of a trivial handler. A folder is used again only with no process left in it,
//! no out-of-memory kill, and at most [`LEFTOVER`] still charged to it (page cache its runs read or
//! wrote, which stays charged until reclaimed); its peak and CPU counters are reset first, so a
//! run's peak memory counts at most that much of earlier runs. v2 cannot reset `cpu.stat`, and
//! resets `memory.peak` only per open file on recent kernels: its runs get fresh folders.
//!
//! Two hierarchies are driven, behind this one interface: v1 ([`v1`]: a hierarchy per controller,
//! as on the hosts this was built on) and the unified v2 ([`v2`]: what current distributions mount
//! alone). A host that mounts both (hybrid) gets v1 when its `memory` controller is on a v1
//! hierarchy, v2 otherwise; `GIT_DISPATCH_CGROUP=v1|v2|none` chooses instead. Without either (or
//! as another user than root), [`Cgroups::open`] says why and runs fall back to rlimits.

mod v1;
mod v2;

use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The start of a dispatcher's folder in each controller.
const PREFIX: &str = "git-dispatch-";
/// The CFS period `cpu:` is a share of.
const CPU_PERIOD_US: u64 = 100_000;
/// The kernel's largest pid count (`PID_MAX_LIMIT`): `pids.max` takes no more, and no more are
/// possible anyway.
const PID_MAX_LIMIT: u64 = 4 * 1024 * 1024;
/// The most a run's folders may still have charged for a later run to use them (v1).
const LEFTOVER: u64 = 1 << 20;
/// The most emptied folders kept for later runs.
const SPARES: usize = 16;
/// Chooses the hierarchy: `v1`, `v2` or `none`.
pub(crate) const CHOICE_VAR: &str = "GIT_DISPATCH_CGROUP";

/// The dispatcher's folder (v2) or folders (v1, one per controller); removed on drop.
#[derive(Debug)]
pub(crate) struct Cgroups {
    /// Emptied run folders, with the limits they have (only v1's are kept); dropped before the tree
    /// they are in.
    spares: Mutex<Vec<(CgroupLimits, RunFolder)>>,
    tree: Tree,
    next: AtomicU64,
}

#[derive(Debug)]
enum Tree {
    V1(v1::Folders),
    V2(v2::Folder),
}

/// What a kind asks of its runs' cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct CgroupLimits {
    /// Bytes; swap is not allowed beyond it.
    pub memory: Option<u64>,
    pub pids: Option<u64>,
    /// Cores.
    pub cpu: Option<f64>,
}

/// One run's cgroup; on drop (the run's processes are gone by then) kept for a later run or
/// removed.
#[derive(Debug)]
pub(crate) struct RunCgroup<'a> {
    /// Taken only by the drop.
    folder: Option<RunFolder>,
    limits: CgroupLimits,
    /// Where it goes back to when it may be used again.
    spares: &'a Mutex<Vec<(CgroupLimits, RunFolder)>>,
}

/// A run's folder in each controller it joins; removed on drop.
#[derive(Debug)]
struct RunFolder {
    dirs: Vec<PathBuf>,
    /// `cgroup.procs` of each folder, opened for writing.
    procs: Vec<File>,
    usage: UsageFrom,
}

/// Where a run's usage is read.
#[derive(Debug)]
enum UsageFrom {
    V1 { memory: PathBuf, cpuacct: PathBuf },
    V2 { dir: PathBuf },
}

/// What a run used, read from its cgroup when it ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    pub peak_memory: Option<u64>,
    pub cpu: Option<Duration>,
    /// The kernel killed one of its processes for going over `memory:`.
    pub oom_killed: bool,
}

impl Cgroups {
    /// Finds the dispatcher's own cgroup and makes its folder there. An error says why runs get
    /// no cgroups here.
    pub(crate) fn open() -> Result<Self, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("the dispatcher is not root".to_owned());
        }
        static INSTANCES: AtomicU64 = AtomicU64::new(1);
        let instance = INSTANCES.fetch_add(1, Ordering::Relaxed);
        let own = fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("/proc/self/cgroup: {e}"))?;
        let mounts = fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
        let name = format!("{PREFIX}{}-{instance}", std::process::id());
        let choice = std::env::var(CHOICE_VAR).unwrap_or_default();
        let tree = match choice.as_str() {
            "v1" => Tree::V1(v1::Folders::open(&own, &mounts, &name)?),
            "v2" => Tree::V2(v2::Folder::open(&own, &mounts, &name)?),
            "none" => return Err(format!("{CHOICE_VAR}=none")),
            "" if v1::has_memory(&own, &mounts) => {
                Tree::V1(v1::Folders::open(&own, &mounts, &name)?)
            }
            "" => Tree::V2(
                v2::Folder::open(&own, &mounts, &name)
                    .map_err(|e| format!("no cgroup v1 `memory` controller, and cgroup v2: {e}"))?,
            ),
            other => return Err(format!("{CHOICE_VAR}={other}: expected v1, v2 or none")),
        };
        Ok(Self {
            spares: Mutex::new(Vec::new()),
            tree,
            next: AtomicU64::new(1),
        })
    }

    /// One line for the start and `doctor`.
    pub(crate) fn describe(&self) -> String {
        match &self.tree {
            Tree::V1(folders) => folders.describe(),
            Tree::V2(folder) => folder.describe(),
        }
    }

    /// Whether `memory:` is a cgroup limit here (otherwise it stays an address-space rlimit).
    pub(crate) fn limits_memory(&self) -> bool {
        match &self.tree {
            Tree::V1(_) => true,
            Tree::V2(folder) => folder.has("memory"),
        }
    }

    /// Whether `memory:`, `pids:` and `cpu:` are all cgroup limits here.
    pub(crate) fn complete(&self) -> bool {
        match &self.tree {
            Tree::V1(_) => true,
            Tree::V2(folder) => ["memory", "pids", "cpu"].iter().all(|c| folder.has(c)),
        }
    }

    /// A cgroup for one run, with `limits` applied: an emptied one with the same limits (its
    /// counters reset when it was given back), or a new one.
    pub(crate) fn run(&self, limits: &CgroupLimits) -> io::Result<RunCgroup<'_>> {
        let spare = {
            let mut spares = self.spares.lock().expect("no thread panics holding it");
            let at = spares.iter().position(|(l, _)| l == limits);
            at.map(|at| spares.swap_remove(at).1)
        };
        let folder = match spare {
            Some(folder) => folder,
            None => {
                let name = format!("run-{}", self.next.fetch_add(1, Ordering::Relaxed));
                match &self.tree {
                    Tree::V1(folders) => folders.run(&name, limits)?,
                    Tree::V2(folder) => folder.run(&name, limits)?,
                }
            }
        };
        Ok(RunCgroup {
            folder: Some(folder),
            limits: *limits,
            spares: &self.spares,
        })
    }
}

impl RunCgroup<'_> {
    /// The `cgroup.procs` files the child writes itself into.
    pub(crate) fn procs(&self) -> Vec<BorrowedFd<'_>> {
        self.folder().procs.iter().map(|f| f.as_fd()).collect()
    }

    /// What the run used; call once its processes are gone.
    pub(crate) fn usage(&self) -> Usage {
        match &self.folder().usage {
            UsageFrom::V1 { memory, cpuacct } => v1::usage(memory, cpuacct),
            UsageFrom::V2 { dir } => v2::usage(dir),
        }
    }

    fn folder(&self) -> &RunFolder {
        self.folder.as_ref().expect("taken only by the drop")
    }
}

/// An emptied folder is reset here, once its run is over and the next may have started, not when
/// a run takes it; one that cannot be reset is removed.
impl Drop for RunCgroup<'_> {
    fn drop(&mut self) {
        let Some(folder) = self
            .folder
            .take()
            .filter(RunFolder::emptied)
            .filter(RunFolder::reset)
        else {
            return;
        };
        let mut spares = self.spares.lock().expect("no thread panics holding it");
        if spares.len() < SPARES {
            spares.push((self.limits, folder));
        }
    }
}

impl RunFolder {
    /// Whether another run may use it (v1 only; see the module's doc).
    fn emptied(&self) -> bool {
        match &self.usage {
            UsageFrom::V1 { memory, .. } => v1::emptied(memory, LEFTOVER),
            UsageFrom::V2 { .. } => false,
        }
    }

    /// Resets its counters for another run; false if it cannot be.
    fn reset(&self) -> bool {
        match &self.usage {
            UsageFrom::V1 { memory, cpuacct } => v1::reset(memory, cpuacct).is_ok(),
            UsageFrom::V2 { .. } => false,
        }
    }

    /// Opens `cgroup.procs` of each of its folders.
    fn open_procs(&mut self) -> io::Result<()> {
        for dir in &self.dirs {
            let path = dir.join("cgroup.procs");
            self.procs.push(
                File::options()
                    .write(true)
                    .open(&path)
                    .map_err(named(&path))?,
            );
        }
        Ok(())
    }
}

impl Drop for RunFolder {
    fn drop(&mut self) {
        self.procs.clear();
        for dir in &self.dirs {
            let _ = fs::remove_dir(dir);
        }
    }
}

/// Where the unified (`cgroup2`) or the v1 hierarchy holding `controller` (`None`: the unified
/// one) is mounted, from `/proc/self/mountinfo`.
fn mount_point(mountinfo: &str, controller: Option<&str>) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // `id parent major:minor root mount-point options [optional...] - type source super-options`
        let (left, right) = line.split_once(" - ")?;
        let mut right = right.split_whitespace();
        let (fstype, _source, options) = (right.next()?, right.next()?, right.next()?);
        let mut left = left.split_whitespace().skip(3);
        let (root, point) = (left.next()?, left.next()?);
        let wanted = match controller {
            Some(c) => fstype == "cgroup" && options.split(',').any(|o| o == c),
            None => fstype == "cgroup2",
        };
        (wanted && root == "/").then(|| PathBuf::from(point))
    })
}

/// Removes the folders of dispatchers that no longer live under `parent`.
fn sweep(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let alive = pid == std::process::id() as i32
            || nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
        if !alive {
            remove_tree(&entry.path());
        }
    }
}

/// Removes a dispatcher's folder and its runs' (a folder still holding a process stays).
fn remove_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                let _ = fs::remove_dir(entry.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// Makes `dir` (there already is fine: a folder of this dispatcher).
fn make_dir(dir: &Path) -> Result<(), String> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("cannot make `{}`: {e}", dir.display())),
    }
}

fn write(dir: &Path, file: &str, value: &str) -> io::Result<()> {
    let path = dir.join(file);
    fs::write(&path, value).map_err(named(&path))
}

fn named(path: &Path) -> impl FnOnce(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("`{}`: {e}", path.display()))
}

/// The number in a file of one (`memory.peak`), if it reads.
fn number(dir: &Path, file: &str) -> Option<u64> {
    fs::read_to_string(dir.join(file)).ok()?.trim().parse().ok()
}

/// The value of `key` in a flat-keyed file (`cpu.stat`, `memory.events`), if it reads.
fn keyed(dir: &Path, file: &str, key: &str) -> Option<u64> {
    let text = fs::read_to_string(dir.join(file)).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
        .and_then(|n| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `replay -j 2` runs two dispatchers in one process: their cgroups must not share a folder
    /// (the second's first run took the first's `run-1`: "File exists").
    #[test]
    fn two_dispatchers_in_one_process_get_folders_of_their_own() {
        let Ok(first) = Cgroups::open() else {
            assert!(
                !nix::unistd::geteuid().is_root(),
                "root here, yet no cgroups: {:?}",
                Cgroups::open().err()
            );
            return;
        };
        let second = Cgroups::open().expect("a second dispatcher's cgroups");
        assert_ne!(first.describe(), second.describe());
        let limits = CgroupLimits::default();
        let (a, b) = (first.run(&limits), second.run(&limits));
        assert!(a.is_ok() && b.is_ok(), "{a:?} {b:?}");
        let kept = b
            .as_ref()
            .map(|b| b.folder().dirs[0].clone())
            .expect("a run");
        drop(a);
        drop(first);
        assert!(kept.is_dir(), "dropping one removed the other's folder");
    }

    /// On v1 an emptied run's folders serve the next run of the same limits; a run of other
    /// limits, or one after a run that left a process in its folder, gets new ones. v2 always
    /// makes new ones.
    #[test]
    fn an_emptied_run_folder_serves_only_a_later_run_of_the_same_limits() {
        let Ok(cgroups) = Cgroups::open() else {
            assert!(
                !nix::unistd::geteuid().is_root(),
                "root here, yet no cgroups"
            );
            return;
        };
        let v1 = matches!(cgroups.tree, Tree::V1(_));
        let limits = CgroupLimits {
            memory: Some(64 << 20),
            ..CgroupLimits::default()
        };
        let dir = |run: &RunCgroup| run.folder().dirs[0].clone();
        let first = cgroups.run(&limits).expect("a run");
        let used = dir(&first);
        drop(first);
        let second = cgroups.run(&limits).expect("a run");
        assert_eq!(dir(&second) == used, v1, "v1: {v1}, {used:?}");
        let other = cgroups.run(&CgroupLimits::default()).expect("a run");
        assert_ne!(dir(&other), used, "other limits, same folder");

        let mut stays = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("sleep");
        fs::write(dir(&second).join("cgroup.procs"), stays.id().to_string()).expect("moved");
        drop(second);
        let third = cgroups.run(&limits).expect("a run");
        let _ = stays.kill();
        let _ = stays.wait();
        assert_ne!(
            dir(&third),
            used,
            "a folder with a process in it served another run"
        );
    }
}
