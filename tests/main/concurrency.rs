//! Concurrent pushers: another user pushes to the remote while a handler runs, through `git daemon`
//! (receive-pack's atomic ref update) or to the same local path (where the dispatcher writes the pack
//! and moves the branch itself, with a compare-and-swap). The dispatcher's push is then rejected, and
//! it must re-create its outcome on the new tip: nothing lost, nothing run twice, history linear.
//! And the dispatcher's own pushes go on while its handlers run.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::support::{DEFAULT_INDEX, GitDaemon, World, wait_until};

#[test]
fn push_rejected_by_a_concurrent_submitter_is_redone_on_the_new_tip() {
    concurrent_submitter(true);
}

#[test]
fn concurrent_submitter_on_a_local_path_remote_loses_nothing_and_runs_nothing_twice() {
    concurrent_submitter(false);
}

fn concurrent_submitter(over_git_daemon: bool) {
    let world = World::new().build();
    let markers = world.markers.display().to_string();
    world.handler(
        "slow.sh",
        &format!(
            "#!/bin/sh\necho run >> '{markers}/runs-'\"$DISPATCH_ID\"\n\
             touch '{markers}/started-'\"$DISPATCH_ID\"\nsleep 2\necho slow done\n"
        ),
    );
    world.index(&format!(
        "{DEFAULT_INDEX}slow:\n  handler: slow.sh\n  timeout: 30s\n  grace: 1s\n  retries: 0\n"
    ));
    world.publish("add the slow kind");
    let daemon = over_git_daemon.then(|| GitDaemon::serve(&world));
    let url = daemon
        .as_ref()
        .map_or_else(|| world.remote_arg().to_owned(), GitDaemon::url);
    world.submit("slow.yml", "kind: slow\n");

    let mut dispatcher = world.spawn(world.run_command(&url, &["--until-empty"]));
    let started = world.markers.join("started-slow");
    let running = wait_until(Duration::from_secs(20), || {
        started.exists() || !dispatcher.running()
    });
    assert!(
        running && started.exists(),
        "the slow handler never started: {}",
        dispatcher.output_so_far()
    );

    // A second user, with their own clone of the same remote, pushes while the handler sleeps.
    let other = world.clone_from(&url);
    let other_commit = other.submit("late.yml", "kind: echo\n");

    dispatcher.wait(Duration::from_secs(40)).assert_exit(0);

    let clone = world.fresh_clone();
    assert!(
        clone.git_succeeds(&["--git-dir", world.remote_arg(), "fsck", "--strict"]),
        "the remote does not pass git fsck"
    );
    assert_eq!(clone.ls("requests"), [".gitkeep"]);
    assert_eq!(clone.status("slow")["state"], "succeeded");
    assert_eq!(clone.status("late")["state"], "succeeded");
    assert!(
        clone.git_succeeds(&["merge-base", "--is-ancestor", &other_commit, "HEAD"]),
        "the other user's commit {other_commit} was lost"
    );
    assert_eq!(
        clone.git(&["rev-list", "--merges", "HEAD"]),
        "",
        "history is not linear"
    );
    let mut ids = clone.trailers("Dispatch-Id");
    if !over_git_daemon {
        // A local path wakes the dispatcher through inotify: `late` may run beside `slow` and be
        // recorded first.
        ids.sort();
    }
    let expected = if over_git_daemon {
        ["slow", "late"]
    } else {
        ["late", "slow"]
    };
    assert_eq!(ids, expected, "each request has exactly one outcome commit");
    let runs = std::fs::read_to_string(world.markers.join("runs-slow")).expect("runs marker");
    assert_eq!(
        runs.lines().count(),
        1,
        "the handler was re-run to redo the push"
    );
}

#[test]
fn outcomes_are_pushed_while_handlers_run() {
    let world = World::new().build();
    // The world's markers: the handlers' view shows them.
    let marks = world.markers.to_str().unwrap();
    // A handler marks that it runs; the remote's hook notes, at each push, whether one ran.
    world.handler(
        "slow.sh",
        &format!("#!/bin/sh\ntouch {marks}/running\nsleep 0.4\nrm -f {marks}/running\n"),
    );
    world.index(&format!(
        "{DEFAULT_INDEX}slow:\n  handler: slow.sh\n  timeout: 30s\n"
    ));
    world.publish("a slow kind");
    let names: Vec<String> = (1..=8).map(|i| format!("slow-{i}.yml")).collect();
    let files: Vec<(&str, &[u8])> = names
        .iter()
        .map(|n| (n.as_str(), b"kind: slow\n".as_slice()))
        .collect();
    world.submit_many(&files);
    let hook = world.remote.join("hooks/pre-receive");
    fs::write(
        &hook,
        format!(
            "#!/bin/sh\ncat >/dev/null\n[ -e {marks}/running ] && running=yes || running=no\n\
             echo \"running=$running\" >>{marks}/pushes\n"
        ),
    )
    .unwrap();
    fs::set_permissions(&hook, fs::Permissions::from_mode(0o755)).unwrap();
    let daemon = GitDaemon::serve(&world);

    world
        .output(world.run_command(&daemon.url(), &["--until-empty", "--jobs", "1"]))
        .assert_exit(0);

    let pushes = fs::read_to_string(format!("{marks}/pushes")).expect("the hook ran");
    assert!(
        pushes.lines().any(|l| l == "running=yes"),
        "no push while a handler ran (the batch is a second, the handlers 3.2 s): {pushes}"
    );
    assert_eq!(world.fresh_clone().status("slow-8")["state"], "succeeded");
}

/// A pre-receive hook that refuses the branch's first `BUSY_PUSHES` updates, each time moving the
/// branch itself (a commit of "someone else"), as a remote busy with other pushers does.
const BUSY_PUSHES: u32 = 4;

fn busy_remote_hook(counter: &std::path::Path) -> String {
    format!(
        "#!/bin/sh\n\
         grep -q ' refs/heads/main$' || exit 0\n\
         n=$(cat '{c}' 2>/dev/null || echo 0)\n\
         [ \"$n\" -ge {BUSY_PUSHES} ] && exit 0\n\
         echo $((n + 1)) > '{c}'\n\
         unset GIT_QUARANTINE_PATH GIT_OBJECT_DIRECTORY GIT_ALTERNATE_OBJECT_DIRECTORIES\n\
         tip=$(git rev-parse refs/heads/main)\n\
         new=$(echo \"someone else $n\" | git -c user.name=else -c user.email=else@example.com \
         commit-tree \"$tip^{{tree}}\" -p \"$tip\")\n\
         git update-ref refs/heads/main \"$new\" \"$tip\"\n\
         echo 'busy: another push came first' >&2\n\
         exit 1\n",
        c = counter.display()
    )
}

/// Refusals because others pushed first are not failures to reach the remote: each is followed by
/// a remote that moved on, and the outcome is re-made on it as often as that takes, however few
/// `--push-attempts` are allowed.
#[test]
fn until_empty_pushes_through_more_refusals_by_a_busy_remote_than_its_push_attempts() {
    let world = World::new().build();
    world.submit("busy.yml", "kind: echo\n");
    let daemon = GitDaemon::serve(&world);
    let counter = world.markers.join("refused");
    world.pre_receive_hook(&busy_remote_hook(&counter));

    let out = world.run_via(&daemon.url(), &["--push-attempts", "2"]);

    out.assert_exit(0);
    assert_eq!(
        fs::read_to_string(&counter).unwrap_or_default().trim(),
        BUSY_PUSHES.to_string(),
        "the hook did not refuse as often as meant:\n{out}"
    );
    let clone = world.clone_from(&daemon.url());
    assert_eq!(clone.status("busy")["state"], "succeeded");
    assert_eq!(clone.trailers("Dispatch-Id"), ["busy"]);
    let others = clone.git(&["log", "--format=%s"]);
    let others: Vec<&str> = others
        .lines()
        .filter(|s| s.starts_with("someone else"))
        .collect();
    assert_eq!(others.len(), BUSY_PUSHES as usize, "{others:?}");
}
