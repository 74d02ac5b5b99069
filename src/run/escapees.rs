//! Descendants of a handler that escape its process group (a new session, a double fork) and are
//! re-parented to the dispatcher, a child subreaper: found by the run's marker in their environment
//! and killed when the handler exits; those that exited first are reaped. Only a run without its own
//! PID namespace needs this: in one, the handler's exit ends every process left.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

/// How long the search for a run's escapees may go on while it still finds some: each pass kills
/// one more link of a chain of sessions (a few hundred microseconds), so this ends only escapees
/// that multiply faster than they are killed.
const ESCAPEE_SEARCH: Duration = Duration::from_secs(5);

/// Handlers started and not yet reaped by their own run: the sweep for zombies
/// ([`reap_if_orphaned_zombie`]) leaves them to it. The lock is held from the reap until the pid is
/// not listed, so a sweep never sees a handler it should not reap. Until it is listed, a handler is
/// the child of its run's thread, which the sweep (of the main thread's children) never sees.
pub(super) static HANDLERS: std::sync::Mutex<std::collections::BTreeSet<i32>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Reaps `pid`, a child of the dispatcher, when it is a zombie that is neither a listed handler
/// nor in the dispatcher's own process group (the `git` commands it starts, which whoever started
/// them waits for): a descendant of a handler, re-parented to the dispatcher (a child subreaper),
/// that exited before anything could find it by its environment. It would count against the
/// handler user's process limit for as long as the dispatcher lives. Whether `pid` is a zombie.
fn reap_if_orphaned_zombie(pid: i32, own_group: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) state ppid pgrp ...`; the command name may hold spaces and parentheses.
    let mut fields = stat
        .rfind(')')
        .map_or("", |end| &stat[end + 1..])
        .split_whitespace();
    if fields.next() != Some("Z") {
        return false;
    }
    let group = fields.nth(1).and_then(|g| g.parse::<i32>().ok());
    let handlers = HANDLERS.lock().expect("no thread panics holding it");
    if group.is_some_and(|g| g != own_group) && !handlers.contains(&pid) {
        let _ = waitpid(
            Pid::from_raw(pid),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
    }
    true
}

/// Kills the processes re-parented to the dispatcher whose environment carries `marker`, and reaps them.
/// Only the dispatcher's own children are looked at, not every process: those of its main thread,
/// which is where the kernel re-parents orphans (to the subreaper's first live thread, its leader).
/// Killing one re-parents its own children to the dispatcher, so the search repeats until a pass
/// finds nothing, however deep the chain: only time bounds it ([`ESCAPEE_SEARCH`], against
/// escapees that start new ones as fast as they are killed). The same passes reap the escapees, of
/// any run, that already exited.
pub(super) fn kill_escapees(marker: &(String, String)) {
    let needle = format!("\0{}={}\0", marker.0, marker.1).into_bytes();
    let own_group = nix::unistd::getpgrp().as_raw();
    let deadline = Instant::now() + ESCAPEE_SEARCH;
    while Instant::now() < deadline {
        let mut killed = 0;
        for pid in dispatcher_children() {
            if reap_if_orphaned_zombie(pid, own_group) {
                continue;
            }
            let mut environ = vec![0u8];
            environ.extend(std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default());
            if environ
                .windows(needle.len())
                .any(|w| w == needle.as_slice())
            {
                let pid = Pid::from_raw(pid);
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(pid, None);
                killed += 1;
            }
        }
        if killed == 0 {
            return;
        }
    }
}

/// The children of the dispatcher's main thread. Orphans are re-parented to it (the kernel's
/// `find_new_reaper` takes the subreaper's first thread that is not exiting, the group leader), and
/// so are the children of a thread that exits; a handler, the child of the worker thread that
/// started it, is not an escapee. Reading every thread's list took 30 µs per request.
fn dispatcher_children() -> Vec<i32> {
    let path = format!("/proc/self/task/{}/children", std::process::id());
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .collect()
}
