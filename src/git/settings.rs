//! Process-wide libgit2 settings, made once before any repository is opened: object cache sizes,
//! pack windows, hash verification and server timeouts. Each figure below is what measurement on
//! the benchmarks chose.

/// How long a silent server may hold a fetch or push (no byte either way), in milliseconds; set by
/// [`bound_silence`] before [`configure_libgit2`] runs.
static SILENCE_MS: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(120_000);

/// A silent server holds a fetch or push for `lease` (at least 10 s, at most 120 s): a dispatcher
/// whose remote stops answering says so, and tries again, within about a lease (its handlers are
/// fenced at half a lease by their own threads meanwhile). Takes effect only before
/// [`configure_libgit2`] first runs.
pub(crate) fn bound_silence(lease: std::time::Duration) {
    let ms = lease.as_millis().clamp(10_000, 120_000);
    SILENCE_MS.store(
        i32::try_from(ms).unwrap_or(120_000),
        std::sync::atomic::Ordering::Relaxed,
    );
}

/// Process-wide libgit2 settings, made once: cache trees up to 4 MiB (the inbox, `processed/` and
/// `logs/` trees are read on every request; libgit2 caches only trees under 4 KiB by default) in a
/// cache of 512 KiB (more only fills with dead trees and costs memory: 80 MiB peak for 1000 requests
/// with a 24 MiB cache, 36–37 MiB with 4 MiB, 35–36 MiB with 2 MiB, 33.4–33.9 with 1 MiB and
/// 32.5–33.5 with 512 KiB, and no more CPU time; caching no large tree at all took 3 MiB more, as
/// the same trees were read and freed again and again), map
/// packs in windows of 1 MiB up to 2 MiB in all (the default maps whole packs, up to 8 GiB, and
/// mapped pages count in the resident memory: 42.9 MiB peak over 100,000 outcomes with the default,
/// 30.2 with 8 MiB; no more CPU time either), skip re-hashing every object read from our own object
/// store, bound how long a silent server can hold a fetch or push, and serve `git://` with
/// [`crate::git::transport::git_protocol`]. The first call also
/// initialises libgit2, which loads the system's CA certificates for HTTPS whatever the remote
/// (about 20 ms, a third of a first start): `Daemon::open` makes it on a thread of its own.
pub(crate) fn configure_libgit2() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        git2::opts::strict_hash_verification(false);
        // SAFETY: called once, before any repository is opened by this process.
        unsafe {
            // Bounded: every outcome makes new trees, and a large cache only fills with dead ones
            // (a parsed tree takes a few times its size in memory).
            let _ = git2::opts::set_cache_object_limit(git2::ObjectType::Tree, 4 << 20);
            let _ = git2::opts::set_cache_object_limit(git2::ObjectType::Commit, 1 << 20);
            let _ = git2::opts::set_cache_max_size(512 << 10);
            let _ = git2::opts::set_mwindow_size(1 << 20);
            let _ = git2::opts::set_mwindow_mapped_limit(2 << 20);
            let silence = SILENCE_MS.load(std::sync::atomic::Ordering::Relaxed);
            let _ = git2::opts::set_server_connect_timeout_in_milliseconds(15_000);
            let _ = git2::opts::set_server_timeout_in_milliseconds(silence);
            // `git://` over a socket without Nagle's delay (see its module): registered once,
            // like the settings above, before any remote is opened. Should it fail, libgit2's
            // own transport serves `git://`, only slower.
            let _ = crate::git::transport::git_protocol::register(
                std::time::Duration::from_millis(15_000),
                std::time::Duration::from_millis(silence.unsigned_abs().into()),
            );
        }
    });
}
