//! Attacks on the claims, by a user with push access to the inbox and by chaos: records pushed by
//! hand under `refs/dispatch/` (not JSON, huge, at names outside the protocol's, naming a resource
//! their ref does not), a claim deleted or rewound under its holder, two dispatchers with one id.
//! Each still starts a request at most once and records it once.

use std::fs;
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use super::{add_work_kind, alive, assert_recorded_once, submit_spread};
use crate::support::fleet::{
    Member, Runs, assert_no_overlap, now_ns, outputs, tally, wait_for_outcomes,
};
use crate::support::{Checkout, GitDaemon, Strays, World, wait_until};

const EMPTY_TREE: &str = "4b825dc642cb6eb9a060e54bf8d69288fbee4904";

/// Pushes a parentless commit of the empty tree whose message is `message` to the remote's `name`
/// (forced: it replaces whatever is there); returns the commit.
fn force_note(clone: &Checkout, name: &str, message: &[u8]) -> String {
    let file = clone.path(".git/forged-message");
    fs::write(&file, message).expect("write the message");
    let file = file.display().to_string();
    let oid = clone.git(&["commit-tree", EMPTY_TREE, "-F", &file]);
    clone.git(&["push", "-q", "-f", "origin", &format!("{oid}:{name}")]);
    oid
}

/// What the remote's `name` holds (empty: no such ref).
fn remote_ref(clone: &Checkout, name: &str) -> String {
    clone
        .git(&["ls-remote", "origin", name])
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// A claim record as a dispatcher writes it.
fn claim_message(resource: &str, dispatcher: &str, boot: &str, ids: &[&str]) -> Vec<u8> {
    let requests: Vec<_> = ids
        .iter()
        .map(|id| json!({"id": id, "path": format!("requests/{id}.yml")}))
        .collect();
    let record = json!({
        "version": 1, "resource": resource, "dispatcher": dispatcher, "boot": boot,
        "host": "nowhere", "requests": requests, "since": "2026-01-01T00:00:00Z",
        "renewed_at": "2026-01-01T00:00:00Z", "lease_ms": 2000,
    });
    format!("claim {resource} by {dispatcher}\n\n{record}\n").into_bytes()
}

/// The most memory process `pid` has held so far, in kB (`VmHWM`).
fn peak_kb(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read the status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[test]
fn forged_records_under_refs_dispatch_neither_stop_nor_mislead_a_dispatcher_or_status() {
    let world = World::new().build();
    let runs = Runs::new(&world);
    // Long enough that the forged claims expire (lease 2 s) while `alpha` runs `res-00`.
    add_work_kind(&world, &runs, "3", "");
    let daemon = GitDaemon::serve(&world);
    let resource_of = submit_spread(&world, "work", "w", 2, 1);
    let forger = world.clone_from(&daemon.url());
    force_note(
        &forger,
        "refs/dispatch/claims/junk",
        b"junk\n\nnot json at all\n",
    );
    force_note(
        &forger,
        "refs/dispatch/dispatchers/ghost",
        b"heartbeat\n\n{\"version\":1,\n",
    );
    force_note(&forger, "refs/dispatch/odd", b"no record");
    // Outside the rules: a claim of `res-00`, listing its queued requests, at a ref that is not
    // `res-00`'s. Taking it over would be a compare-and-swap on `res-00`'s ref.
    let forged = claim_message("res-00", "ghost", "g1", &["w-000", "w-001"]);
    force_note(&forger, "refs/dispatch/claims/deep/er", &forged);
    force_note(&forger, "refs/dispatch/claims/zzz", &forged);

    let mut alpha = Member::start(&world, &daemon.url(), "alpha", &["--lease", "2s"]);
    let watch = world.clone_from(&daemon.url());
    assert!(
        wait_for_outcomes(&watch, 2, Duration::from_secs(90)),
        "the requests were not recorded:\n{}",
        alpha.output_so_far()
    );
    assert!(alpha.running(), "alpha stopped:\n{}", alpha.output_so_far());
    let status = {
        let mut cmd = world.dispatcher();
        cmd.current_dir(&world.submitter.dir).args(["status"]);
        world.output(cmd)
    };
    status.assert_exit(0);
    assert!(
        status.stdout.contains("refs/dispatch/claims/junk"),
        "status does not name the unreadable claim:\n{status}"
    );
    let out = alpha.stop(Duration::from_secs(30));
    out.assert_exit(0);

    let clone = world.clone_from(&daemon.url());
    assert_recorded_once(&clone, resource_of.keys());
    for id in resource_of.keys() {
        let status = clone.status(id);
        assert_eq!(status["state"], "succeeded", "{id}: {status:#}\n{out}");
    }
    assert_eq!(runs.started(), 2, "{out}");
    let junk = out.stderr.matches("refs/dispatch/claims/junk").count();
    assert!(junk <= 1, "the junk claim is reported {junk} times:\n{out}");
}

#[test]
fn a_huge_record_is_not_read_whole_by_a_dispatcher_or_status() {
    const HUGE: usize = 50 << 20;
    let world = World::new().build();
    let daemon = GitDaemon::serve(&world);
    let forger = world.clone_from(&daemon.url());
    let mut message = b"claim big by ghost\n\n".to_vec();
    message.resize(HUGE, b'x');
    force_note(&forger, "refs/dispatch/claims/big", &message);
    force_note(&forger, "refs/dispatch/dispatchers/big", &message);

    let mut alpha = Member::start(&world, &daemon.url(), "alpha", &["--lease", "2s"]);
    // Seen at once, expired after the lease: then it is read, or left alone.
    assert!(
        alpha.wait_for_output("refs/dispatch/claims/big", Duration::from_secs(60)),
        "alpha said nothing of the huge claim:\n{}",
        alpha.output_so_far()
    );
    let peak = peak_kb(alpha.pid().expect("running"));
    let out = alpha.stop(Duration::from_secs(30));
    out.assert_exit(0);
    // The fetch of the record (libgit2 inflates it to check it) costs up to its size; reading it
    // whole, besides, costs twice that again.
    assert!(
        peak < 80 << 10,
        "alpha held {peak} kB at its peak, for a record of {HUGE} bytes:\n{out}"
    );

    // The fetch of the refs (by `git`, whose memory is its own), then `status` reading them.
    let mut fetch = world.dispatcher();
    fetch.current_dir(&world.submitter.dir).arg("status");
    world.output(fetch).assert_exit(0);
    let mut status = Command::new("/usr/bin/time");
    let base = world.dispatcher();
    status
        .args(["-f", "peak-kb %M"])
        .arg(base.get_program())
        .args(["status", "--no-fetch"])
        .current_dir(&world.submitter.dir)
        .env_clear()
        .envs(base.get_envs().filter_map(|(k, v)| Some((k, v?))));
    let status = world.output(status);
    status.assert_exit(0);
    let peak: u64 = status
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("peak-kb "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak in:\n{status}"));
    assert!(
        peak < 40 << 10,
        "status held {peak} kB at its peak, for records of {HUGE} bytes:\n{status}"
    );
    assert!(
        status.stdout.contains("refs/dispatch/claims/big"),
        "status does not name the unreadable claim:\n{status}"
    );
}

/// A world whose kind `long` sleeps an hour (timeout 60 s,
/// grace 1 s), with `long-1` submitted; the remote served by `git daemon`.
fn long_world() -> (World, Strays, GitDaemon) {
    let world = World::new().build();
    let strays = Strays::sleeping(3600);
    let script = format!("#!/bin/sh\nexec {}\n", strays.command);
    world.handler("long.sh", &script);
    world.index(&format!(
        "{}long:\n  handler: long.sh\n  timeout: 60s\n  grace: 1s\n  resource: db\n",
        crate::support::DEFAULT_INDEX
    ));
    world.publish("the long kind");
    let daemon = GitDaemon::serve(&world);
    world.submit("long-1.yml", "kind: long\nid: long-1\n");
    (world, strays, daemon)
}

/// Starts `alpha` (lease 4 s) on `long_world`, waits for its handler, lets `tamper` change the claim
/// ref by hand, and checks that the handler is stopped and `long-1` recorded `abandoned` once.
fn tamper_with_the_claim(tamper: impl FnOnce(&Checkout, &str)) {
    let (world, strays, daemon) = long_world();
    let mut alpha = Member::start(&world, &daemon.url(), "alpha", &["--lease", "4s"]);
    let mut pid = String::new();
    assert!(
        wait_until(Duration::from_secs(60), || {
            // The pid on the host: an isolated handler is pid 1 in its own namespace.
            pid = strays
                .pids()
                .first()
                .map(i32::to_string)
                .unwrap_or_default();
            !pid.is_empty()
        }),
        "alpha did not start the handler:\n{}",
        alpha.output_so_far()
    );
    let forger = world.clone_from(&daemon.url());
    let name = "refs/dispatch/claims/db";
    assert!(
        forger.git_succeeds(&["fetch", "-q", "origin", &format!("+{name}:refs/held")]),
        "no claim of `db` while it runs:\n{}",
        alpha.output_so_far()
    );
    let held = forger.git(&["rev-parse", "refs/held"]);
    tamper(&forger, &held);

    assert!(
        wait_until(Duration::from_secs(15), || !alive(&pid)),
        "alpha's handler (pid {pid}) still runs after its claim was changed by hand:\n{}",
        alpha.output_so_far()
    );
    let watch = world.clone_from(&daemon.url());
    assert!(
        wait_for_outcomes(&watch, 1, Duration::from_secs(30)),
        "`long-1` was not recorded:\n{}",
        alpha.output_so_far()
    );
    let out = alpha.stop(Duration::from_secs(30));
    out.assert_exit(0);
    let clone = world.clone_from(&daemon.url());
    assert_recorded_once(&clone, [&"long-1".to_owned()]);
    let status = clone.status("long-1");
    assert_eq!(status["state"], "abandoned", "{status:#}\n{out}");
    strays.assert_gone("after alpha stopped");
}

#[test]
fn a_claim_deleted_by_hand_stops_its_handler_and_one_outcome_is_recorded() {
    tamper_with_the_claim(|forger, _| {
        forger.git(&["push", "-q", "origin", ":refs/dispatch/claims/db"]);
    });
}

#[test]
fn a_claim_rewound_by_hand_stops_its_handler_and_one_outcome_is_recorded() {
    tamper_with_the_claim(|forger, held| {
        let name = "refs/dispatch/claims/db";
        // Renewed every second (a quarter of the lease): then put the older commit back.
        assert!(
            wait_until(Duration::from_secs(20), || {
                let now = remote_ref(forger, name);
                !now.is_empty() && now != held
            }),
            "the claim was not renewed"
        );
        forger.git(&["push", "-q", "-f", "origin", &format!("{held}:{name}")]);
    });
}

#[test]
fn two_dispatchers_with_one_id_on_two_workdirs_still_start_each_request_once() {
    let world = World::new().build();
    let runs = Runs::new(&world);
    add_work_kind(&world, &runs, "0.1", "");
    let daemon = GitDaemon::serve(&world);
    let resource_of = submit_spread(&world, "work", "t", 40, 8);
    let options = ["--lease", "4s", "--jobs", "2"];
    let mut fleet = vec![
        Member::start_as(&world, &daemon.url(), "twin-1", "twin", &options),
        Member::start_as(&world, &daemon.url(), "twin-2", "twin", &options),
    ];
    let watch = world.clone_from(&daemon.url());
    assert!(
        wait_for_outcomes(&watch, 40, Duration::from_secs(120)),
        "40 requests not recorded:\n{}",
        outputs(&fleet)
    );
    let stopped_at = now_ns();
    for member in &mut fleet {
        member.stop(Duration::from_secs(30)).assert_exit(0);
    }
    let started = runs.read();
    let counts = tally(started.iter().map(|r| r.id.as_str()));
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "started more than once: {twice:?}");
    assert_no_overlap(&started, &resource_of, |_| stopped_at);
    let clone = world.clone_from(&daemon.url());
    assert_recorded_once(&clone, resource_of.keys());
}
