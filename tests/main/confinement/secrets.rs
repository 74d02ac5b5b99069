//! Secrets: a handler gets the secrets its kind lists from the host's secrets file, and neither their
//! plain text nor any common encoding (base64, percent-encoding, JSON, wrapped over lines) reaches a
//! committed log or the history; a secret the host lacks rejects the request; a secrets file others
//! can read, or another user owns, is refused at start.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

use super::{entry, index_with};
use crate::support::{
    World, between, git_command, id, line_value, log_file, root_or_skip, sha256_hex,
};

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
