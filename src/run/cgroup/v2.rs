//! cgroup v2: one unified hierarchy. The dispatcher's folder sits under its own cgroup, with the
//! controllers it hands down (`memory`, `pids`, `cpu`, those the host offers there) enabled in its
//! `cgroup.subtree_control`; each run is one folder in it. CPU time (`cpu.stat`) is read whatever
//! is offered.
//!
//! The kernel lets a cgroup hand controllers to its children only while it holds no process
//! itself (except the root). A dispatcher alone in its cgroup (a systemd service with
//! `Delegate=yes`) first moves itself into a folder of its own there, `git-dispatch-<pid>-self`;
//! one that shares its cgroup (started from a login shell) gets runs without the controllers, and
//! [`Folder::describe`] says so.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{
    CPU_PERIOD_US, CgroupLimits, PID_MAX_LIMIT, PREFIX, RunFolder, Usage, UsageFrom, keyed,
    make_dir, mount_point, named, number, remove_tree, sweep, write,
};

/// The controllers a run's folder may get, in the order they are asked for.
const WANTED: [&str; 3] = ["memory", "pids", "cpu"];

/// The dispatcher's folder; removed on drop.
#[derive(Debug)]
pub(super) struct Folder {
    dir: PathBuf,
    /// The controllers its runs get.
    controllers: Vec<&'static str>,
    /// Why some of [`WANTED`] are not among them.
    missing: Option<String>,
}

impl Folder {
    /// Makes the folder `name` under the dispatcher's cgroup (`own`: `/proc/self/cgroup`) of the
    /// unified hierarchy mounted as `mountinfo` says.
    pub(super) fn open(own: &str, mountinfo: &str, name: &str) -> Result<Self, String> {
        let path = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .ok_or("the dispatcher is in no cgroup v2 (`/proc/self/cgroup` has no `0::` line)")?;
        let mount = mount_point(mountinfo, None).ok_or("no cgroup2 file system is mounted")?;
        let mut parent = mount.join(path.trim_start_matches('/'));
        // Moved into its own folder already (by another dispatcher of this process).
        let me = format!("{PREFIX}{}-self", std::process::id());
        if parent.file_name().is_some_and(|n| *n == *me) && parent != mount {
            parent.pop();
        }
        let offered = fs::read_to_string(parent.join("cgroup.controllers"))
            .map_err(|e| format!("`{}`: {e}", parent.join("cgroup.controllers").display()))?;
        let offered: Vec<&str> = offered.split_whitespace().collect();
        let wanted: Vec<&'static str> =
            WANTED.into_iter().filter(|c| offered.contains(c)).collect();
        let mut missing = (wanted.len() < WANTED.len()).then(|| {
            format!(
                "not all controllers: the host offers only `{}` in `{}`",
                offered.join(" "),
                parent.display()
            )
        });
        let controllers = match hand_down(&parent, &wanted) {
            Ok(()) => wanted,
            // Processes in `parent`: when they are this one alone (a service with `Delegate=yes`,
            // or the root of a container's cgroup namespace), it moves into a folder of its own.
            Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) => {
                match alone_in(&parent)
                    .and_then(|()| move_self(&parent, &me))
                    .and_then(|()| hand_down(&parent, &wanted))
                {
                    Ok(()) => wanted,
                    Err(e) => {
                        missing = Some(format!(
                            "not all controllers: `{}` holds other processes and cannot hand controllers down ({e}); \
                             run the dispatcher as a service of its own with `Delegate=yes`",
                            parent.display()
                        ));
                        Vec::new()
                    }
                }
            }
            Err(e) => {
                missing = Some(format!("not all controllers: {e}"));
                Vec::new()
            }
        };
        sweep(&parent);
        let dir = parent.join(name);
        make_dir(&dir)?;
        let folder = Self {
            dir,
            controllers,
            missing,
        };
        hand_down(&folder.dir, &folder.controllers)
            .map_err(|e| format!("`{}`: {e}", folder.dir.display()))?;
        if folder.has("memory") && !folder.dir.join("memory.swap.max").exists() {
            // A kernel without swap accounting: `memory.swap.max` is nowhere to be set.
            let why = "swap is not accounted on this host: `memory:` bounds memory, not swap";
            let mut folder = folder;
            folder.missing = Some(match folder.missing.take() {
                Some(other) => format!("{other}; {why}"),
                None => why.to_owned(),
            });
            return Ok(folder);
        }
        Ok(folder)
    }

    pub(super) fn describe(&self) -> String {
        let with = match self.controllers.is_empty() {
            true => "CPU time only".to_owned(),
            false => self.controllers.join(", "),
        };
        let missing = self
            .missing
            .as_ref()
            .map_or_else(String::new, |why| format!("; {why}"));
        let unbounded: Vec<String> = WANTED
            .iter()
            .filter(|c| !self.has(c))
            .map(|c| match *c {
                "memory" => "`memory:` stays an address-space rlimit".to_owned(),
                other => format!("`{other}:` is not enforced"),
            })
            .collect();
        let unbounded = match unbounded.is_empty() {
            true => String::new(),
            false => format!(" ({})", unbounded.join(", ")),
        };
        format!(
            "cgroup v2 ({with}) in `{}`{missing}{unbounded}",
            self.dir.display()
        )
    }

    /// Whether its runs get `controller`.
    pub(super) fn has(&self, controller: &str) -> bool {
        self.controllers.contains(&controller)
    }

    pub(super) fn run(&self, name: &str, limits: &CgroupLimits) -> io::Result<RunFolder> {
        let dir = self.dir.join(name);
        fs::create_dir(&dir).map_err(named(&dir))?;
        let mut group = RunFolder {
            dirs: vec![dir.clone()],
            procs: Vec::new(),
            usage: UsageFrom::V2 { dir: dir.clone() },
        };
        self.apply(&dir, limits)?;
        group.open_procs()?;
        Ok(group)
    }

    /// Writes `limits` into the run's folder `dir`, those of the controllers its runs get.
    fn apply(&self, dir: &Path, limits: &CgroupLimits) -> io::Result<()> {
        if let Some(bytes) = limits.memory.filter(|_| self.has("memory")) {
            write(dir, "memory.max", &bytes.to_string())?;
            // No escape into swap.
            if dir.join("memory.swap.max").exists() {
                write(dir, "memory.swap.max", "0")?;
            }
        }
        if let Some(pids) = limits.pids.filter(|_| self.has("pids")) {
            write(dir, "pids.max", &pids.min(PID_MAX_LIMIT).to_string())?;
        }
        if let Some(cores) = limits.cpu.filter(|_| self.has("cpu")) {
            let quota = ((cores * CPU_PERIOD_US as f64) as u64).max(1000);
            write(dir, "cpu.max", &format!("{quota} {CPU_PERIOD_US}"))?;
        }
        Ok(())
    }
}

impl Drop for Folder {
    fn drop(&mut self) {
        remove_tree(&self.dir);
    }
}

/// What a run used, from its folder.
pub(super) fn usage(dir: &Path) -> Usage {
    Usage {
        // `memory.peak` is there from Linux 5.19.
        peak_memory: number(dir, "memory.peak"),
        cpu: keyed(dir, "cpu.stat", "usage_usec").map(std::time::Duration::from_micros),
        oom_killed: keyed(dir, "memory.events", "oom_kill").is_some_and(|n| n > 0),
    }
}

/// Enables `controllers` for the children of `dir`.
fn hand_down(dir: &Path, controllers: &[&str]) -> io::Result<()> {
    if controllers.is_empty() {
        return Ok(());
    }
    let line: Vec<String> = controllers.iter().map(|c| format!("+{c}")).collect();
    fs::write(dir.join("cgroup.subtree_control"), line.join(" "))
}

/// Ok when this process is the only one in the cgroup `dir`; otherwise why not (moving it would
/// not free `dir`, and would leave a folder behind).
fn alone_in(dir: &Path) -> io::Result<()> {
    let procs = fs::read_to_string(dir.join("cgroup.procs"))?;
    let me = std::process::id().to_string();
    match procs.lines().all(|pid| pid.trim() == me) {
        true => Ok(()),
        false => Err(io::Error::other("other processes share it")),
    }
}

/// Moves this process into the folder `name` of `parent`, so `parent` holds no process of its own.
fn move_self(parent: &Path, name: &str) -> io::Result<()> {
    let leaf = parent.join(name);
    make_dir(&leaf).map_err(io::Error::other)?;
    fs::write(leaf.join("cgroup.procs"), std::process::id().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "\
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / MOUNT rw,relatime - cgroup2 cgroup2 rw
";

    /// A folder laid out as a v2 hierarchy (plain files: what is written is what is read).
    fn tree(offered: &str) -> (tempfile::TempDir, String) {
        let root = tempfile::tempdir().expect("a temporary folder");
        let own = root.path().join("system.slice/gd.service");
        fs::create_dir_all(&own).expect("own cgroup");
        fs::write(own.join("cgroup.controllers"), offered).expect("controllers");
        let mounts = MOUNTS.replace("MOUNT", root.path().to_str().expect("UTF-8"));
        (root, mounts)
    }

    #[test]
    fn a_run_gets_the_limits_of_its_kind_in_the_files_v2_reads_and_its_usage_is_read_back() {
        let (root, mounts) = tree("cpuset cpu io memory hugetlb pids rdma misc\n");
        let own = "0::/system.slice/gd.service\n";
        let folder = Folder::open(own, &mounts, "git-dispatch-1-1").expect("a folder");
        let parent = root.path().join("system.slice/gd.service");
        let read = |p: &Path| fs::read_to_string(p).expect("written");
        assert_eq!(
            read(&parent.join("cgroup.subtree_control")),
            "+memory +pids +cpu"
        );
        assert_eq!(
            read(&folder.dir.join("cgroup.subtree_control")),
            "+memory +pids +cpu"
        );
        let said = folder.describe();
        assert!(said.starts_with("cgroup v2 (memory, pids, cpu)"), "{said}");
        // No `memory.swap.max` in the folder: a kernel without swap accounting, said so.
        assert!(said.contains("swap is not accounted"), "{said}");
        let limits = CgroupLimits {
            memory: Some(512 << 20),
            pids: Some(20),
            cpu: Some(0.5),
        };
        let run_dir = folder.dir.join("run-1");
        fs::create_dir(&run_dir).expect("a run's folder");
        folder.apply(&run_dir, &limits).expect("limits written");
        assert_eq!(read(&run_dir.join("memory.max")), "536870912");
        assert_eq!(read(&run_dir.join("pids.max")), "20");
        assert_eq!(read(&run_dir.join("cpu.max")), "50000 100000");
        fs::write(run_dir.join("memory.peak"), "1048576\n").expect("peak");
        fs::write(
            run_dir.join("cpu.stat"),
            "usage_usec 2500\nuser_usec 2000\n",
        )
        .expect("stat");
        fs::write(
            run_dir.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .expect("events");
        assert_eq!(
            usage(&run_dir),
            Usage {
                peak_memory: Some(1 << 20),
                cpu: Some(std::time::Duration::from_micros(2500)),
                oom_killed: true,
            }
        );
    }

    #[test]
    fn without_the_memory_controller_memory_stays_an_rlimit_and_the_start_says_why() {
        let (_root, mounts) = tree("cpuset hugetlb\n");
        let folder = Folder::open("0::/system.slice/gd.service\n", &mounts, "git-dispatch-1-2")
            .expect("a folder");
        assert!(!folder.has("memory"));
        let said = folder.describe();
        assert!(
            said.contains("CPU time only") && said.contains("offers only `cpuset hugetlb`"),
            "{said}"
        );
        let run_dir = folder.dir.join("run-1");
        fs::create_dir(&run_dir).expect("a run's folder");
        let limits = CgroupLimits {
            memory: Some(1 << 20),
            pids: Some(5),
            cpu: Some(1.0),
        };
        folder.apply(&run_dir, &limits).expect("nothing to write");
        assert_eq!(fs::read_dir(&run_dir).expect("listed").count(), 0);
    }

    #[test]
    fn no_unified_hierarchy_is_an_error_that_says_so() {
        let v1_only = "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        let e = Folder::open("0::/\n", v1_only, "x").expect_err("no cgroup2");
        assert!(e.contains("no cgroup2"), "{e}");
        let e = Folder::open("4:memory:/a\n", MOUNTS, "x").expect_err("no 0:: line");
        assert!(e.contains("no cgroup v2"), "{e}");
    }
}
