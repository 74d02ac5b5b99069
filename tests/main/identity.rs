//! Signed submissions and approvals against the host's trust (`run --trust`, an OpenSSH
//! `allowed_signers` file), with keys made by `ssh-keygen` and commits signed by `git -c
//! gpg.format=ssh -c user.signingkey=...`, as an attacker would try it: an unsigned request, one
//! signed by a stranger's key, one signed by a trusted principal the kind does not accept, a forged
//! author field; an approval by the submitter, approvals by others, a denial, a timeout, an approval
//! of an earlier version of the request.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::support::servers::ssh_keygen;
use crate::support::{DEFAULT_INDEX, RunOutput, World, git_command, wait_until};

/// The principals of the trust file, and Eve, whom it does not list.
const PEOPLE: [&str; 4] = ["ada", "bob", "cy", "eve"];

struct Keys {
    dir: PathBuf,
    trust: String,
}

impl Keys {
    /// A key for each of [`PEOPLE`]; the trust file lists all but Eve, as `NAME@example.org`.
    fn new(world: &World) -> Keys {
        let dir = world.root.join("keys");
        std::fs::create_dir_all(&dir).expect("keys dir");
        let mut allowed = String::new();
        for who in PEOPLE {
            ssh_keygen(&dir.join(who));
            if who != "eve" {
                let public = std::fs::read_to_string(dir.join(format!("{who}.pub"))).expect("pub");
                allowed.push_str(&format!("{who}@example.org {public}"));
            }
        }
        let file = dir.join("allowed_signers");
        std::fs::write(&file, allowed).expect("allowed_signers");
        Keys {
            trust: file.to_str().expect("UTF-8").to_owned(),
            dir,
        }
    }

    fn key(&self, who: &str) -> PathBuf {
        self.dir.join(who)
    }
}

/// Commits `requests/NAME` in the submitter's clone now (a real date), signed with `key` (or not),
/// authored as `author`, and pushes it.
fn submit_signed(world: &World, name: &str, yaml: &str, key: Option<&Path>, author: &str) {
    let clone = &world.submitter;
    clone.sync();
    clone.write(&format!("requests/{name}"), yaml);
    clone.git(&["add", "--", &format!("requests/{name}")]);
    let mut cmd = git_command(&world.home, &clone.dir);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let date = format!("{now} +0000");
    cmd.env("GIT_AUTHOR_DATE", &date)
        .env("GIT_COMMITTER_DATE", &date)
        .env("GIT_AUTHOR_NAME", author)
        .env(
            "GIT_AUTHOR_EMAIL",
            format!("{}@example.org", author.to_lowercase()),
        );
    if let Some(key) = key {
        cmd.args(["-c", "gpg.format=ssh", "-c"])
            .arg(format!("user.signingkey={}", key.display()));
    }
    cmd.args(["commit", "-q"]);
    if key.is_some() {
        cmd.arg("-S");
    }
    cmd.args(["-m", &format!("request {name}")]);
    let out = cmd.output().expect("git commit");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    clone.push();
}

/// Commits what is staged in the submitter's clone, signed by `who`, now, and pushes it.
fn commit_signed(world: &World, keys: &Keys, who: &str, message: &str) {
    let clone = &world.submitter;
    let mut cmd = git_command(&world.home, &clone.dir);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let date = format!("{now} +0000");
    cmd.env("GIT_AUTHOR_DATE", &date)
        .env("GIT_COMMITTER_DATE", &date)
        .args(["-c", "gpg.format=ssh", "-c"])
        .arg(format!("user.signingkey={}", keys.key(who).display()))
        .args(["commit", "-q", "-S", "-m", message]);
    let out = cmd.output().expect("git commit");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    clone.push();
}

/// An admin (Ada) signs the configuration in: the seed commit is unsigned, so with --trust nothing
/// would start.
fn sign_config(world: &World, keys: &Keys) {
    world.submitter.sync();
    world
        .submitter
        .write("handlers/README", "reviewed and signed in by an admin\n");
    world.submitter.git(&["add", "-A"]);
    commit_signed(world, keys, "ada", "the index, signed by an admin");
}

/// `git-dispatch ARGS` in the submitter's clone, signing as `who`.
fn as_signer(world: &World, keys: &Keys, who: &str, args: &[&str]) -> RunOutput {
    let mut cmd = world.dispatcher();
    cmd.current_dir(&world.submitter.dir)
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_COUNT", "3")
        .env("GIT_CONFIG_KEY_2", "commit.gpgsign")
        .env("GIT_CONFIG_VALUE_2", "true")
        .env("GIT_CONFIG_KEY_0", "gpg.format")
        .env("GIT_CONFIG_VALUE_0", "ssh")
        .env("GIT_CONFIG_KEY_1", "user.signingkey")
        .env("GIT_CONFIG_VALUE_1", keys.key(who))
        .env("GIT_AUTHOR_NAME", who)
        .env("GIT_AUTHOR_EMAIL", format!("{who}@example.org"))
        .env("GIT_COMMITTER_NAME", who)
        .env("GIT_COMMITTER_EMAIL", format!("{who}@example.org"));
    world.output(cmd)
}

fn world_with(kinds: &str) -> (World, Keys) {
    let world = World::new()
        .index(&format!("{DEFAULT_INDEX}{kinds}"))
        .handler("deploy.sh", "#!/bin/sh\necho \"deployed $DISPATCH_ID\"\n")
        .build();
    let keys = Keys::new(&world);
    sign_config(&world, &keys);
    (world, keys)
}

fn error_of(world: &World, id: &str) -> String {
    let status = world.fresh_clone().status(id);
    assert_eq!(status["state"], "rejected", "{id}: {status:#}");
    status["error"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn only_a_submitter_the_kind_names_with_a_trusted_signature_gets_a_request_run() {
    let (world, keys) =
        world_with("deploy:\n  handler: deploy.sh\n  submitters: [ada@example.org]\n");
    submit_signed(
        &world,
        "unsigned.yml",
        "kind: deploy\nid: unsigned\n",
        None,
        "Ada",
    );
    submit_signed(
        &world,
        "stranger.yml",
        "kind: deploy\nid: stranger\n",
        Some(&keys.key("eve")),
        "Eve",
    );
    submit_signed(
        &world,
        "other.yml",
        "kind: deploy\nid: other\n",
        Some(&keys.key("bob")),
        "Bob",
    );
    // Bob writes Ada's name in the author field; his key signs.
    submit_signed(
        &world,
        "forged.yml",
        "kind: deploy\nid: forged\n",
        Some(&keys.key("bob")),
        "Ada",
    );
    submit_signed(
        &world,
        "good.yml",
        "kind: deploy\nid: good\n",
        Some(&keys.key("ada")),
        "Ada",
    );
    world.run(&["--trust", &keys.trust]).assert_exit(0);

    assert!(
        error_of(&world, "unsigned").contains("is unsigned"),
        "{}",
        error_of(&world, "unsigned")
    );
    let stranger = error_of(&world, "stranger");
    assert!(
        stranger.contains("a key the trust file does not list (SHA256:"),
        "{stranger}"
    );
    assert!(error_of(&world, "other").contains("`bob@example.org`"));
    let forged = error_of(&world, "forged");
    assert!(
        forged.contains("`bob@example.org`"),
        "the signer counts, not the author: {forged}"
    );
    assert!(
        forged.contains("takes requests only from `ada@example.org`"),
        "{forged}"
    );
    let good = world.fresh_clone().status("good");
    assert_eq!(good["state"], "succeeded", "{good:#}");
    assert_eq!(good["submitter"]["principal"], "ada@example.org");
    assert!(
        good["submitter"]["fingerprint"]
            .as_str()
            .is_some_and(|f| f.starts_with("SHA256:")),
        "{good:#}"
    );
    // Without --trust, a kind with submitters cannot tell: rejected, saying so.
    submit_signed(
        &world,
        "untold.yml",
        "kind: deploy\nid: untold\n",
        Some(&keys.key("ada")),
        "Ada",
    );
    world.run(&[]).assert_exit(0);
    assert!(error_of(&world, "untold").contains("no --trust"));
}

const TWO_APPROVALS: &str = "deploy:\n  handler: deploy.sh\n  approvals: 2\n  approvers: [ada@example.org, bob@example.org, cy@example.org]\n";

#[test]
fn the_page_shows_a_request_awaiting_approval_with_the_approvals_it_has_and_needs() {
    let (world, keys) = world_with(TWO_APPROVALS);
    submit_signed(
        &world,
        "prod.yml",
        "kind: deploy\nid: prod\n",
        Some(&keys.key("ada")),
        "Ada",
    );
    as_signer(&world, &keys, "bob", &["approve", "prod"]).assert_exit(0);
    let port = crate::support::free_port();
    let addr = format!("127.0.0.1:{port}");
    let dispatcher = world.spawn(world.run_command(
        world.remote_arg(),
        &[
            "--poll-interval",
            "200ms",
            "--trust",
            &keys.trust,
            "--http-addr",
            &addr,
        ],
    ));
    let waiting = wait_until(Duration::from_secs(40), || {
        crate::support::http_get(port, "/api/status")
            .is_some_and(|(_, body)| body.contains("\"awaiting_approval\""))
    });
    assert!(
        waiting,
        "not shown awaiting: {}",
        dispatcher.output_so_far()
    );
    let dom = crate::support::chromium(&["--dump-dom"], &format!("http://127.0.0.1:{port}/"));
    let start = dom.find("id=\"approvals\"").expect("an approvals table");
    let table = &dom[start..start + dom[start..].find("</table>").expect("its end")];
    assert!(
        table.contains("prod") && table.contains("1 of 2 filed"),
        "{table}"
    );
    assert!(
        !dom[dom.find("<h2>Queue").expect("a queue")..start].contains(">prod<"),
        "{dom}"
    );
    dispatcher.terminate();
    dispatcher.wait(Duration::from_secs(40)).assert_exit(0);
}

#[test]
fn a_request_waits_until_two_approvers_other_than_its_submitter_approve() {
    let (world, keys) = world_with(TWO_APPROVALS);
    submit_signed(
        &world,
        "prod.yml",
        "kind: deploy\nid: prod\n",
        Some(&keys.key("ada")),
        "Ada",
    );
    let trust = ["--trust", keys.trust.as_str()];
    world.run(&trust).assert_exit(0);
    assert!(
        world.fresh_clone().statuses().is_empty(),
        "ran without approvals"
    );
    let status = as_signer(&world, &keys, "ada", &["status"]);
    assert!(status.stdout.contains("awaiting_approval"), "{status}");
    assert!(
        status.stdout.contains("needs 2 approval(s); 0 filed"),
        "{status}"
    );
    let waiting = as_signer(
        &world,
        &keys,
        "ada",
        &["status", "--state", "awaiting_approval"],
    );
    assert!(waiting.stdout.contains("prod"), "{waiting}");
    let queued = as_signer(&world, &keys, "ada", &["status", "--state", "queued"]);
    assert!(!queued.stdout.contains("prod "), "{queued}");

    // The submitter's own approval does not count; a stranger's neither.
    as_signer(&world, &keys, "ada", &["approve", "prod"]).assert_exit(0);
    as_signer(&world, &keys, "eve", &["approve", "prod"]).assert_exit(0);
    as_signer(
        &world,
        &keys,
        "bob",
        &["approve", "prod", "--comment", "plan ok"],
    )
    .assert_exit(0);
    world.run(&trust).assert_exit(0);
    assert!(
        world.fresh_clone().statuses().is_empty(),
        "ran with one approval"
    );

    as_signer(&world, &keys, "cy", &["approve", "prod"]).assert_exit(0);
    world.run(&trust).assert_exit(0);
    let status = world.fresh_clone().status("prod");
    assert_eq!(status["state"], "succeeded", "{status:#}");
    let approvers: Vec<&str> = status["approvals"]
        .as_array()
        .expect("approvals")
        .iter()
        .filter_map(|a| a["principal"].as_str())
        .collect();
    assert_eq!(
        approvers,
        ["bob@example.org", "cy@example.org"],
        "{status:#}"
    );
    assert_eq!(status["submitter"]["principal"], "ada@example.org");
    let shown = as_signer(&world, &keys, "ada", &["show", "prod"]);
    assert!(
        shown.stdout.contains("submitter  ada@example.org (SHA256:"),
        "{shown}"
    );
    assert!(
        shown.stdout.contains("approvals  bob@example.org (SHA256:"),
        "{shown}"
    );
}

#[test]
fn a_denial_rejects_naming_who_and_why_and_an_approval_of_another_version_does_not_count() {
    let (world, keys) = world_with(TWO_APPROVALS);
    let trust = ["--trust", keys.trust.as_str()];
    submit_signed(
        &world,
        "risky.yml",
        "kind: deploy\nid: risky\n",
        Some(&keys.key("ada")),
        "Ada",
    );
    as_signer(
        &world,
        &keys,
        "bob",
        &["deny", "risky", "--reason", "not during the freeze"],
    )
    .assert_exit(0);
    world.run(&trust).assert_exit(0);
    let error = error_of(&world, "risky");
    assert!(
        error.contains("denied by `bob@example.org`: not during the freeze"),
        "{error}"
    );

    submit_signed(
        &world,
        "moved.yml",
        "kind: deploy\nid: moved\n",
        Some(&keys.key("ada")),
        "Ada",
    );
    as_signer(&world, &keys, "bob", &["approve", "moved"]).assert_exit(0);
    // The request changes after Bob approved it: his approval was of the old version.
    submit_signed(
        &world,
        "moved.yml",
        "kind: deploy\nid: moved\nparams: {}\n",
        Some(&keys.key("ada")),
        "Ada",
    );
    as_signer(&world, &keys, "cy", &["approve", "moved"]).assert_exit(0);
    world.run(&trust).assert_exit(0);
    assert!(
        world.fresh_clone().statuses().len() == 1,
        "moved ran with a stale approval"
    );
}

#[test]
fn a_request_not_approved_within_its_approval_timeout_is_rejected_as_expired() {
    let (world, keys) = world_with(
        "deploy:\n  handler: deploy.sh\n  approvals: 1\n  approvers: [bob@example.org]\n  approval_timeout: 2s\n",
    );
    submit_signed(
        &world,
        "late.yml",
        "kind: deploy\nid: late\n",
        Some(&keys.key("ada")),
        "Ada",
    );
    let trust = ["--trust", keys.trust.as_str()];
    let mut runs = 0;
    let expired = wait_until(Duration::from_secs(30), || {
        runs += 1;
        world.run(&trust).assert_exit(0);
        !world.fresh_clone().statuses().is_empty()
    });
    assert!(expired, "never expired");
    assert!(runs > 1, "it expired at once");
    let error = error_of(&world, "late");
    assert!(
        error.contains("not approved within its approval_timeout of 2s (0 of 1"),
        "{error}"
    );
}

#[test]
fn approve_of_a_request_that_is_not_waiting_exits_1() {
    let (world, keys) = world_with(TWO_APPROVALS);
    let out = as_signer(&world, &keys, "bob", &["approve", "nothing-here"]);
    out.assert_exit(1);
    assert!(
        out.stderr.contains("no request `nothing-here` waiting"),
        "{out}"
    );
}

#[test]
fn a_change_no_admin_signed_is_not_used_its_kinds_wait_and_the_dispatcher_says_so() {
    let (world, keys) = world_with("deploy:\n  handler: deploy.sh\n");
    let trust = [
        "--trust",
        keys.trust.as_str(),
        "--admins",
        "ada@example.org",
    ];
    // Bob, trusted as a submitter but no admin, changes what `deploy` runs.
    world.handler("deploy.sh", "#!/bin/sh\necho \"bob's handler ran\"\n");
    world.submitter.git(&["add", "-A"]);
    commit_signed(&world, &keys, "bob", "deploy: a handler of my own");
    // An unsigned pause, pushed by anyone: not obeyed either.
    world
        .submitter
        .write("control.yml", "paused: true\nreason: not an admin\n");
    world.publish("pause, unsigned");
    submit_signed(
        &world,
        "d.yml",
        "kind: deploy\nid: d\n",
        Some(&keys.key("ada")),
        "Ada",
    );
    world.submit("e.yml", "kind: echo\nid: e\n");
    let out = world.run(&trust);
    out.assert_exit(0);
    assert!(
        out.stderr
            .contains("are not trusted: that commit is `bob@example.org`"),
        "{out}"
    );
    assert!(out.stderr.contains("`control.yml` as changed in"), "{out}");
    let clone = world.fresh_clone();
    assert_eq!(
        clone.status("e")["state"],
        "succeeded",
        "a kind that did not change runs"
    );
    assert_eq!(
        clone.statuses().len(),
        1,
        "deploy ran on an untrusted change: {:?}",
        clone.statuses()
    );

    // Ada signs the change in: now it runs, with the new handler.
    world.submitter.sync();
    world
        .submitter
        .write("handlers/notes.txt", "reviewed by ada\n");
    world.submitter.git(&["add", "-A"]);
    commit_signed(&world, &keys, "ada", "review bob's handler");
    world.run(&trust).assert_exit(0);
    let clone = world.fresh_clone();
    assert_eq!(clone.status("d")["state"], "succeeded");
    let log = clone
        .read_string(&crate::support::log_file("d", 1))
        .expect("log");
    assert!(log.contains("bob's handler ran"), "{log}");
}

#[test]
fn doctor_says_whether_an_admin_signed_the_index_in() {
    let world = world_with_unsigned_index();
    let keys = Keys::new(&world);
    let doctor = |world: &World| {
        let mut cmd = world.dispatcher();
        cmd.args(["doctor", "--remote", world.remote_arg(), "--workdir"])
            .arg(&world.work)
            .arg("--lock-dir")
            .arg(&world.locks)
            .args(["--trust", &keys.trust, "--admins", "ada@example.org"]);
        world.output(cmd)
    };
    let unsigned = doctor(&world);
    assert!(
        unsigned
            .all_output()
            .contains("are not trusted: the commit that made them"),
        "{unsigned}"
    );
    assert!(unsigned.all_output().contains("is unsigned"), "{unsigned}");
    sign_config(&world, &keys);
    let signed = doctor(&world);
    assert!(
        signed
            .all_output()
            .contains("were signed in by an admin (ada@example.org)"),
        "{signed}"
    );
}

fn world_with_unsigned_index() -> World {
    World::new().build()
}

#[test]
fn with_trust_a_cancel_names_its_verified_signer_not_its_author_field() {
    let (world, keys) = world_with("deploy:\n  handler: deploy.sh\n");
    submit_signed(
        &world,
        "c.yml",
        "kind: deploy\nid: c\n",
        Some(&keys.key("ada")),
        "Ada",
    );
    // Bob cancels, signing with his key; his author field says Bob too, but the signer counts.
    as_signer(
        &world,
        &keys,
        "bob",
        &["cancel", "c", "--reason", "wrong target"],
    )
    .assert_exit(0);
    world.run(&["--trust", &keys.trust]).assert_exit(0);
    let status = world.fresh_clone().status("c");
    assert_eq!(status["state"], "cancelled", "{status:#}");
    assert_eq!(status["cancelled_by"], "bob@example.org", "{status:#}");
}

#[test]
fn a_schedule_no_admin_signed_makes_no_requests() {
    let (world, keys) = world_with("deploy:\n  handler: deploy.sh\n");
    world.submitter.sync();
    world.submitter.write(
        "schedules/often.yml",
        "every: 1s\nrequest: {kind: deploy}\n",
    );
    world.submitter.git(&["add", "-A"]);
    commit_signed(&world, &keys, "bob", "a schedule of my own");
    let out = world.run(&["--trust", &keys.trust, "--admins", "ada@example.org"]);
    out.assert_exit(0);
    assert!(out.stderr.contains("`schedules/` as changed in"), "{out}");
    assert!(
        world.fresh_clone().statuses().is_empty(),
        "an unsigned schedule ran"
    );
}
