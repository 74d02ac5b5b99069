//! Confinement: what a handler cannot do. It runs as an unprivileged user (`--run-as`, `nobody` by
//! default when the dispatcher is root), under its kind's rlimits (`memory`, `nproc`), is killed whole
//! at its timeout and leaves nothing running when it ends; it gets only the secrets its kind lists, and
//! no common encoding of them reaches a committed log; its log is capped; it can only be an executable
//! file inside `handlers/`; and it cannot write into the dispatcher's workdir or lock dir.
//!
//! Every limit is shown to bind: a handler tries to break it and the test asserts that the attempt
//! failed, with a control where the attempt would otherwise succeed. Tests that mean nothing unless the
//! dispatcher is root stop early elsewhere and say why; `sandbox_tests_ran_as_root_in_ci` keeps those
//! skips out of CI. Left-over processes are recognised by a `sleep` argument unique to the test and to
//! this test process, so neither parallel tests nor a second test run on the same host are mistaken for
//! them (or killed by their clean-up).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};

use crate::support::{
    DEFAULT_INDEX, RUN_DEADLINE, Strays, World, between, git_command, id, line_value, log_file,
    root_or_skip, running_as_root, sha256_hex,
};

/// One entry of `handlers/index.yml`: `handler` and the given `key: value` settings.
fn entry(kind: &str, handler: &str, settings: &[&str]) -> String {
    let mut yaml = format!("{kind}:\n  handler: {handler}\n");
    for setting in settings {
        yaml.push_str("  ");
        yaml.push_str(setting);
        yaml.push('\n');
    }
    yaml
}

/// The default index plus `entries`.
fn index_with(entries: &[String]) -> String {
    format!("{DEFAULT_INDEX}{}", entries.concat())
}

/// Prints who the handler runs as.
const WHOAMI: &str =
    "#!/bin/sh\necho \"UID=$(id -u)\"\necho \"GID=$(id -g)\"\necho \"GROUPS=$(id -G)\"\n";

fn whoami_world() -> World {
    World::new()
        .handler("whoami.sh", WHOAMI)
        .index(&index_with(&[entry(
            "whoami",
            "whoami.sh",
            &["timeout: 30s", "grace: 1s"],
        )]))
        .build()
}

#[test]
fn sandbox_tests_ran_as_root_in_ci() {
    // The tests below that need root stop early (and pass) elsewhere; in CI that would count them as
    // coverage they are not, so CI must run the suite as root.
    if std::env::var_os("CI").is_some() {
        assert!(
            running_as_root(),
            "CI is set but the tests do not run as root: the sandbox tests that switch users were skipped"
        );
    }
}

#[test]
fn as_root_the_handler_runs_as_nobody_with_only_nobodys_groups() {
    if !root_or_skip("as_root_the_handler_runs_as_nobody_with_only_nobodys_groups") {
        return;
    }
    let world = whoami_world();
    world.submit("who.yml", "kind: whoami\n");

    world.run(&[]).assert_exit(0);

    let log = world
        .fresh_clone()
        .read_string(&log_file("who", 1))
        .expect("the log is committed");
    assert_eq!(
        line_value(&log, "UID"),
        id(&["-u", "nobody"]),
        "not nobody's uid:\n{log}"
    );
    assert_ne!(line_value(&log, "UID"), "0");
    assert_eq!(line_value(&log, "GID"), id(&["-g", "nobody"]));
    let mut groups: Vec<&str> = line_value(&log, "GROUPS").split_whitespace().collect();
    groups.sort_unstable();
    let nobody_groups = id(&["-G", "nobody"]);
    let mut expected: Vec<&str> = nobody_groups.split_whitespace().collect();
    expected.sort_unstable();
    assert_eq!(
        groups, expected,
        "the handler kept groups of the dispatcher (root's supplementary groups were not dropped)"
    );
}

#[test]
fn run_as_root_runs_the_handler_as_uid_0_and_warns() {
    if !root_or_skip("run_as_root_runs_the_handler_as_uid_0_and_warns") {
        return;
    }
    let world = whoami_world();
    world.submit("who.yml", "kind: whoami\n");

    let mut run = world.run_command(world.remote_arg(), &["--until-empty"]);
    run.env("GIT_DISPATCH_RUN_AS", "root");
    let out = world.output(run);
    out.assert_exit(0);

    let log = world
        .fresh_clone()
        .read_string(&log_file("who", 1))
        .expect("the log is committed");
    assert_eq!(line_value(&log, "UID"), "0");
    assert!(
        out.stderr
            .lines()
            .any(|line| line.contains("warning") && line.contains("root")),
        "no warning about handlers running as root\n{out}"
    );
}

#[test]
fn a_dispatcher_not_started_as_root_refuses_to_run_handlers_as_another_user() {
    if !root_or_skip("a_dispatcher_not_started_as_root_refuses_to_run_handlers_as_another_user") {
        return;
    }
    let world = whoami_world();
    world.submit("who.yml", "kind: whoami\n");
    let uid: u32 = id(&["-u", "nobody"]).parse().expect("a numeric uid");
    let gid: u32 = id(&["-g", "nobody"]).parse().expect("a numeric gid");

    let mut run = world.run_command(world.remote_arg(), &["--until-empty", "--run-as", "root"]);
    run.uid(uid).gid(gid);
    let out = world.output(run);

    out.assert_exit(2);
    assert!(
        out.stderr.contains("--run-as"),
        "the error does not name `--run-as`\n{out}"
    );
    assert_eq!(
        world.fresh_clone().ls("requests"),
        [".gitkeep", "who.yml"],
        "a refused configuration still took the request"
    );
}

#[test]
fn a_one_gib_allocation_fails_under_memory_100mib_and_succeeds_under_2gib() {
    let hog = "#!/bin/sh\nexec python3 -c 'b = bytearray(1 << 30); print(\"ALLOCATED\", len(b))'\n";
    let world = World::new()
        .handler("hog.sh", hog)
        .index(&index_with(&[
            entry(
                "hog-small",
                "hog.sh",
                &["memory: 100MiB", "timeout: 30s", "grace: 1s"],
            ),
            entry(
                "hog-large",
                "hog.sh",
                &["memory: 2GiB", "timeout: 30s", "grace: 1s"],
            ),
        ]))
        .build();
    world.submit("hog-small.yml", "kind: hog-small\n");
    world.submit("hog-large.yml", "kind: hog-large\n");

    world.run(&[]).assert_exit(0);

    let clone = world.fresh_clone();
    let small = clone.status("hog-small");
    let small_log = clone
        .read_string(&log_file("hog-small", 1))
        .unwrap_or_default();
    assert_eq!(
        small["state"], "failed",
        "1 GiB fit under `memory: 100MiB`: {small:#}\n{small_log}"
    );
    assert!(
        small_log.contains("MemoryError") && !small_log.contains("ALLOCATED"),
        "the allocation did not fail with MemoryError:\n{small_log}"
    );
    let large = clone.status("hog-large");
    let large_log = clone
        .read_string(&log_file("hog-large", 1))
        .unwrap_or_default();
    assert_eq!(
        large["state"], "succeeded",
        "the control failed: {large:#}\n{large_log}"
    );
    assert!(
        large_log.contains("ALLOCATED 1073741824"),
        "the control did not allocate 1 GiB:\n{large_log}"
    );
}

#[test]
fn a_fork_loop_hits_nproc_and_leaves_no_process_behind() {
    // RLIMIT_NPROC counts every process of the handler's user: only as `nobody` under a root
    // dispatcher is that count known to start near zero.
    if !root_or_skip("a_fork_loop_hits_nproc_and_leaves_no_process_behind") {
        return;
    }
    let strays = Strays::sleeping(31337);
    let forker = format!(
        "#!/bin/sh\ni=0\nwhile [ $i -lt 200 ]; do\n  {} &\n  i=$((i+1))\ndone\necho \"STARTED $i\"\nwait\n",
        strays.command
    );
    let world = World::new()
        .handler("forker.sh", &forker)
        .index(&index_with(&[entry(
            "forker",
            "forker.sh",
            &["nproc: 50", "timeout: 5s", "grace: 1s"],
        )]))
        .build();
    world.submit("forker.yml", "kind: forker\n");

    world.run(&[]).assert_exit(0);

    let clone = world.fresh_clone();
    let status = clone.status("forker");
    let log = clone
        .read_string(&log_file("forker", 1))
        .expect("the log is committed");
    assert!(
        status["state"] == "failed" || status["state"] == "timed_out",
        "unexpected outcome: {status:#}\n{log}"
    );
    assert!(
        ["Cannot fork", "Resource temporarily unavailable"]
            .iter()
            .any(|e| log.contains(e)),
        "no fork failure in the log (was `nproc: 50` applied?):\n{log}"
    );
    assert!(
        !log.contains("STARTED 200"),
        "all 200 forks succeeded under `nproc: 50`:\n{log}"
    );
    strays.assert_gone("the fork loop's children");
}

#[test]
fn at_timeout_the_group_gets_sigterm_then_sigkill_and_nothing_of_it_survives() {
    // `stubborn-child`: the handler dies of SIGTERM, but its child ignores it and has cleared its
    // environment, so only the kill of the whole process group (not the search for `DISPATCH_ID`)
    // reaches it. `stubborn-handler`: the handler itself ignores SIGTERM and ends by SIGKILL.
    let grandchild = Strays::sleeping(31338);
    let sleeper = Strays::sleeping(31340);
    let world = World::new()
        .handler(
            "stubborn-child.sh",
            &format!(
                "#!/bin/sh\nenv -i PATH=\"$PATH\" sh -c 'trap \"\" TERM; {}' &\nwait\n",
                grandchild.command
            ),
        )
        .handler(
            "stubborn-handler.sh",
            &format!(
                "#!/bin/sh\ntrap '' TERM\n{}\necho unreachable\n",
                sleeper.command
            ),
        )
        .index(&index_with(&[
            entry(
                "stubborn-child",
                "stubborn-child.sh",
                &["timeout: 1s", "grace: 1s"],
            ),
            entry(
                "stubborn-handler",
                "stubborn-handler.sh",
                &["timeout: 1s", "grace: 1s"],
            ),
        ]))
        .build();
    world.submit("stubborn-child.yml", "kind: stubborn-child\n");
    world.submit("stubborn-handler.yml", "kind: stubborn-handler\n");

    world.run(&[]).assert_exit(0);

    let clone = world.fresh_clone();
    let child = clone.status("stubborn-child");
    assert_eq!(child["state"], "timed_out", "{child:#}");
    let handler = clone.status("stubborn-handler");
    assert_eq!(handler["state"], "timed_out", "{handler:#}");
    assert_eq!(
        handler["signal"], 9,
        "a handler ignoring SIGTERM ends by SIGKILL after the grace: {handler:#}"
    );
    let ms = handler["duration_ms"].as_u64().expect("duration_ms");
    assert!(
        (1900..15_000).contains(&ms),
        "SIGKILL came after {ms} ms, expected timeout 1s + grace 1s: {handler:#}"
    );
    grandchild.assert_gone("the grandchild that ignores SIGTERM");
    sleeper.assert_gone("the child of the handler that ignores SIGTERM");
}

#[test]
fn descendants_that_left_the_process_group_are_killed_when_the_handler_exits() {
    // Two daemons: a classic double fork (the subshell exits at once, its child starts a session of
    // its own), and the same where the escaped shell keeps a child. The handler waits until both are
    // set up, shows their sessions, and exits 0.
    let daemon = Strays::sleeping(31339);
    let chain = Strays::sleeping(31342);
    let escape = format!(
        r#"#!/bin/sh
( setsid sh -c 'echo $$ > daemon.pid; exec {daemon}' </dev/null >/dev/null 2>&1 & )
( setsid sh -c '{chain} & echo $! > chain.pid; wait' </dev/null >/dev/null 2>&1 & )
while [ ! -s daemon.pid ] || [ ! -s chain.pid ]; do sleep 0.05; done
echo "MY-SID=$(cut -d' ' -f6 /proc/$$/stat)"
echo "DAEMON-SID=$(cut -d' ' -f6 /proc/$(cat daemon.pid)/stat)"
echo "CHAIN-SID=$(cut -d' ' -f6 /proc/$(cat chain.pid)/stat)"
"#,
        daemon = daemon.command,
        chain = chain.command
    );
    let world = World::new()
        .handler("escape.sh", &escape)
        .index(&index_with(&[entry(
            "escape",
            "escape.sh",
            &["timeout: 30s", "grace: 1s"],
        )]))
        .build();
    world.submit("escape.yml", "kind: escape\n");

    world.run(&[]).assert_exit(0);

    let clone = world.fresh_clone();
    let status = clone.status("escape");
    let log = clone
        .read_string(&log_file("escape", 1))
        .expect("the log is committed");
    assert_eq!(status["state"], "succeeded", "{status:#}\n{log}");
    let own = line_value(&log, "MY-SID");
    for key in ["DAEMON-SID", "CHAIN-SID"] {
        assert_ne!(
            line_value(&log, key),
            own,
            "the escapee did not leave the handler's session, so this proves nothing:\n{log}"
        );
    }
    daemon.assert_gone("the double-forked daemon");
    chain.assert_gone("the child of the double-forked daemon");
}

#[test]
fn a_chain_of_40_nested_sessions_left_behind_is_killed_to_its_last_link() {
    // Each link starts the next in a session of its own and becomes a `sleep`: killing one
    // re-parents the next to the dispatcher (a child subreaper), so the chain is found one link
    // per search. The handler waits until the deepest link is up, shows how many there are, and
    // exits 0.
    const DEPTH: u32 = 40;
    let link = Strays::sleeping(31346);
    let script = format!(
        r#"#!/bin/sh
mkdir links
cat > chain.sh <<'EOF'
echo $$ > links/$1
if [ "$1" -gt 0 ]; then setsid sh chain.sh $(($1 - 1)) </dev/null >/dev/null 2>&1 & fi
exec {link}
EOF
( setsid sh chain.sh {DEPTH} </dev/null >/dev/null 2>&1 & )
while [ ! -s links/0 ]; do sleep 0.05; done
echo "LINKS=$(ls links | wc -l)"
echo "MY-SID=$(cut -d' ' -f6 /proc/$$/stat)"
echo "DEEPEST-SID=$(cut -d' ' -f6 /proc/$(cat links/0)/stat)"
"#,
        link = link.command
    );
    let world = World::new()
        .handler("chain.sh", &script)
        .index(&index_with(&[entry(
            "chain",
            "chain.sh",
            &["timeout: 60s", "grace: 1s"],
        )]))
        .build();
    world.submit("chain.yml", "kind: chain\n");

    world.run(&[]).assert_exit(0);

    let clone = world.fresh_clone();
    let status = clone.status("chain");
    let log = clone
        .read_string(&log_file("chain", 1))
        .expect("the log is committed");
    assert_eq!(status["state"], "succeeded", "{status:#}\n{log}");
    assert_eq!(line_value(&log, "LINKS"), (DEPTH + 1).to_string(), "{log}");
    assert_ne!(
        line_value(&log, "DEEPEST-SID"),
        line_value(&log, "MY-SID"),
        "the chain did not leave the handler's session, so this proves nothing:\n{log}"
    );
    link.assert_gone("a link of the chain of sessions");
}

#[test]
fn descendants_that_exit_before_the_handler_are_reaped_not_left_as_zombies() {
    // The subshell exits at once, so its child is re-parented to the dispatcher (a child
    // subreaper), where it exits too while the handler still runs: a zombie of the dispatcher's
    // unless the dispatcher reaps it. A zombie counts against the user's process limit for as long
    // as the dispatcher lives.
    let brief = r#"#!/bin/sh
( sh -c 'echo $$ > orphan.pid' & )
while [ ! -s orphan.pid ]; do sleep 0.05; done
sleep 0.3
echo "ORPHAN=$(cat orphan.pid)"
"#;
    let world = World::new()
        .handler("brief.sh", brief)
        .index(&index_with(&[entry(
            "brief",
            "brief.sh",
            &["timeout: 30s", "grace: 1s"],
        )]))
        .build();
    world.submit("brief.yml", "kind: brief\n");

    let mut dispatcher =
        world.spawn(world.run_command(world.remote_arg(), &["--poll-interval", "200ms"]));
    assert!(
        dispatcher.wait_for_output("pushed", RUN_DEADLINE),
        "the outcome was not pushed: {}",
        dispatcher.output_so_far()
    );
    let log = world
        .fresh_clone()
        .read_string(&log_file("brief", 1))
        .expect("the log is committed");
    let orphan = line_value(&log, "ORPHAN");
    // Gone, or (its pid taken again) another process: not a zombie child of the dispatcher.
    if let Ok(stat) = fs::read_to_string(format!("/proc/{orphan}/stat")) {
        let fields: Vec<&str> = stat[stat.rfind(')').expect("a stat line") + 2..]
            .split(' ')
            .collect();
        let (state, parent) = (fields[0], fields[1]);
        assert!(
            !(state == "Z" && parent == dispatcher.pid().to_string()),
            "process {orphan} is a zombie of the dispatcher's: {stat}"
        );
    }
    dispatcher.terminate();
    dispatcher.wait(RUN_DEADLINE).assert_exit(0);
}

/// A secret with characters that base64 (`+`, `/`), percent-encoding, JSON and shells treat specially.
const API_TOKEN: &str = r#"tok/9f8e+7d6c=5b4a"q\z~>?"#;

/// Prints `$API_TOKEN` in every common form, one `form=...` line each; `split` is written in two
/// writes 0.3 s apart; `sha256` proves the handler was given the value.
const LEAKY: &str = r##"#!/bin/sh
printf 'plain=%s\n' "$API_TOKEN"
printf 'stderr=%s\n' "$API_TOKEN" >&2
printf 'base64=%s\n' "$(printf %s "$API_TOKEN" | base64 -w0)"
printf 'basic=%s\n' "$(printf 'user:%s' "$API_TOKEN" | base64 -w0)"
printf 'base64url=%s\n' "$(printf %s "$API_TOKEN" | base64 -w0 | tr '+/' '-_' | tr -d '=')"
python3 - <<'EOF'
import json, os, sys, time, urllib.parse
v = os.environ["API_TOKEN"]
print("quoted=" + urllib.parse.quote(v, safe=""))
print("quoted_default=" + urllib.parse.quote(v))
print("json=" + json.dumps(v))
print("hex=" + v.encode().hex())
print("HEX=" + v.encode().hex().upper())
sys.stdout.write("split=" + v[:9])
sys.stdout.flush()
time.sleep(0.3)
sys.stdout.write(v[9:] + "\n")
sys.stdout.flush()
EOF
printf 'sha256=%s\n' "$(printf %s "$API_TOKEN" | sha256sum | cut -d' ' -f1)"
"##;

/// Percent-encoding as Python's `urllib.parse.quote(value, safe=...)`: unreserved characters and
/// `safe` stay, everything else becomes `%XX` (uppercase).
fn quote(value: &str, safe: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || safe.as_bytes().contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Each form `LEAKY` prints, by its line key, as the handler computes it.
fn secret_forms(value: &str) -> Vec<(&'static str, String)> {
    let hex: String = value.bytes().map(|b| format!("{b:02x}")).collect();
    vec![
        ("plain", value.to_owned()),
        ("base64", STANDARD.encode(value)),
        ("basic", STANDARD.encode(format!("user:{value}"))),
        ("base64url", URL_SAFE_NO_PAD.encode(value)),
        ("quoted", quote(value, "")),
        ("quoted_default", quote(value, "/")),
        (
            "json",
            serde_json::to_string(value).expect("strings serialise"),
        ),
        ("HEX", hex.to_uppercase()),
        ("hex", hex),
    ]
}

/// Writes `NAME=value` lines to `<root>/<name>` with `mode`; returns the path.
fn secrets_file(world: &World, name: &str, mode: u32) -> std::path::PathBuf {
    let path = world.root.join(name);
    fs::write(
        &path,
        format!("# this host's secrets\nAPI_TOKEN={API_TOKEN}\nOTHER_TOKEN=other-5f4e3d2c1b0a\n"),
    )
    .expect("write the secrets file");
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod the secrets file");
    path
}

#[test]
fn a_listed_secret_reaches_the_handler_and_no_encoding_of_it_reaches_the_log_or_the_history() {
    let forms = secret_forms(API_TOKEN);
    // The forms must differ from one another, or some of them would be tested twice and others never.
    let standard = &forms[1].1;
    assert!(
        standard.contains(['+', '/']),
        "pick a value whose base64 differs from its URL-safe base64 ({standard})"
    );
    for (i, (name, form)) in forms.iter().enumerate() {
        assert!(
            forms[..i].iter().all(|(_, other)| other != form),
            "the `{name}` form repeats another form: {form}"
        );
    }

    let world = World::new()
        .handler("leaky.sh", LEAKY)
        .index(&index_with(&[entry(
            "leaky",
            "leaky.sh",
            &["secrets: [API_TOKEN]", "timeout: 30s", "grace: 1s"],
        )]))
        .build();
    let secrets = secrets_file(&world, "secrets.env", 0o600);
    world.submit("leaky.yml", "kind: leaky\n");

    let out = world.run(&["--secrets-file", secrets.to_str().expect("UTF-8 path")]);
    out.assert_exit(0);

    let clone = world.fresh_clone();
    let status = clone.status("leaky");
    let log = clone
        .read_string(&log_file("leaky", 1))
        .expect("the log is committed");
    assert_eq!(status["state"], "succeeded", "{status:#}\n{log}");
    let digest = sha256_hex(API_TOKEN.as_bytes());
    assert!(
        log.contains(&format!("sha256={digest}")),
        "the handler was not given the secret's value (expected its sha256 {digest}):\n{log}"
    );

    let mut problems = Vec::new();
    let keys = forms.iter().map(|(key, _)| *key).chain(["stderr", "split"]);
    for key in keys {
        let prefix = format!("{key}=");
        match log.lines().find_map(|line| line.strip_prefix(&prefix)) {
            Some(value) if value.contains("[REDACTED:API_TOKEN]") => {}
            Some(value) => problems.push(format!("log line `{key}=` is not redacted: {value}")),
            None => problems.push(format!("no `{key}=` line in the log")),
        }
    }
    for (name, form) in &forms {
        if log.contains(form.as_str()) {
            problems.push(format!(
                "the `{name}` form `{form}` is in the committed log"
            ));
        }
        if out.all_output().contains(form.as_str()) {
            problems.push(format!(
                "the `{name}` form `{form}` is in the dispatcher's output"
            ));
        }
    }

    // Every blob and commit message in the history of every ref.
    let history = clone.git(&["log", "-p", "--all", "--text", "--format=fuller"]);
    for (name, form) in &forms {
        if history.contains(form.as_str()) {
            problems.push(format!(
                "the `{name}` form `{form}` is in `git log -p --all`"
            ));
        }
    }
    let revs = clone.git(&["rev-list", "--all"]);
    let mut grep = git_command(&world.home, &clone.dir);
    grep.args(["grep", "-a", "-F"]);
    for (_, form) in &forms {
        grep.arg("-e").arg(form);
    }
    grep.args(revs.lines()).arg("--");
    let found = grep.output().expect("spawn git grep");
    match found.status.code() {
        Some(1) => {}
        Some(0) => problems.push(format!(
            "`git grep` finds the secret in the history:\n{}",
            String::from_utf8_lossy(&found.stdout)
        )),
        _ => panic!(
            "git grep failed: {}",
            String::from_utf8_lossy(&found.stderr)
        ),
    }

    assert!(
        problems.is_empty(),
        "the secret leaked:\n- {}\n--- committed log ---\n{log}",
        problems.join("\n- ")
    );
}

/// Longer than `base64` (57 bytes) and `xxd -p` (30 bytes) put on one line, so both wrap it.
const LONG_TOKEN: &str = "tok/9f8e+7d6c=5b4a-a-secret-long-enough-to-wrap-0123456789-abcdefghijklm";

/// Prints `$LONG_TOKEN` as `base64` and `xxd -p` wrap it, and `base64` with CRLF line ends, each
/// between a `BEGIN-x` and an `END-x` line.
const WRAPPING: &str = r#"#!/bin/sh
echo BEGIN-base64
printf %s "$LONG_TOKEN" | base64
echo END-base64
echo BEGIN-xxd
printf %s "$LONG_TOKEN" | xxd -p
echo END-xxd
echo BEGIN-crlf
printf %s "$LONG_TOKEN" | base64 | sed 's/$/\r/'
echo END-crlf
printf 'sha256=%s\n' "$(printf %s "$LONG_TOKEN" | sha256sum | cut -d' ' -f1)"
"#;

#[test]
fn a_secret_wrapped_over_lines_by_base64_or_xxd_is_redacted() {
    assert!(
        LONG_TOKEN.len() > 57,
        "the token must be long enough for `base64` to wrap it"
    );
    let world = World::new()
        .handler("wrapping.sh", WRAPPING)
        .index(&index_with(&[entry(
            "wrapping",
            "wrapping.sh",
            &["secrets: [LONG_TOKEN]", "timeout: 30s", "grace: 1s"],
        )]))
        .build();
    let secrets = world.root.join("secrets.env");
    fs::write(&secrets, format!("LONG_TOKEN={LONG_TOKEN}\n")).expect("write the secrets file");
    fs::set_permissions(&secrets, fs::Permissions::from_mode(0o600)).expect("chmod");
    world.submit("wrapping.yml", "kind: wrapping\n");

    world
        .run(&["--secrets-file", secrets.to_str().expect("UTF-8 path")])
        .assert_exit(0);

    let clone = world.fresh_clone();
    let status = clone.status("wrapping");
    let log = clone
        .read_string(&log_file("wrapping", 1))
        .expect("the log is committed");
    assert_eq!(status["state"], "succeeded", "{status:#}\n{log}");
    assert_eq!(
        line_value(&log, "sha256"),
        sha256_hex(LONG_TOKEN.as_bytes()),
        "the handler was not given the secret:\n{log}"
    );
    let hex: String = LONG_TOKEN.bytes().map(|b| format!("{b:02x}")).collect();
    let decode_hex = |text: &str| -> Option<Vec<u8>> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
            .collect()
    };
    for (section, encoded) in [
        ("base64", STANDARD.encode(LONG_TOKEN)),
        ("xxd", hex),
        ("crlf", STANDARD.encode(LONG_TOKEN)),
    ] {
        let printed = between(&log, &format!("BEGIN-{section}"), &format!("END-{section}"));
        let joined: String = printed.split(['\r', '\n']).collect();
        let decoded = if section == "xxd" {
            decode_hex(&joined)
        } else {
            STANDARD.decode(&joined).ok()
        };
        assert!(
            printed.contains("[REDACTED:LONG_TOKEN]"),
            "`{section}` is not redacted:\n{log}"
        );
        assert!(
            !joined.contains(&encoded) && decoded.as_deref() != Some(LONG_TOKEN.as_bytes()),
            "the `{section}` output decodes to the secret:\n{log}"
        );
    }
}

#[test]
fn a_secret_the_host_does_not_define_rejects_the_request_naming_it() {
    let world = World::new()
        .handler(
            "needy.sh",
            "#!/bin/sh\necho \"API_TOKEN=$API_TOKEN\"\necho \"MISSING=$MISSING\"\n",
        )
        .index(&index_with(&[entry(
            "needy",
            "needy.sh",
            &["secrets: [API_TOKEN, MISSING]", "timeout: 30s", "grace: 1s"],
        )]))
        .build();
    let secrets = secrets_file(&world, "secrets.env", 0o600);
    world.submit("needy.yml", "kind: needy\n");

    let out = world.run(&["--secrets-file", secrets.to_str().expect("UTF-8 path")]);
    out.assert_exit(0);

    let clone = world.fresh_clone();
    let status = clone.status("needy");
    let log = clone
        .read_string(&log_file("needy", 1))
        .expect("the log is committed");
    assert_eq!(status["state"], "rejected", "{status:#}\n{log}");
    let error = status["error"].as_str().expect("a rejection has an error");
    assert!(
        error.contains("MISSING"),
        "the error does not name the secret: {error}"
    );
    assert!(
        !log.contains("API_TOKEN=") && !log.contains("MISSING="),
        "the handler ran:\n{log}"
    );
    for text in [error, log.as_str(), out.all_output().as_str()] {
        assert!(
            !text.contains(API_TOKEN),
            "a secret's value was printed: {text}"
        );
    }
}

#[test]
fn a_secrets_file_readable_by_group_or_others_is_refused_at_start() {
    let world = World::new().build();
    world.submit("waiting.yml", "kind: echo\n");
    for mode in [0o644, 0o640, 0o604] {
        let secrets = secrets_file(&world, &format!("secrets-{mode:o}.env"), mode);

        let mut run = world.run_command(world.remote_arg(), &["--until-empty"]);
        run.env("GIT_DISPATCH_SECRETS_FILE", &secrets);
        let out = world.output(run);

        out.assert_exit(2);
        assert!(
            out.stderr.contains(secrets.to_str().expect("UTF-8 path"))
                && out.stderr.contains("mode"),
            "mode {mode:o}: the error does not name the file and its mode\n{out}"
        );
        assert!(
            !out.all_output().contains(API_TOKEN),
            "the value was printed\n{out}"
        );
    }
    assert_eq!(
        world.fresh_clone().ls("requests"),
        [".gitkeep", "waiting.yml"],
        "a refused configuration still took the request"
    );
}

#[test]
fn a_secrets_file_owned_by_another_user_is_refused_at_start() {
    if !root_or_skip("a_secrets_file_owned_by_another_user_is_refused_at_start") {
        return;
    }
    let world = World::new().build();
    world.submit("waiting.yml", "kind: echo\n");
    let secrets = secrets_file(&world, "secrets.env", 0o600);
    let uid: u32 = id(&["-u", "nobody"]).parse().expect("a numeric uid");
    std::os::unix::fs::chown(&secrets, Some(uid), None).expect("chown the secrets file");

    let out = world.run(&["--secrets-file", secrets.to_str().expect("UTF-8 path")]);

    out.assert_exit(2);
    assert!(
        out.stderr.contains(secrets.to_str().expect("UTF-8 path")) && out.stderr.contains("own"),
        "the error does not name the file and its owner\n{out}"
    );
    assert_eq!(
        world.fresh_clone().ls("requests"),
        [".gitkeep", "waiting.yml"]
    );
}

#[test]
fn an_output_under_the_cap_is_logged_byte_for_byte_with_its_length_and_digest() {
    // The control of the cap below: stdout and stderr interleaved in the order written, nothing added,
    // nothing repeated, no final newline invented.
    const OUTPUT: &[u8] = b"one\ntwo on stderr\nthree";
    let world = World::new()
        .handler(
            "small.sh",
            "#!/bin/sh\nprintf 'one\\n'\nprintf 'two on stderr\\n' >&2\nprintf 'three'\n",
        )
        .index(&index_with(&[entry(
            "small",
            "small.sh",
            &["log_limit: 64KiB", "timeout: 30s", "grace: 1s"],
        )]))
        .build();
    world.submit("small.yml", "kind: small\n");

    world.run(&[]).assert_exit(0);

    let clone = world.fresh_clone();
    let log = clone
        .read(&log_file("small", 1))
        .expect("the log is committed");
    assert_eq!(
        String::from_utf8_lossy(&log),
        String::from_utf8_lossy(OUTPUT),
        "the log is not the handler's output"
    );
    let status = clone.status("small");
    assert_eq!(status["log_bytes"], OUTPUT.len(), "{status:#}");
    assert_eq!(status["log_truncated"], false, "{status:#}");
    assert_eq!(
        status["log_sha256"],
        sha256_hex(OUTPUT).as_str(),
        "{status:#}"
    );
}

#[test]
fn a_50_mb_output_is_capped_with_head_and_tail_and_the_full_length_and_digest_recorded() {
    const FLOOD_BYTES: usize = 50_000_000;
    const TAIL: &[u8] = b"TAIL-MARKER-END\n";
    let world = World::new()
        .handler(
            "flood.sh",
            "#!/bin/sh\nhead -c 50000000 /dev/zero | tr '\\0' 'a'\necho TAIL-MARKER-END\n",
        )
        .index(&index_with(&[entry(
            "flood",
            "flood.sh",
            &["log_limit: 64KiB", "timeout: 30s", "grace: 1s"],
        )]))
        .build();
    world.submit("flood.yml", "kind: flood\n");

    world.run(&[]).assert_exit(0);

    let mut hasher = Sha256::new();
    let chunk = vec![b'a'; 1 << 20];
    let mut left = FLOOD_BYTES;
    while left > 0 {
        let n = left.min(chunk.len());
        hasher.update(&chunk[..n]);
        left -= n;
    }
    hasher.update(TAIL);
    let digest: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let total = FLOOD_BYTES + TAIL.len();

    let clone = world.fresh_clone();
    let status = clone.status("flood");
    assert_eq!(status["state"], "succeeded", "{status:#}");
    assert_eq!(status["log_bytes"], total, "{status:#}");
    assert_eq!(status["log_truncated"], true, "{status:#}");
    assert_eq!(status["log_sha256"], digest.as_str(), "{status:#}");

    let log = clone
        .read(&log_file("flood", 1))
        .expect("the log is committed");
    let text = String::from_utf8_lossy(&log);
    let start = text
        .find("\n[git-dispatch: ")
        .unwrap_or_else(|| panic!("no marker line in the {}-byte log", log.len()));
    let end = start + 1 + text[start + 1..].find("]\n").expect("the marker line ends");
    let marker = &text[start + 1..=end];
    let (left_out, rest) = marker
        .strip_prefix("[git-dispatch: ")
        .and_then(|m| m.split_once(" bytes left out here; "))
        .unwrap_or_else(|| panic!("unexpected marker line: {marker}"));
    assert_eq!(
        rest,
        format!("the full output was {total} bytes, sha256 {digest}]"),
        "marker line: {marker}"
    );
    let head = &log[..start];
    let tail = &log[end + 2..];
    let left_out: usize = left_out.parse().expect("a byte count");
    assert_eq!(
        head.len() + tail.len() + left_out,
        total,
        "kept + left out is not the full output ({marker})"
    );
    assert!(
        head.len() + tail.len() <= 64 * 1024,
        "kept {} + {} bytes under `log_limit: 64KiB`",
        head.len(),
        tail.len()
    );
    assert!(
        !head.is_empty() && head.iter().all(|&b| b == b'a'),
        "the head is not the start of the output"
    );
    assert!(
        tail.ends_with(TAIL) && tail[..tail.len() - TAIL.len()].iter().all(|&b| b == b'a'),
        "the tail is not the end of the output: {:?}",
        String::from_utf8_lossy(&tail[tail.len().saturating_sub(64)..])
    );
}

#[test]
fn a_handler_outside_handlers_or_not_an_executable_file_there_is_rejected_and_never_run() {
    // Every handler below would leave `ran-<kind>` in `markers/` if it ran; `inside` is the control.
    let world = World::new().build();
    let runs = |markers: &Path| {
        format!(
            "#!/bin/sh\ntouch '{}/ran-'\"$DISPATCH_KIND\"\n",
            markers.display()
        )
    };
    let outside = world.root.join("outside.sh");
    fs::write(&outside, runs(&world.markers)).expect("write outside.sh");
    fs::set_permissions(&outside, fs::Permissions::from_mode(0o755)).expect("chmod outside.sh");
    let outside = outside.to_str().expect("UTF-8 path").to_owned();
    // From `handlers/` on disk, wherever it is, twelve `..` reach `/` and then `outside.sh`.
    let climb = format!("{}{}", "../".repeat(12), outside.trim_start_matches('/'));

    world.handler("inside.sh", &runs(&world.markers));
    world
        .submitter
        .write("handlers/noexec.sh", runs(&world.markers));
    std::os::unix::fs::symlink(&outside, world.submitter.path("handlers/evil"))
        .expect("create the symlink");
    let settings = ["timeout: 30s", "grace: 1s"];
    world.index(&index_with(&[
        entry("inside", "inside.sh", &settings),
        entry("dotdot", "../../usr/bin/touch", &settings),
        entry("climb", &climb, &settings),
        entry("absolute", &outside, &settings),
        entry("link", "evil", &settings),
        entry("noexec", "noexec.sh", &settings),
        entry("missing", "missing.sh", &settings),
    ]));
    world.publish("handlers inside and outside handlers/");
    let tree = world.submitter.git(&["ls-tree", "HEAD", "handlers/"]);
    assert!(
        tree.lines()
            .any(|l| l.starts_with("120000") && l.ends_with("handlers/evil"))
            && tree
                .lines()
                .any(|l| l.starts_with("100644") && l.ends_with("handlers/noexec.sh")),
        "the fixture is not committed as intended:\n{tree}"
    );
    let kinds = [
        "inside", "dotdot", "climb", "absolute", "link", "noexec", "missing",
    ];
    let requests: Vec<(String, Vec<u8>)> = kinds
        .iter()
        .map(|k| (format!("{k}.yml"), format!("kind: {k}\n").into_bytes()))
        .collect();
    let files: Vec<(&str, &[u8])> = requests
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    world.submit_many(&files);

    world.run(&[]).assert_exit(0);

    let clone = world.fresh_clone();
    assert_eq!(clone.status("inside")["state"], "succeeded");
    let expectations: [(&str, &[&str]); 6] = [
        ("dotdot", &["../../usr/bin/touch"]),
        ("climb", &[climb.as_str()]),
        ("absolute", &[outside.as_str()]),
        ("link", &["handlers/evil", "link"]),
        ("noexec", &["handlers/noexec.sh", "executable"]),
        ("missing", &["handlers/missing.sh"]),
    ];
    for (kind, needles) in expectations {
        let status = clone.status(kind);
        assert_eq!(status["state"], "rejected", "kind `{kind}`: {status:#}");
        let error = status["error"].as_str().unwrap_or_default();
        for needle in needles {
            assert!(
                error.contains(needle),
                "kind `{kind}`: the error does not mention `{needle}`: {error}"
            );
        }
    }
    let mut ran: Vec<String> = fs::read_dir(&world.markers)
        .expect("read markers/")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    ran.sort();
    assert_eq!(
        ran,
        ["ran-inside"],
        "handlers that should have been refused ran"
    );
}

#[test]
fn the_handler_cannot_write_into_the_dispatchers_workdir_or_lock_dir() {
    if !root_or_skip("the_handler_cannot_write_into_the_dispatchers_workdir_or_lock_dir") {
        return;
    }
    let intruder = r#"#!/bin/sh
echo "CWD-OWNER=$(stat -c %u .)"
touch ./mine && echo "CWD-WRITABLE=yes"
for dir in "$WORKDIR" "$LOCKDIR"; do
  touch "$dir/handler-was-here" && echo "WROTE $dir/handler-was-here"
  mkdir "$dir/handler-dir" && echo "WROTE $dir/handler-dir"
done
echo "DONE"
"#;
    let world = World::new()
        .handler("intruder.sh", intruder)
        .index(&index_with(&[entry(
            "intruder",
            "intruder.sh",
            &["env: [WORKDIR, LOCKDIR]", "timeout: 30s", "grace: 1s"],
        )]))
        .build();
    // The lock dir is the host's (made by root for the harness): root's, not writable by others.
    let locks = fs::metadata(&world.locks).expect("stat the lock dir");
    assert!(
        locks.uid() == 0 && locks.mode() & 0o022 == 0,
        "fixture: the lock dir should be root's with mode 0755, is uid {} mode {:o}",
        locks.uid(),
        locks.mode() & 0o7777
    );
    world.submit("intrude.yml", "kind: intruder\n");

    let mut run = world.run_command(world.remote_arg(), &["--until-empty"]);
    run.env("WORKDIR", &world.work).env("LOCKDIR", &world.locks);
    world.output(run).assert_exit(0);

    let log = world
        .fresh_clone()
        .read_string(&log_file("intrude", 1))
        .expect("the log is committed");
    assert_eq!(
        line_value(&log, "CWD-OWNER"),
        id(&["-u", "nobody"]),
        "the working directory is not the handler's own:\n{log}"
    );
    assert_eq!(
        line_value(&log, "CWD-WRITABLE"),
        "yes",
        "control: the handler cannot write anywhere:\n{log}"
    );
    assert!(log.contains("DONE"), "the handler did not finish:\n{log}");
    assert!(!log.contains("WROTE"), "the handler wrote:\n{log}");
    assert_eq!(
        log.matches("Permission denied").count(),
        4,
        "every attempt should fail with `Permission denied`:\n{log}"
    );
    for dir in [&world.work, &world.locks] {
        for name in ["handler-was-here", "handler-dir"] {
            let path = dir.join(name);
            assert!(!path.exists(), "`{}` was created", path.display());
        }
    }
}
