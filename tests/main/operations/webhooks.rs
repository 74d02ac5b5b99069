//! `POST /hooks/push` with `--webhook-secret-file`: GitHub's, Gitea's and GitLab's forms are
//! verified (a wrong or missing signature gets 401 and is counted), a body over 1 MiB gets 413, too
//! many from one address get 429, nothing is served without the secret file (404), and a verified
//! webhook makes a dispatcher polling once an hour over `git daemon` pick a pushed request up at
//! once.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{DEADLINE, remote_git};
use crate::support::{
    Background, GitDaemon, World, free_port, http_get, http_post, processed, wait_until,
};

const SECRET: &str = "s3cret-for-tests";
const BODY: &[u8] = br#"{"ref":"refs/heads/main","after":"0000"}"#;

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The secret file, mode 600.
fn secret_file(world: &World) -> PathBuf {
    let path = world.root.join("webhook-secret");
    fs::write(&path, format!("{SECRET}\n")).expect("secret file written");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod 600");
    path
}

/// A dispatcher polling once an hour on `remote`, serving HTTP on a port of its own (with the
/// secret file when `secret`), once it answers `/healthz`.
fn start(world: &World, remote: &str, secret: bool) -> (Background, u16) {
    start_with(world, remote, secret, &[])
}

/// [`start`] with more `run` options.
fn start_with(world: &World, remote: &str, secret: bool, extra: &[&str]) -> (Background, u16) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let file = secret_file(world);
    let mut args = vec!["--poll-interval", "1h", "--http-addr", &addr];
    args.extend(extra);
    let file = file.to_str().expect("a UTF-8 path");
    if secret {
        args.extend(["--webhook-secret-file", file]);
    }
    let mut dispatcher = world.spawn(world.run_command(remote, &args));
    let healthy = wait_until(DEADLINE, || {
        http_get(port, "/healthz").is_some_and(|(code, _)| code == 200) || !dispatcher.running()
    });
    assert!(
        healthy && dispatcher.running(),
        "the dispatcher did not come up: {}",
        dispatcher.output_so_far()
    );
    (dispatcher, port)
}

fn counted(port: u16, result: &str) -> u64 {
    let (_, metrics) = http_get(port, "/metrics").expect("/metrics answers");
    let name = format!("git_dispatch_webhooks_total{{result=\"{result}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&name)?.parse().ok())
        .unwrap_or_else(|| panic!("no `{name}` sample:\n{metrics}"))
}

#[test]
fn each_forge_s_signature_is_verified_and_a_wrong_or_missing_one_gets_401() {
    let world = World::new().build();
    let (dispatcher, port) = start(&world, world.remote_arg(), true);
    let good = hmac_hex(SECRET, BODY);
    let bad = hmac_hex("not-the-secret", BODY);
    let cases: [(&str, Vec<String>, u16); 9] = [
        (
            "github",
            vec![format!("X-Hub-Signature-256: sha256={good}")],
            202,
        ),
        (
            "github, wrong",
            vec![format!("X-Hub-Signature-256: sha256={bad}")],
            401,
        ),
        (
            "github, missing",
            vec!["X-GitHub-Event: push".to_owned()],
            401,
        ),
        ("gitea", vec![format!("X-Gitea-Signature: {good}")], 202),
        (
            "gitea, wrong",
            vec![format!("X-Gitea-Signature: {bad}")],
            401,
        ),
        (
            "gitea, missing",
            vec!["X-Gitea-Event: push".to_owned()],
            401,
        ),
        ("gitlab", vec![format!("X-Gitlab-Token: {SECRET}")], 202),
        (
            "gitlab, wrong",
            vec!["X-Gitlab-Token: not-the-secret".to_owned()],
            401,
        ),
        (
            "gitlab, missing",
            vec!["X-Gitlab-Event: Push Hook".to_owned()],
            401,
        ),
    ];
    for (case, headers, expected) in &cases {
        let (code, body) = http_post(port, "/hooks/push", headers, BODY)
            .unwrap_or_else(|| panic!("{case}: no answer: {}", dispatcher.output_so_far()));
        assert_eq!(code, *expected, "{case}: {body}");
    }
    // A signature of another body does not verify this one.
    let (code, _) = http_post(
        port,
        "/hooks/push",
        &[format!("X-Hub-Signature-256: sha256={good}")],
        b"{}",
    )
    .expect("an answer");
    assert_eq!(code, 401, "a signature of another body was accepted");
    assert_eq!(counted(port, "accepted"), 3);
    assert_eq!(counted(port, "rejected"), 7);
    // Only POST.
    assert_eq!(http_get(port, "/hooks/push").map(|(c, _)| c), Some(405));
    dispatcher.terminate();
    dispatcher.wait(DEADLINE).assert_exit(0);
}

#[test]
fn an_oversized_body_gets_413_and_a_flood_gets_429() {
    let world = World::new().build();
    let (mut dispatcher, port) = start(&world, world.remote_arg(), true);
    let signed = |body: &[u8]| {
        vec![format!(
            "X-Hub-Signature-256: sha256={}",
            hmac_hex(SECRET, body)
        )]
    };
    // Said by its Content-Length, refused before it is sent.
    let declared = http_post(
        port,
        "/hooks/push",
        &["Content-Length: 1000000000000".to_owned()],
        b"",
    );
    assert_eq!(declared.map(|(c, _)| c), Some(413));
    // Sent in full: read no further than the limit, still 413, even signed.
    let big = vec![b'x'; 1024 * 1024 + 1];
    let (code, _) = http_post(port, "/hooks/push", &signed(&big), &big).expect("an answer");
    assert_eq!(code, 413);
    // Exactly at the limit it is verified.
    let max = vec![b'x'; 1024 * 1024];
    let (code, body) = http_post(port, "/hooks/push", &signed(&max), &max).expect("an answer");
    assert_eq!(code, 202, "{body}");
    // The other routes are not held up, nor did anything stop the dispatcher.
    assert_eq!(http_get(port, "/healthz").map(|(c, _)| c), Some(200));

    let mut codes = Vec::new();
    for _ in 0..40 {
        codes.push(
            http_post(port, "/hooks/push", &signed(BODY), BODY)
                .expect("an answer")
                .0,
        );
    }
    assert!(
        codes.contains(&429),
        "40 webhooks at once were all served: {codes:?}"
    );
    assert!(codes.iter().all(|c| *c == 202 || *c == 429), "{codes:?}");
    assert!(dispatcher.running(), "{}", dispatcher.output_so_far());
    dispatcher.terminate();
    dispatcher.wait(DEADLINE).assert_exit(0);
}

#[test]
fn without_a_secret_file_no_webhook_is_served() {
    let world = World::new().build();
    let (dispatcher, port) = start(&world, world.remote_arg(), false);
    let (code, _) = http_post(
        port,
        "/hooks/push",
        &[format!("X-Gitlab-Token: {SECRET}")],
        BODY,
    )
    .expect("an answer");
    assert_eq!(code, 404);
    dispatcher.terminate();
    dispatcher.wait(DEADLINE).assert_exit(0);
}

#[test]
fn a_secret_file_others_can_read_is_refused() {
    let world = World::new().build();
    let file = secret_file(&world);
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).expect("chmod 644");
    let file = file.to_str().expect("a UTF-8 path");
    let out = world.run(&["--webhook-secret-file", file]);
    out.assert_exit(2);
    assert!(
        out.stderr.contains("--webhook-secret-file") && out.stderr.contains("chmod 600"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_verified_webhook_makes_a_dispatcher_polling_hourly_pick_a_push_up_at_once() {
    let world = World::new().build();
    let daemon = GitDaemon::serve(&world);
    let (dispatcher, port) = start(&world, &daemon.url(), true);
    world.submit("hooked.yml", "kind: echo\n");
    let pushed_at = Instant::now();
    let (code, body) = http_post(
        port,
        "/hooks/push",
        &[format!("X-Gitea-Signature: {}", hmac_hex(SECRET, BODY))],
        BODY,
    )
    .expect("an answer");
    assert_eq!(code, 202, "{body}");
    let status = processed("hooked", "status.json");
    let picked_up = wait_until(Duration::from_secs(20), || {
        remote_git(
            &world,
            &["cat-file", "-e", &format!("refs/heads/main:{status}")],
        )
        .is_some()
    });
    assert!(
        picked_up,
        "not picked up within 20 s of the webhook (the poll interval is 1 h): {}",
        dispatcher.output_so_far()
    );
    assert!(pushed_at.elapsed() < Duration::from_secs(20));
    assert_eq!(world.fresh_clone().status("hooked")["state"], "succeeded");
    dispatcher.terminate();
    dispatcher.wait(DEADLINE).assert_exit(0);
}

#[test]
fn each_push_of_a_row_is_picked_up_at_its_webhook_while_the_resource_is_still_claimed() {
    let world = World::new().build();
    let daemon = GitDaemon::serve(&world);
    // A long lease: the loop wakes on its own for its claims only every 15 s.
    let (dispatcher, port) = start_with(&world, &daemon.url(), true, &["--lease", "120s"]);
    for i in 1..=3 {
        let id = format!("row-{i}");
        world.submit(&format!("{id}.yml"), "kind: echo\n");
        let (code, _) = http_post(
            port,
            "/hooks/push",
            &[format!("X-Gitea-Signature: {}", hmac_hex(SECRET, BODY))],
            BODY,
        )
        .expect("an answer");
        assert_eq!(code, 202);
        let status = processed(&id, "status.json");
        // Well under the poll interval (1 h) and the claims' own wake-ups (15 s).
        let picked_up = wait_until(Duration::from_secs(5), || {
            remote_git(
                &world,
                &["cat-file", "-e", &format!("refs/heads/main:{status}")],
            )
            .is_some()
        });
        assert!(
            picked_up,
            "{id} not picked up within 5 s of its webhook: {}",
            dispatcher.output_so_far()
        );
    }
    dispatcher.terminate();
    dispatcher.wait(DEADLINE).assert_exit(0);
}
