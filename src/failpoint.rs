//! Test-only fail points: `GIT_DISPATCH_FAILPOINT=<stage>` makes the dispatcher SIGKILL itself at that
//! stage, so tests can crash it deterministically where a real crash could happen. Release builds
//! compile this to nothing and ignore the variable.
//!
//! Stages: `fetch` (a fetch has downloaded but not updated the branch), `prepared` (a run's journal
//! entry is on disk, without its start mark, and the run is about to wait for its slot), `taken` (a
//! run is marked started in the journal, its handler not started), `running` (the handler runs), `recorded` (an outcome is committed
//! in memory, not written out), `committed` (outcomes are written out to the workdir, not pushed), `push` (the remote has updated its ref, the push has not returned).
//! Two stages hang instead of dying: `stuck` (a run's worker never reports after its handler ended),
//! for the stale-run watchdog, and `push-reported` (a push's thread, once it reported its end, never
//! exits). Three fail instead: `write-pack` (writing a pack of outcomes fails, as
//! on a full disk), `sync-entry` (syncing a run's first journal entry fails) and `copy-pack` (a pack
//! of outcomes is gone from the workdir when a push to a local path copies it, as after a `git
//! repack` that merged it meanwhile). And `claims-unanswered` reports every push of claims and heartbeat
//! as failed after the server applied it, as when a connection breaks before the report is read.

/// The kernel's boot id (`/proc/sys/kernel/random/boot_id`), for which `GIT_DISPATCH_BOOT_ID`
/// stands in in test builds, so that a test can start the dispatcher as after a restart of the
/// machine. Where it cannot be read, an id of this process alone: then nothing from before counts
/// as of this boot.
pub(crate) fn boot_id() -> String {
    #[cfg(debug_assertions)]
    if let Ok(id) = std::env::var("GIT_DISPATCH_BOOT_ID") {
        return id;
    }
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|id| id.trim().to_owned())
        .unwrap_or_else(|_| ulid::Ulid::generate().to_string())
}

/// How long an outcome may wait to be pushed while a backlog drains: `default`, for which
/// `GIT_DISPATCH_PUSH_BATCH` (a duration: `1h`; ignored when it is not one) stands in in debug
/// builds, so that a test can tell an outcome pushed at once from one that waits for its batch.
pub(crate) fn push_batch(default: std::time::Duration) -> std::time::Duration {
    #[cfg(debug_assertions)]
    if let Some(batch) = std::env::var("GIT_DISPATCH_PUSH_BATCH")
        .ok()
        .and_then(|v| humantime::parse_duration(&v).ok())
    {
        return batch;
    }
    default
}

/// Dies here if the fail point `stage` is armed.
#[inline]
pub(crate) fn hit(stage: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("GIT_DISPATCH_FAILPOINT").is_ok_and(|armed| armed == stage) {
        crate::log::say(&format!("fail point `{stage}`: killing the dispatcher"));
        let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
    }
    #[cfg(not(debug_assertions))]
    let _ = stage;
}

/// Whether the fail point `stage` is armed: the caller then fails as it would on an I/O error.
#[inline]
pub(crate) fn fails(stage: &str) -> bool {
    #[cfg(debug_assertions)]
    return std::env::var("GIT_DISPATCH_FAILPOINT").is_ok_and(|armed| armed == stage);
    #[cfg(not(debug_assertions))]
    {
        let _ = stage;
        false
    }
}

/// Blocks the calling thread for good if the fail point `stage` is armed.
#[inline]
pub(crate) fn hang(stage: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("GIT_DISPATCH_FAILPOINT").is_ok_and(|armed| armed == stage) {
        crate::log::say(&format!("fail point `{stage}`: this thread hangs"));
        loop {
            std::thread::park();
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = stage;
}
