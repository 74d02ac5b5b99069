//! Opening a dispatcher: its workdir and the lock that makes it its own, the lock directory, the
//! bare clone, the journal and the scratch directory handlers run in.
//!
//! The invariant: a [`Daemon`] exists only while it holds the workdir's flock, so no two
//! dispatchers ever write one workdir; what a killed one left there (ref `.lock` files, scratch
//! folders) is cleaned up before anything else touches it.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::config::RunConfig;
use crate::daemon::claims::Claims;
use crate::daemon::metrics::Metrics;
use crate::daemon::push::PushState;
use crate::daemon::service::Progress;
use crate::daemon::sync::SyncState;
use crate::daemon::{Daemon, DaemonError, Summary, io_err};
use crate::git::sync::Sync;
use crate::inbox::queue::Inbox;
use crate::log::say;
use crate::run::isolate::Isolation;
use crate::run::journal::Journal;
use crate::run::runner::Stop;
use crate::run::scratch::Scratch;

/// How long a held workdir lock is waited for, and how often it is tried meanwhile (see
/// [`lock_workdir`]).
const WORKDIR_LOCK_GRACE: Duration = Duration::from_secs(2);
const WORKDIR_LOCK_POLL: Duration = Duration::from_millis(20);
/// The scratch directory's folder of runs: each request's read-only copy and working directories.
pub(super) const RUNS: &str = "runs";

impl Daemon {
    /// Prepares the workdir and the lock directory, takes the workdir's lock and opens the bare
    /// clone; nothing is fetched yet.
    pub(crate) fn open(cfg: RunConfig) -> Result<Self, DaemonError> {
        // libgit2 initialises meanwhile (see `configure_libgit2`); `Sync::open` waits for it.
        crate::git::sync::bound_silence(cfg.lease);
        std::thread::spawn(crate::git::sync::configure_libgit2);
        // Created with explicit modes, whatever the umask: the workdir (the bare clone, the journal,
        // captured output) is the dispatcher's alone; the lock directory is readable by the admins
        // and cron jobs that take the same locks, writable by the dispatcher only.
        create_dir(&cfg.workdir, 0o700).map_err(io_err(format!(
            "workdir `{}` could not be created",
            cfg.workdir.display()
        )))?;
        create_dir(&cfg.lock_dir, 0o755).map_err(io_err(format!(
            "lock directory `{}` could not be created",
            cfg.lock_dir.display()
        )))?;
        let probe = cfg.lock_dir.join(".git-dispatch-write-test");
        fs::write(&probe, b"").map_err(io_err(format!(
            "lock directory `{}` is not writable",
            cfg.lock_dir.display()
        )))?;
        let _ = fs::remove_file(&probe);
        let workdir_lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(cfg.workdir.join("dispatcher.lock"))
            .map_err(io_err("workdir lock"))?;
        lock_workdir(&workdir_lock, &cfg.workdir)?;
        let journal = Journal::open(&cfg.workdir).map_err(io_err("journal"))?;
        // Holding the workdir lock, no other dispatcher can be writing here: a `.lock` file left in
        // the bare clone is the remains of a crash and would block every update of its ref.
        remove_stale_locks(&cfg.workdir.join("repo.git"));
        let sync = Sync::open(
            &cfg.workdir.join("repo.git"),
            &cfg.remote,
            &cfg.branch,
            &cfg.dispatcher_id,
            cfg.access.clone(),
        )?;
        let verifier = cfg
            .trust
            .as_ref()
            .map(|t| crate::git::verify::Verifier::new(sync.repo.path(), &t.file));
        let swept = Scratch::sweep();
        if swept > 0 {
            say(&format!(
                "removed {swept} scratch folder(s) left by dispatchers that were killed"
            ));
        }
        // Handlers may run as another user: they must be able to reach their files, not list them.
        let scratch =
            Scratch::create(0o711).map_err(io_err("could not create a scratch directory"))?;
        let runs = scratch.path().join(RUNS);
        fs::create_dir(&runs)
            .and_then(|()| fs::set_permissions(&runs, fs::Permissions::from_mode(0o711)))
            .map_err(io_err("scratch directory"))?;
        // Descendants that escape a handler's process group are re-parented to the dispatcher, where
        // they can be found and killed when their run ends.
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            say(&format!("warning: could not become a child subreaper: {e}"));
        }
        crate::secrets::install_global(cfg.redactor.clone());
        let hidden = [&cfg.workdir, &cfg.lock_dir, &scratch.path().to_owned()]
            .into_iter()
            .chain(&cfg.secrets_file)
            .cloned()
            .collect();
        let isolation = Isolation::new(hidden);
        for (ok, line) in isolation.report() {
            say(&format!(
                "{}isolation: {line}",
                if ok { "" } else { "warning: " }
            ));
        }
        let (sender, events) = mpsc::channel();
        let now = Instant::now();
        Ok(Self {
            sync,
            inbox: Inbox::default(),
            snapshot: None,
            left: Default::default(),
            staged: Vec::new(),
            running: HashMap::new(),
            finished: Vec::new(),
            watchdogged: HashSet::new(),
            scratch,
            isolation: Arc::new(isolation),
            events,
            sender,
            journal: Arc::new(journal),
            stop: Arc::new(Stop::new(cfg.jobs)),
            resume: HashMap::new(),
            _workdir_lock: workdir_lock,
            metrics: Arc::new(Metrics::new(cfg.poll_interval)),
            progress: Progress::new(now),
            recovered: false,
            shutting_down: false,
            gave_up: None,
            took_one: false,
            syncing: SyncState::new(now),
            push: PushState::new(now),
            summary: Summary::default(),
            claims: Claims::new(&cfg.dispatcher_id, &cfg.host, cfg.lease, &cfg.workdir),
            switches: Default::default(),
            withdrawals: super::withdraw::Withdrawals::open(&cfg.workdir),
            due_at: None,
            verifier,
            approvals_read: HashMap::new(),
            approved: HashMap::new(),
            trust: Default::default(),
            schedules: Default::default(),
            cfg,
        })
    }
}

/// Takes the workdir's lock. A lock that is held is waited for a moment first: a dispatcher that was
/// just killed can leave it held by a child it was starting, whose copy of the dispatcher's open
/// files lives until it executes its program (a few milliseconds, more on a loaded machine).
fn lock_workdir(lock: &fs::File, workdir: &Path) -> Result<(), DaemonError> {
    let since = Instant::now();
    loop {
        match lock.try_lock() {
            Ok(()) => return Ok(()),
            Err(fs::TryLockError::WouldBlock) if since.elapsed() < WORKDIR_LOCK_GRACE => {
                thread::sleep(WORKDIR_LOCK_POLL);
            }
            Err(fs::TryLockError::WouldBlock) => {
                return Err(DaemonError::WorkdirInUse(workdir.to_owned()));
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_err("workdir lock")(e)),
        }
    }
}

/// Creates `path` (and its parents) if it does not exist; a folder it creates gets `mode`.
fn create_dir(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if path.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// Removes `*.lock` files under `refs/` and the lock files of `packed-refs`, `config` and `HEAD`.
fn remove_stale_locks(repo: &Path) {
    fn walk(dir: &Path) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path);
            } else if path.extension().is_some_and(|e| e == "lock") {
                say(&format!("removing `{}`, left by a crash", path.display()));
                let _ = fs::remove_file(&path);
            }
        }
    }
    walk(&repo.join("refs"));
    for name in ["packed-refs.lock", "config.lock", "HEAD.lock"] {
        let path = repo.join(name);
        if path.exists() {
            say(&format!("removing `{}`, left by a crash", path.display()));
            let _ = fs::remove_file(&path);
        }
    }
}
