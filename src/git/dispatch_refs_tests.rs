//! Tests of [`crate::git::dispatch_refs`] against real repositories, for each way a workdir reaches
//! the remote: libgit2 and the `git` command line over `git daemon --enable=receive-pack` on
//! 127.0.0.1 (so `git receive-pack` checks each ref's old value under its lock), and libgit2 on a
//! local path (the ref store written directly in a transaction).

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Barrier, mpsc};
use std::time::Duration;

use git2::{Oid, Repository, Signature};

use crate::git::sync::{Access, Look, RefOutcome, RefUpdate, Sync, SyncError, Transport};

const CLAIM: &str = "refs/dispatch/claims/db";

/// How a workdir reaches the remote in a test.
#[derive(Clone, Copy)]
enum Via {
    Libgit2Daemon,
    CliDaemon,
    LocalPath,
}

/// A bare remote whose `main` holds one commit, and how workdirs reach it (the daemon, while it
/// serves).
struct Remote {
    path: PathBuf,
    url: String,
    transport: Transport,
    _daemon: Option<Daemon>,
}

impl Remote {
    fn new(dir: &Path, via: Via) -> Remote {
        let path = dir.join("remote.git");
        let repo = Repository::init_bare(&path).unwrap();
        let who = Signature::now("submitter", "submitter@example.com").unwrap();
        let tree = repo.find_tree(repo.treebuilder(None).unwrap().write().unwrap());
        repo.commit(
            Some("refs/heads/main"),
            &who,
            &who,
            "start",
            &tree.unwrap(),
            &[],
        )
        .unwrap();
        let (url, transport, daemon) = match via {
            Via::LocalPath => (path.display().to_string(), Transport::Libgit2, None),
            Via::Libgit2Daemon | Via::CliDaemon => {
                let daemon = Daemon::serve(dir);
                let url = format!("git://127.0.0.1:{}/remote.git", daemon.port);
                let transport = match via {
                    Via::CliDaemon => Transport::Cli,
                    _ => Transport::Libgit2,
                };
                (url, transport, Some(daemon))
            }
        };
        Remote {
            path,
            url,
            transport,
            _daemon: daemon,
        }
    }

    /// A dispatcher's workdir `name`, fetched.
    fn workdir(&self, dir: &Path, name: &str) -> Sync {
        let access = Access {
            transport: self.transport,
            ..Access::default()
        };
        let sync = Sync::open(&dir.join(name), &self.url, "main", name, access).unwrap();
        sync.fetch().unwrap();
        sync.reconcile().unwrap();
        sync
    }

    /// The remote's ref `name`, read from its folder.
    fn target(&self, name: &str) -> Option<Oid> {
        Repository::open_bare(&self.path)
            .unwrap()
            .refname_to_id(name)
            .ok()
    }
}

/// `git daemon --enable=receive-pack` serving `dir` on 127.0.0.1, killed (with its children) on drop.
struct Daemon {
    child: Child,
    port: u16,
}

impl Daemon {
    fn serve(dir: &Path) -> Daemon {
        // The port may be taken between the probe and the daemon's bind: try a few.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .unwrap()
                .port();
            let mut child = Command::new("git")
                .env("GIT_CONFIG_GLOBAL", "/dev/null")
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .args(["daemon", "--verbose", "--reuseaddr", "--export-all"])
                .args(["--enable=receive-pack", "--informative-errors"])
                .arg(format!("--base-path={}", dir.display()))
                .args(["--listen=127.0.0.1", &format!("--port={port}")])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .process_group(0)
                .spawn()
                .unwrap();
            // It says "Ready to rumble" once it listens; its log is read to the end meanwhile, so
            // that it never blocks on a full pipe.
            let (ready, wait) = mpsc::channel();
            let log = BufReader::new(child.stderr.take().unwrap());
            std::thread::spawn(move || {
                for line in log.lines().map_while(Result::ok) {
                    if line.contains("Ready to rumble") {
                        let _ = ready.send(());
                    }
                }
            });
            let mut daemon = Daemon { child, port };
            if wait.recv_timeout(Duration::from_secs(10)).is_ok()
                && TcpStream::connect(("127.0.0.1", port)).is_ok()
            {
                return daemon;
            }
            daemon.kill();
        }
        panic!("git daemon did not start");
    }

    fn kill(&mut self) {
        let group = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

fn create(name: &str, new: Oid) -> RefUpdate {
    RefUpdate {
        name: name.to_owned(),
        expect: None,
        new: Some(new),
    }
}

fn update(name: &str, expect: Oid, new: Option<Oid>) -> RefUpdate {
    RefUpdate {
        name: name.to_owned(),
        expect: Some(expect),
        new,
    }
}

/// Runs `$scenario(via)` once per transport, as tests named after it.
macro_rules! for_each_transport {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            use super::Via;
            #[test]
            fn libgit2_over_git_daemon() {
                super::$scenario(Via::Libgit2Daemon);
            }
            #[test]
            fn cli_over_git_daemon() {
                super::$scenario(Via::CliDaemon);
            }
            #[test]
            fn local_path() {
                super::$scenario(Via::LocalPath);
            }
        }
    )*};
}

for_each_transport!(
    look_lists_the_head_and_every_dispatch_ref,
    one_of_two_racing_creates_wins_and_the_other_learns_the_winner,
    a_stale_expect_is_lost_and_leaves_the_ref,
    a_delete_with_the_right_expect_removes_the_ref,
    several_updates_in_one_call_get_one_outcome_each,
    note_message_fetches_a_note_the_other_workdir_wrote,
);

fn look_lists_the_head_and_every_dispatch_ref(via: Via) {
    let dir = tempfile::tempdir().unwrap();
    let remote = Remote::new(dir.path(), via);
    let (a, b) = (
        remote.workdir(dir.path(), "a"),
        remote.workdir(dir.path(), "b"),
    );
    let head = remote.target("refs/heads/main");
    assert_eq!(
        b.look().unwrap(),
        Look {
            head,
            ..Look::default()
        }
    );
    let (claim, beat) = (a.note("claim").unwrap(), a.note("beat").unwrap());
    let heartbeat = "refs/dispatch/dispatchers/a";
    let outcomes = a
        .update_dispatch_refs(&[create(CLAIM, claim), create(heartbeat, beat)])
        .unwrap();
    assert_eq!(outcomes, [RefOutcome::Updated, RefOutcome::Updated]);
    let look = b.look().unwrap();
    assert_eq!(look.head, head);
    let listed: Vec<_> = look.dispatch.into_iter().collect();
    assert_eq!(
        listed,
        [(CLAIM.to_owned(), claim), (heartbeat.to_owned(), beat)]
    );
}

fn one_of_two_racing_creates_wins_and_the_other_learns_the_winner(via: Via) {
    let dir = tempfile::tempdir().unwrap();
    let remote = Remote::new(dir.path(), via);
    let barrier = Barrier::new(2);
    let race = |name: &str| {
        let sync = remote.workdir(dir.path(), name);
        let note = sync.note(&format!("claim of {name}")).unwrap();
        barrier.wait();
        let outcomes = sync.update_dispatch_refs(&[create(CLAIM, note)]).unwrap();
        (note, outcomes)
    };
    let ((a, by_a), (b, by_b)) = std::thread::scope(|s| {
        let a = s.spawn(|| race("a"));
        let b = s.spawn(|| race("b"));
        (a.join().unwrap(), b.join().unwrap())
    });
    let (winner, lost) = match (&by_a[..], &by_b[..]) {
        ([RefOutcome::Updated], [lost]) => (a, lost.clone()),
        ([lost], [RefOutcome::Updated]) => (b, lost.clone()),
        other => panic!("not exactly one winner: {other:?}"),
    };
    assert_eq!(
        lost,
        RefOutcome::Lost {
            current: Some(winner)
        }
    );
    assert_eq!(remote.target(CLAIM), Some(winner));
}

fn a_stale_expect_is_lost_and_leaves_the_ref(via: Via) {
    let dir = tempfile::tempdir().unwrap();
    let remote = Remote::new(dir.path(), via);
    let (a, b) = (
        remote.workdir(dir.path(), "a"),
        remote.workdir(dir.path(), "b"),
    );
    let (held, stale, next) = (
        a.note("1").unwrap(),
        b.note("0").unwrap(),
        b.note("2").unwrap(),
    );
    assert_eq!(
        a.update_dispatch_refs(&[create(CLAIM, held)]).unwrap(),
        [RefOutcome::Updated]
    );
    for attempt in [
        update(CLAIM, stale, Some(next)),
        update(CLAIM, stale, None),
        create(CLAIM, next),
    ] {
        let lost = RefOutcome::Lost {
            current: Some(held),
        };
        assert_eq!(b.update_dispatch_refs(&[attempt]).unwrap(), [lost]);
        assert_eq!(remote.target(CLAIM), Some(held));
    }
}

fn a_delete_with_the_right_expect_removes_the_ref(via: Via) {
    let dir = tempfile::tempdir().unwrap();
    let remote = Remote::new(dir.path(), via);
    let (a, b) = (
        remote.workdir(dir.path(), "a"),
        remote.workdir(dir.path(), "b"),
    );
    let held = a.note("1").unwrap();
    a.update_dispatch_refs(&[create(CLAIM, held)]).unwrap();
    assert_eq!(
        b.update_dispatch_refs(&[update(CLAIM, held, None)])
            .unwrap(),
        [RefOutcome::Updated]
    );
    assert_eq!(remote.target(CLAIM), None);
    assert!(a.look().unwrap().dispatch.is_empty());
}

fn several_updates_in_one_call_get_one_outcome_each(via: Via) {
    let dir = tempfile::tempdir().unwrap();
    let remote = Remote::new(dir.path(), via);
    let (a, b) = (
        remote.workdir(dir.path(), "a"),
        remote.workdir(dir.path(), "b"),
    );
    let [x, y, z] = ["x", "y", "z"].map(|r| format!("refs/dispatch/claims/{r}"));
    let (one, two, other) = (
        a.note("1").unwrap(),
        a.note("2").unwrap(),
        b.note("b").unwrap(),
    );
    a.update_dispatch_refs(&[create(&x, one), create(&y, one)])
        .unwrap();
    b.update_dispatch_refs(&[update(&y, one, Some(other))])
        .unwrap();
    let outcomes = a
        .update_dispatch_refs(&[
            update(&x, one, Some(two)),
            update(&y, one, None),
            create(&z, two),
            update(&x, two, None),
            create("refs/heads/main", two),
        ])
        .unwrap();
    assert_eq!(
        outcomes[..4],
        [
            RefOutcome::Updated,
            RefOutcome::Lost {
                current: Some(other)
            },
            RefOutcome::Updated,
            RefOutcome::Refused(format!("`{x}` is updated twice in one call")),
        ]
    );
    assert!(matches!(&outcomes[4], RefOutcome::Refused(why) if why.contains("refs/dispatch/")));
    let look = b.look().unwrap();
    let listed: Vec<_> = look.dispatch.into_iter().collect();
    assert_eq!(listed, [(x, two), (y, other), (z, two)]);
    assert_eq!(look.head, remote.target("refs/heads/main"));
}

fn note_message_fetches_a_note_the_other_workdir_wrote(via: Via) {
    let dir = tempfile::tempdir().unwrap();
    let remote = Remote::new(dir.path(), via);
    let (a, b) = (
        remote.workdir(dir.path(), "a"),
        remote.workdir(dir.path(), "b"),
    );
    let message = "claim db\n\n{\"resource\":\"db\"}\n";
    let note = a.note(message).unwrap();
    a.update_dispatch_refs(&[create(CLAIM, note)]).unwrap();
    assert!(b.repo.find_commit(note).is_err());
    assert_eq!(b.note_message(CLAIM, note).unwrap(), message);
    assert!(b.repo.find_commit(note).is_ok());
}

/// A note is a commit with the empty tree and no parent, by `git-dispatch`, in the workdir's
/// object files (a handle on the folder alone finds it) even with outcomes held in memory.
#[test]
fn a_note_is_a_parentless_empty_tree_commit_in_the_object_files() {
    let dir = tempfile::tempdir().unwrap();
    let remote = Remote::new(dir.path(), Via::LocalPath);
    let a = remote.workdir(dir.path(), "a");
    let oid = a.note("summary\n\n{}\n").unwrap();
    let disk = Repository::open_bare(dir.path().join("a")).unwrap();
    let commit = disk.find_commit(oid).unwrap();
    assert_eq!(commit.parent_count(), 0);
    assert_eq!(commit.tree().unwrap().len(), 0);
    assert_eq!(commit.author().name().ok(), Some("git-dispatch"));
    assert_eq!(commit.committer().name().ok(), Some("git-dispatch"));
    assert_eq!(commit.message().ok(), Some("summary\n\n{}\n"));
}

/// A remote that cannot be reached is an error, not an outcome.
#[test]
fn an_unreachable_remote_is_an_error() {
    for via in [Via::Libgit2Daemon, Via::CliDaemon] {
        let dir = tempfile::tempdir().unwrap();
        let remote = Remote::new(dir.path(), via);
        let a = remote.workdir(dir.path(), "a");
        let note = a.note("1").unwrap();
        drop(remote);
        let err = a.update_dispatch_refs(&[create(CLAIM, note)]).unwrap_err();
        assert!(matches!(err, SyncError::Unreachable { .. }), "{err}");
        assert!(matches!(a.look(), Err(SyncError::Unreachable { .. })));
    }
}
