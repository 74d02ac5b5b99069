//! cgroup v1: a hierarchy per controller (`memory`, `cpuacct`, `pids`, `cpu`), the dispatcher's
//! folder in each under its own cgroup there. Measured per run (mkdir, limits, join, read, rmdir):
//! memory and cpuacct 0.3 ms, pids 0.15 ms more, cpu with a quota 1.0 ms more; so pids and cpu are
//! joined only when the kind sets them.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{
    CPU_PERIOD_US, CgroupLimits, PID_MAX_LIMIT, RunFolder, Usage, UsageFrom, keyed, make_dir,
    mount_point, named, number, remove_tree, sweep, write,
};

/// The dispatcher's folder in each controller; removed on drop.
#[derive(Debug)]
pub(super) struct Folders {
    memory: PathBuf,
    cpuacct: PathBuf,
    pids: PathBuf,
    cpu: PathBuf,
}

/// Whether the `memory` controller is on a v1 hierarchy (a v1 or hybrid host).
pub(super) fn has_memory(own: &str, mountinfo: &str) -> bool {
    v1_place(own, mountinfo, "memory").is_some()
}

impl Folders {
    /// Makes the folder `name` under the dispatcher's cgroup in each controller.
    pub(super) fn open(own: &str, mountinfo: &str, name: &str) -> Result<Self, String> {
        let folder = |controller: &str| -> Result<PathBuf, String> {
            let (mount, path) = v1_place(own, mountinfo, controller)
                .ok_or_else(|| format!("no cgroup v1 `{controller}` controller"))?;
            let parent = mount.join(path.trim_start_matches('/'));
            sweep(&parent);
            let dir = parent.join(name);
            make_dir(&dir)?;
            Ok(dir)
        };
        Ok(Self {
            memory: folder("memory")?,
            cpuacct: folder("cpuacct")?,
            pids: folder("pids")?,
            cpu: folder("cpu")?,
        })
    }

    pub(super) fn describe(&self) -> String {
        format!(
            "cgroup v1 (memory, pids, cpu, cpuacct) in `{}`",
            self.memory.display()
        )
    }

    pub(super) fn run(&self, name: &str, limits: &CgroupLimits) -> io::Result<RunFolder> {
        let memory = self.memory.join(name);
        let mut group = RunFolder {
            dirs: Vec::new(),
            procs: Vec::new(),
            usage: UsageFrom::V1 {
                memory: memory.clone(),
                cpuacct: self.cpuacct.join(name),
            },
        };
        let mut parents = vec![&self.memory, &self.cpuacct];
        if limits.pids.is_some() {
            parents.push(&self.pids);
        }
        if limits.cpu.is_some() {
            parents.push(&self.cpu);
        }
        for parent in parents {
            let dir = parent.join(name);
            // Controllers mounted together (`cpu,cpuacct`) share one folder.
            if group.dirs.contains(&dir) {
                continue;
            }
            fs::create_dir(&dir).map_err(named(&dir))?;
            group.dirs.push(dir);
        }
        if let Some(bytes) = limits.memory {
            write(&memory, "memory.limit_in_bytes", &bytes.to_string())?;
            // No escape into swap: memory and swap together stay within the limit.
            if memory.join("memory.memsw.limit_in_bytes").exists() {
                write(&memory, "memory.memsw.limit_in_bytes", &bytes.to_string())?;
            }
        }
        if let Some(pids) = limits.pids {
            write(
                &self.pids.join(name),
                "pids.max",
                &pids.min(PID_MAX_LIMIT).to_string(),
            )?;
        }
        if let Some(cores) = limits.cpu {
            let dir = self.cpu.join(name);
            let quota = ((cores * CPU_PERIOD_US as f64) as u64).max(1000);
            write(&dir, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
            write(&dir, "cpu.cfs_quota_us", &quota.to_string())?;
        }
        group.open_procs()?;
        Ok(group)
    }
}

impl Drop for Folders {
    fn drop(&mut self) {
        for dir in [&self.memory, &self.cpuacct, &self.pids, &self.cpu] {
            remove_tree(dir);
        }
    }
}

/// Whether a run's folder in `memory` may serve another run: no process in it, no out-of-memory
/// kill, and at most `leftover` bytes still charged to it.
pub(super) fn emptied(memory: &Path, leftover: u64) -> bool {
    fs::read_to_string(memory.join("cgroup.procs")).is_ok_and(|procs| procs.trim().is_empty())
        && number(memory, "memory.usage_in_bytes").is_some_and(|bytes| bytes <= leftover)
        && keyed(memory, "memory.oom_control", "oom_kill") == Some(0)
}

/// Resets the peak memory and the CPU time of an emptied run's folders for another run; the peak
/// starts again from what is still charged.
pub(super) fn reset(memory: &Path, cpuacct: &Path) -> io::Result<()> {
    write(memory, "memory.max_usage_in_bytes", "0")?;
    write(cpuacct, "cpuacct.usage", "0")
}

/// What a run used, from its folders in `memory` and `cpuacct`.
pub(super) fn usage(memory: &Path, cpuacct: &Path) -> Usage {
    Usage {
        peak_memory: number(memory, "memory.max_usage_in_bytes"),
        cpu: number(cpuacct, "cpuacct.usage").map(std::time::Duration::from_nanos),
        oom_killed: keyed(memory, "memory.oom_control", "oom_kill").is_some_and(|n| n > 0),
    }
}

/// The mount point of the v1 hierarchy holding `controller`, and the dispatcher's cgroup in it.
fn v1_place(own: &str, mountinfo: &str, controller: &str) -> Option<(PathBuf, String)> {
    let path = own.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, list, path) = (parts.next()?, parts.next()?, parts.next()?);
        list.split(',')
            .any(|c| c == controller)
            .then(|| path.to_owned())
    })?;
    Some((mount_point(mountinfo, Some(controller))?, path))
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
        assert_eq!(place("hugetlb"), None, "no v1 hierarchy holds it");
    }
}
