//! A cgroup per run: `memory:` as a real memory limit (what the run's processes use, not the
//! address space they reserve), `pids:` and `cpu:`, and the run's peak memory, CPU time and
//! out-of-memory kills read back when it ends.
//!
//! The dispatcher makes a folder of its own, `git-dispatch-<pid>-<n>`, under its own cgroup in each
//! controller it uses (so whatever bounds the dispatcher bounds its runs too), one `run-<n>` in it
//! per run, and removes both when done; folders of dispatchers that died are removed by the next
//! one to start. The child moves itself in before it executes the handler (`spawn`), so every
//! process of the run is counted from its first instruction.
//!
//! Only the cgroup v1 controllers are driven: the hosts this was built on mount `memory`, `pids`,
//! `cpu` and `cpuacct` as v1 hierarchies and give the unified (v2) one no controller. Elsewhere
//! (a v2-only host, or a dispatcher that is not root) [`Cgroups::open`] says why and runs fall back
//! to rlimits. Measured per run (mkdir, limits, join, read, rmdir): memory and cpuacct 0.3 ms,
//! pids 0.15 ms more, cpu with a quota 1.0 ms more; so pids and cpu are joined only when the kind
//! sets them.

use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The start of a dispatcher's folder in each controller.
const PREFIX: &str = "git-dispatch-";
/// The CFS period `cpu:` is a share of.
const CPU_PERIOD_US: u64 = 100_000;

/// The dispatcher's folder in each controller; removed on drop.
#[derive(Debug)]
pub(crate) struct Cgroups {
    memory: PathBuf,
    cpuacct: PathBuf,
    pids: PathBuf,
    cpu: PathBuf,
    next: AtomicU64,
}

/// What a kind asks of its runs' cgroup.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CgroupLimits {
    /// Bytes; swap is not allowed beyond it.
    pub memory: Option<u64>,
    pub pids: Option<u64>,
    /// Cores.
    pub cpu: Option<f64>,
}

/// One run's cgroup; removed on drop (the run's processes are gone by then).
#[derive(Debug)]
pub(crate) struct RunCgroup {
    dirs: Vec<PathBuf>,
    memory: PathBuf,
    cpuacct: PathBuf,
    /// `cgroup.procs` of each controller's folder, opened for writing.
    procs: Vec<File>,
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
    /// Finds the dispatcher's own cgroup in the memory, cpuacct, pids and cpu controllers and makes
    /// its folder in each. An error says why runs get no cgroups here.
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
        let folder = |controller: &str| -> Result<PathBuf, String> {
            let (mount, path) = v1_place(&own, &mounts, controller).ok_or_else(|| {
                format!(
                    "no cgroup v1 `{controller}` controller (cgroup v2 is not driven yet: a host \
                     with only v2 gets rlimits)"
                )
            })?;
            let parent = mount.join(path.trim_start_matches('/'));
            sweep(&parent);
            // One process may hold several dispatchers (`replay -j N`): each has its own folder.
            let dir = parent.join(format!("{PREFIX}{}-{instance}", std::process::id()));
            match fs::create_dir(&dir) {
                Ok(()) => Ok(dir),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(dir),
                Err(e) => Err(format!("cannot make `{}`: {e}", dir.display())),
            }
        };
        Ok(Self {
            memory: folder("memory")?,
            cpuacct: folder("cpuacct")?,
            pids: folder("pids")?,
            cpu: folder("cpu")?,
            next: AtomicU64::new(1),
        })
    }

    /// One line for the start and `doctor`.
    pub(crate) fn describe(&self) -> String {
        format!(
            "cgroup v1 (memory, pids, cpu, cpuacct) under `{}`",
            self.memory.parent().unwrap_or(&self.memory).display()
        )
    }

    /// A new cgroup for one run, with `limits` applied.
    pub(crate) fn run(&self, limits: &CgroupLimits) -> io::Result<RunCgroup> {
        let name = format!("run-{}", self.next.fetch_add(1, Ordering::Relaxed));
        let mut group = RunCgroup {
            dirs: Vec::new(),
            memory: self.memory.join(&name),
            cpuacct: self.cpuacct.join(&name),
            procs: Vec::new(),
        };
        let mut parents = vec![&self.memory, &self.cpuacct];
        if limits.pids.is_some() {
            parents.push(&self.pids);
        }
        if limits.cpu.is_some() {
            parents.push(&self.cpu);
        }
        for parent in parents {
            let dir = parent.join(&name);
            // Controllers mounted together (`cpu,cpuacct`) share one folder.
            if group.dirs.contains(&dir) {
                continue;
            }
            fs::create_dir(&dir).map_err(named(&dir))?;
            group.dirs.push(dir);
        }
        if let Some(bytes) = limits.memory {
            write(&group.memory, "memory.limit_in_bytes", &bytes.to_string())?;
            // No escape into swap: memory and swap together stay within the limit.
            let swap = group.memory.join("memory.memsw.limit_in_bytes");
            if swap.exists() {
                write(
                    &group.memory,
                    "memory.memsw.limit_in_bytes",
                    &bytes.to_string(),
                )?;
            }
        }
        if let Some(pids) = limits.pids {
            write(&self.pids.join(&name), "pids.max", &pids.to_string())?;
        }
        if let Some(cores) = limits.cpu {
            let dir = self.cpu.join(&name);
            let quota = ((cores * CPU_PERIOD_US as f64) as u64).max(1000);
            write(&dir, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
            write(&dir, "cpu.cfs_quota_us", &quota.to_string())?;
        }
        for dir in &group.dirs {
            let path = dir.join("cgroup.procs");
            group.procs.push(
                File::options()
                    .write(true)
                    .open(&path)
                    .map_err(named(&path))?,
            );
        }
        Ok(group)
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for dir in [&self.memory, &self.cpuacct, &self.pids, &self.cpu] {
            remove_tree(dir);
        }
    }
}

impl RunCgroup {
    /// The `cgroup.procs` files the child writes itself into.
    pub(crate) fn procs(&self) -> Vec<BorrowedFd<'_>> {
        self.procs.iter().map(|f| f.as_fd()).collect()
    }

    /// What the run used; call once its processes are gone.
    pub(crate) fn usage(&self) -> Usage {
        let read = |dir: &Path, file: &str| fs::read_to_string(dir.join(file)).ok();
        let number = |text: Option<String>| text.and_then(|t| t.trim().parse::<u64>().ok());
        let oom_kills = read(&self.memory, "memory.oom_control").and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|n| n.trim().parse::<u64>().ok())
        });
        Usage {
            peak_memory: number(read(&self.memory, "memory.max_usage_in_bytes")),
            cpu: number(read(&self.cpuacct, "cpuacct.usage")).map(Duration::from_nanos),
            oom_killed: oom_kills.is_some_and(|n| n > 0),
        }
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        self.procs.clear();
        for dir in &self.dirs {
            let _ = fs::remove_dir(dir);
        }
    }
}

/// The mount point of the v1 hierarchy holding `controller`, and the dispatcher's cgroup in it.
fn v1_place(own: &str, mountinfo: &str, controller: &str) -> Option<(PathBuf, String)> {
    let has = |list: &str| list.split(',').any(|c| c == controller);
    let path = own.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, list, path) = (parts.next()?, parts.next()?, parts.next()?);
        has(list).then(|| path.to_owned())
    })?;
    let mount = mountinfo.lines().find_map(|line| {
        // `id parent major:minor root mount-point options [optional...] - type source super-options`
        let (left, right) = line.split_once(" - ")?;
        let mut right = right.split_whitespace();
        let (fstype, _source, options) = (right.next()?, right.next()?, right.next()?);
        let mut left = left.split_whitespace().skip(3);
        let (root, point) = (left.next()?, left.next()?);
        (fstype == "cgroup" && root == "/" && has(options)).then(|| PathBuf::from(point))
    })?;
    Some((mount, path))
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

fn write(dir: &Path, file: &str, value: &str) -> io::Result<()> {
    let path = dir.join(file);
    fs::write(&path, value).map_err(named(&path))
}

fn named(path: &Path) -> impl FnOnce(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("`{}`: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWN: &str =
        "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/e8f\n2:cpu,cpuacct:/a\n0::/\n";
    const MOUNTS: &str = "\
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn a_controller_is_found_in_its_own_or_a_shared_hierarchy() {
        let place = |c| v1_place(OWN, MOUNTS, c);
        assert_eq!(
            place("memory"),
            Some(("/sys/fs/cgroup/memory".into(), "/process_api/e8f".into()))
        );
        assert_eq!(
            place("cpuacct"),
            Some(("/sys/fs/cgroup/cpu,cpuacct".into(), "/a".into()))
        );
        assert_eq!(
            place("pids"),
            Some(("/sys/fs/cgroup/pids".into(), "/".into()))
        );
        assert_eq!(place("hugetlb"), None, "v2 controllers are not driven");
    }

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
        assert_ne!(first.memory, second.memory);
        let limits = CgroupLimits::default();
        let (a, b) = (first.run(&limits), second.run(&limits));
        assert!(a.is_ok() && b.is_ok(), "{a:?} {b:?}");
        drop((a, b));
        let kept = second.memory.clone();
        drop(first);
        assert!(kept.is_dir(), "dropping one removed the other's folder");
    }
}
