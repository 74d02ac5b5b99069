//! Tests of the git layer where the risk is, against real repositories in a temporary folder: the
//! reconcile of unpushed outcomes on a remote that moved, a push the remote refuses, and the
//! outcomes staged in memory and written out as a pack that Git itself reads.
//!
//! The whole loop (daemon, handlers, transports over `git daemon`) is in the integration tests
//! (`tests/main.rs`: `pipeline::`, `reliability::`, `records::`, `transports::`).

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use git2::{FileMode, Oid, Repository, Signature};

use crate::git::sync::{Access, Reconciled, Sync, SyncError, Transport, outcome_key};
use crate::git::tree_edit::Edit;
use crate::layout::Place;

const BRANCH: &str = "main";

/// A bare remote whose `main` holds `requests/<name>.yml` for each of `names`.
fn remote(dir: &Path, names: &[&str]) -> PathBuf {
    let path = dir.join("remote.git");
    let repo = Repository::init_bare(&path).unwrap();
    let mut requests = repo.treebuilder(None).unwrap();
    for name in names {
        let blob = repo
            .blob(format!("handler: echo\nid: {name}\n").as_bytes())
            .unwrap();
        requests
            .insert(format!("{name}.yml"), blob, 0o100644)
            .unwrap();
    }
    let requests = requests.write().unwrap();
    let mut root = repo.treebuilder(None).unwrap();
    root.insert("requests", requests, 0o040000).unwrap();
    let tree = repo.find_tree(root.write().unwrap()).unwrap();
    let who = Signature::now("submitter", "submitter@example.com").unwrap();
    repo.commit(Some("refs/heads/main"), &who, &who, "requests", &tree, &[])
        .unwrap();
    path
}

/// A dispatcher's workdir `name` on `remote`, fetched and on the remote's tip.
fn dispatcher(dir: &Path, name: &str, remote: &Path, transport: Transport) -> Sync {
    let access = Access {
        transport,
        ..Access::default()
    };
    let url = remote.to_str().unwrap();
    let sync = Sync::open(&dir.join(name), url, BRANCH, name, access).unwrap();
    sync.fetch().unwrap();
    assert_eq!(sync.reconcile().unwrap(), Reconciled::default());
    sync
}

/// The commit that records `key`'s outcome, as the dispatcher makes it: the request taken out of
/// `requests/`, a status file written, the key in the `Dispatch-Id` trailer.
fn record(sync: &Sync, key: &str) -> Oid {
    let status = sync
        .blob(format!("{{\"id\":\"{key}\"}}\n").as_bytes())
        .unwrap();
    let edits = [
        Edit::Remove {
            path: format!("requests/{key}.yml"),
        },
        Edit::Upsert {
            path: Place::Sharded.status(key),
            oid: status,
            mode: FileMode::Blob,
        },
    ];
    sync.commit(&edits, &format!("done: {key}\n\nDispatch-Id: {key}\n"))
        .unwrap()
}

/// A commit that is not an outcome: `path` written with `text`.
fn write(sync: &Sync, path: &str, text: &str) -> Oid {
    let edits = [Edit::Upsert {
        path: path.to_owned(),
        oid: sync.blob(text.as_bytes()).unwrap(),
        mode: FileMode::Blob,
    }];
    sync.commit(&edits, &format!("edit {path}\n")).unwrap()
}

/// `git` on the repository at `git_dir`, without the user's configuration.
fn git(git_dir: &Path, args: &[&str]) -> Output {
    Command::new("git")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_SYSTEM", "/dev/null")
        .arg("--git-dir")
        .arg(git_dir)
        .args(args)
        .output()
        .unwrap()
}

fn branch_of(git_dir: &Path) -> Oid {
    Repository::open_bare(git_dir)
        .unwrap()
        .refname_to_id("refs/heads/main")
        .unwrap()
}

/// The file `path` in the tree of `commit`, if any.
fn file(sync: &Sync, commit: Oid, path: &str) -> Option<Vec<u8>> {
    let tree = sync.repo.find_commit(commit).unwrap().tree().unwrap();
    let entry = tree.get_path(Path::new(path)).ok()?;
    Some(sync.repo.find_blob(entry.id()).unwrap().content().to_vec())
}

/// The remote moved while `a` held four unpushed commits: `b` recorded `b` and a submitter changed
/// `requests/c.yml`. The reconcile re-creates `a`'s outcomes for `a` and `c` on the new tip (the
/// changed request stays in `requests/`), leaves out its outcome for `b` (the remote records one
/// already) and drops its commit that is not an outcome; the push that follows is a fast-forward.
#[test]
fn reconcile_recreates_unpushed_outcomes_on_the_moved_remote_and_drops_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let origin = remote(dir.path(), &["a", "b", "c"]);
    let a = dispatcher(dir.path(), "a", &origin, Transport::Libgit2);
    let b = dispatcher(dir.path(), "b", &origin, Transport::Libgit2);
    record(&a, "a");
    write(&a, "notes.txt", "only here\n");
    record(&a, "b");
    record(&a, "c");
    assert_eq!(a.persist().unwrap(), 4);
    record(&b, "b");
    write(&b, "requests/c.yml", "handler: echo\nid: c\nedited: yes\n");
    b.push().unwrap();
    let moved = branch_of(&origin);

    assert_eq!(a.fetch().unwrap(), moved);
    let reconciled = a.reconcile().unwrap();
    assert_eq!(
        reconciled,
        Reconciled {
            replayed: 2,
            dropped: 1,
            already_recorded: vec!["b".to_owned()],
            changed: vec![("c".to_owned(), "requests/c.yml".to_owned())],
        }
    );
    let unpushed = a.unpushed_commits().unwrap();
    let keys: Vec<_> = unpushed
        .iter()
        .map(|oid| outcome_key(&a.repo.find_commit(*oid).unwrap()))
        .collect();
    assert_eq!(keys, [Some("a".to_owned()), Some("c".to_owned())]);
    let first = a.repo.find_commit(unpushed[0]).unwrap();
    assert_eq!(
        first.parent_id(0).unwrap(),
        moved,
        "made on the remote's tip"
    );
    let tip = a.tip().unwrap();
    assert_eq!(tip, unpushed[1]);
    assert!(file(&a, tip, &Place::Sharded.status("a")).is_some());
    assert!(file(&a, tip, &Place::Sharded.status("c")).is_some());
    assert!(file(&a, tip, "requests/a.yml").is_none());
    assert!(
        file(&a, tip, "notes.txt").is_none(),
        "a foreign commit is dropped"
    );
    assert_eq!(
        file(&a, tip, "requests/c.yml").unwrap(),
        b"handler: echo\nid: c\nedited: yes\n",
        "the version the remote holds stays"
    );
    let b_status = file(&b, branch_of(&origin), &Place::Sharded.status("b"));
    assert_eq!(file(&a, tip, &Place::Sharded.status("b")), b_status);

    a.push().unwrap();
    assert_eq!(branch_of(&origin), tip);
    assert_eq!(a.remote_tip(), Some(tip));
}

/// A remote with a `pre-receive` hook that refuses every push, pushed to with the `git` transport
/// (receive-pack runs the hook): the push is `Rejected` (a transient error, as the daemon sees it),
/// with the ref and the hook's reason; neither the remote nor the remote-tracking branch moves, and
/// the outcome stays unpushed. Once the hook is gone, the same push goes through.
#[test]
fn a_push_the_remote_hook_refuses_is_rejected_and_nothing_moves() {
    let dir = tempfile::tempdir().unwrap();
    let origin = remote(dir.path(), &["a"]);
    let hook = origin.join("hooks").join("pre-receive");
    fs::create_dir_all(hook.parent().unwrap()).unwrap();
    fs::write(&hook, "#!/bin/sh\necho 'no pushes today' >&2\nexit 1\n").unwrap();
    fs::set_permissions(&hook, fs::Permissions::from_mode(0o755)).unwrap();
    let before = branch_of(&origin);
    let sync = dispatcher(dir.path(), "cli", &origin, Transport::Cli);
    let outcome = record(&sync, "a");

    let err = sync.push().unwrap_err();
    let SyncError::Rejected {
        ref refname,
        ref reason,
        ..
    } = err
    else {
        panic!("not a rejection: {err}");
    };
    // As `push --porcelain` names it: `from:to`.
    assert_eq!(refname, "refs/heads/main:refs/heads/main");
    assert!(reason.contains("pre-receive hook declined"), "{reason}");
    assert!(reason.contains("no pushes today"), "{reason}");
    assert!(err.is_transient());
    assert_eq!(branch_of(&origin), before);
    assert_eq!(sync.remote_tip(), Some(before));
    assert_eq!(sync.unpushed_commits().unwrap(), [outcome]);

    fs::remove_file(&hook).unwrap();
    sync.push().unwrap();
    assert_eq!(branch_of(&origin), outcome);
    assert_eq!(sync.remote_tip(), Some(outcome));
}

/// A push to a local path that moved since the last fetch is `Rejected` (the compare-and-swap of
/// the local transport), and leaves the remote as the other dispatcher pushed it.
#[test]
fn a_push_to_a_local_path_that_moved_since_the_fetch_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let origin = remote(dir.path(), &["a", "b"]);
    let a = dispatcher(dir.path(), "a", &origin, Transport::Libgit2);
    let b = dispatcher(dir.path(), "b", &origin, Transport::Libgit2);
    record(&b, "b");
    b.push().unwrap();
    let theirs = branch_of(&origin);
    record(&a, "a");

    let err = a.push().unwrap_err();
    assert!(
        matches!(&err, SyncError::Rejected { reason, .. } if reason.contains("fetch first")),
        "{err}"
    );
    assert!(err.is_transient());
    assert_eq!(branch_of(&origin), theirs);
}

/// Outcomes committed in memory are nowhere on disk, and the branch does not name them, until
/// `persist`; then they are one pack (no loose object) that `git fsck` finds sound and from which
/// `git cat-file` reads each commit, its trailer and its files. Forty requests make the
/// `requests/` tree large enough to be stored as deltas in that pack.
#[test]
fn outcomes_staged_in_memory_are_written_out_as_one_pack_git_reads() {
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..40).map(|i| format!("request-{i:02}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let origin = remote(dir.path(), &names);
    let sync = dispatcher(dir.path(), "workdir", &origin, Transport::Libgit2);
    let workdir = dir.path().join("workdir");
    let start = sync.tip().unwrap();
    let packs_before = packs(&workdir);
    let loose_before = loose(&workdir);
    let commits: Vec<Oid> = names[..5].iter().map(|key| record(&sync, key)).collect();
    let tip = *commits.last().unwrap();

    assert_eq!(sync.tip(), Some(tip), "the tip is in memory");
    let hex = tip.to_string();
    assert!(!git(&workdir, &["cat-file", "-e", &hex]).status.success());
    assert_eq!(
        branch_of(&workdir),
        start,
        "the branch names no object in memory"
    );

    assert_eq!(sync.persist().unwrap(), 5);
    assert_eq!(branch_of(&workdir), tip);
    let new: Vec<_> = packs(&workdir).difference(&packs_before).cloned().collect();
    assert_eq!(new.len(), 1, "one pack for five outcomes: {new:?}");
    assert_eq!(loose(&workdir), loose_before, "no loose objects");
    let fsck = git(&workdir, &["fsck", "--strict", "--no-dangling"]);
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stderr)
    );
    for (key, commit) in names.iter().zip(&commits) {
        let shown = git(&workdir, &["cat-file", "-p", &commit.to_string()]);
        assert!(shown.status.success());
        let text = String::from_utf8_lossy(&shown.stdout);
        assert!(text.contains(&format!("Dispatch-Id: {key}")), "{text}");
        let status = format!("{commit}:{}", Place::Sharded.status(key));
        let blob = git(&workdir, &["cat-file", "blob", &status]);
        assert_eq!(blob.stdout, format!("{{\"id\":\"{key}\"}}\n").into_bytes());
        let request = format!("{commit}:requests/{key}.yml");
        assert!(
            !git(&workdir, &["cat-file", "-e", &request])
                .status
                .success()
        );
    }
    let idx = new[0].with_extension("idx");
    let deltas = git(&workdir, &["verify-pack", "-v", idx.to_str().unwrap()]);
    assert!(deltas.status.success());
    let deltas = String::from_utf8_lossy(&deltas.stdout);
    assert!(
        deltas
            .lines()
            .any(|l| l.contains(" tree ") && l.split_whitespace().count() >= 7),
        "a tree stored as a delta:\n{deltas}"
    );
}

/// The packs in `git_dir`.
fn packs(git_dir: &Path) -> BTreeSet<PathBuf> {
    fs::read_dir(git_dir.join("objects").join("pack"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "pack"))
        .collect()
}

/// How many loose objects `git_dir` holds.
fn loose(git_dir: &Path) -> usize {
    fs::read_dir(git_dir.join("objects"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().len() == 2)
        .map(|e| fs::read_dir(e.path()).unwrap().count())
        .sum()
}
