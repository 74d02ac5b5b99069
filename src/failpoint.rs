//! Test-only fail points: `GIT_DISPATCH_FAILPOINT=<stage>` makes the dispatcher SIGKILL itself at that
//! stage, so tests can crash it deterministically where a real crash could happen. Release builds
//! compile this to nothing and ignore the variable.
//!
//! Stages: `fetch` (a fetch has downloaded but not updated the branch), `taken` (a run is journaled,
//! its handler not started), `running` (the handler runs), `recorded` (an outcome is committed
//! in memory, not written out), `committed` (outcomes are written out to the workdir, not pushed), `push` (the remote has updated its ref, the push has not returned).
//! Two stages hang instead of dying: `stuck` (a run's worker never reports after its handler ended),
//! for the stale-run watchdog, and `push-reported` (a push's thread, once it reported its end, never
//! exits). Three fail instead: `write-pack` (writing a pack of outcomes fails, as
//! on a full disk), `sync-entry` (syncing a run's first journal entry fails) and `copy-pack` (a pack
//! of outcomes is gone from the workdir when a push to a local path copies it, as after a `git
//! repack` that merged it meanwhile). And `claims-unanswered` reports every push of claims and heartbeat
//! as failed after the server applied it, as when a connection breaks before the report is read.

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
