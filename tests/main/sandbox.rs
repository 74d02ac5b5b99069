//! The handler's side of the contract: what it is given (argv, stdin, environment, working directory), the
//! resource it runs under (`DISPATCH_RESOURCE` and the flock on `<lock-dir>/<resource>.lock`). Each handler
//! prints what it sees into its log, and the test reads the log from a fresh clone.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use serde_json::json;

use crate::support::{
    DEFAULT_INDEX, RUN_DEADLINE, World, between, line_value, log_file, wait_until,
};

const PROBE: &str = r#"#!/bin/sh
echo "ARGV1-MODE=$(stat -c %A "$1")"
echo "ARGV1-BEGIN"
cat "$1"
echo "ARGV1-END"
echo "STDIN-BEGIN"
cat
echo
echo "STDIN-END"
echo "PARAMS-BEGIN"
printf '%s\n' "$DISPATCH_PARAMS"
echo "PARAMS-END"
echo "DISPATCH_ID=$DISPATCH_ID"
echo "DISPATCH_KIND=$DISPATCH_KIND"
echo "DISPATCH_ATTEMPT=$DISPATCH_ATTEMPT"
echo "DISPATCH_RESOURCE=$DISPATCH_RESOURCE"
echo "CWD=$(pwd)"
echo "CWD-ENTRIES=$(ls -A | wc -l)"
echo "NAMES-BEGIN"
env | sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)=.*/\1/p' | sort
echo "NAMES-END"
echo "ENV-BEGIN"
env
echo "ENV-END"
"#;

/// The `probe` kind's params schema: both params typed, nothing else allowed.
const PROBE_SCHEMA: &str = r#"{
  "type": "object",
  "required": ["count", "name"],
  "additionalProperties": false,
  "properties": { "count": { "type": "integer" }, "name": { "type": "string" } }
}
"#;

const PROBE_REQUEST: &str =
    "kind: probe\nid: nightly-1\nresource: printer\nparams:\n  count: 3\n  name: world\n";

#[test]
fn handler_gets_a_read_only_request_copy_json_stdin_a_cleared_env_and_an_empty_cwd() {
    let world = World::new()
        .handler("probe.sh", PROBE)
        .schema("probe.schema.json", PROBE_SCHEMA)
        .index(&format!(
            "{DEFAULT_INDEX}probe:\n  handler: probe.sh\n  schema: probe.schema.json\n  timeout: 30s\n  grace: 1s\n"
        ))
        .build();
    world.submit("nightly.yml", PROBE_REQUEST);

    let mut run = world.run_command(world.remote_arg(), &["--until-empty"]);
    run.env("CANARY", "must-not-reach-the-handler")
        .env("SECRET_FROM_PARENT", "leak123");
    world.output(run).assert_exit(0);

    let clone = world.fresh_clone();
    let status = clone.status("nightly-1");
    assert_eq!(status["state"], "succeeded", "status: {status:#}");
    assert_eq!(
        status["id"], "nightly-1",
        "the request's `id` names the outcome"
    );
    let log = clone
        .read_string(&log_file("nightly-1", 1))
        .expect("the log is committed");

    let mode = line_value(&log, "ARGV1-MODE");
    assert!(!mode.contains('w'), "argv[1] is writable ({mode})");
    assert_eq!(between(&log, "ARGV1-BEGIN", "ARGV1-END"), PROBE_REQUEST);

    let params = json!({ "count": 3, "name": "world" });
    let stdin: serde_json::Value = serde_json::from_str(between(&log, "STDIN-BEGIN", "STDIN-END"))
        .unwrap_or_else(|e| panic!("stdin is not JSON ({e}):\n{log}"));
    assert_eq!(stdin["kind"], "probe");
    assert_eq!(stdin["params"], params);
    let env_params: serde_json::Value =
        serde_json::from_str(between(&log, "PARAMS-BEGIN", "PARAMS-END"))
            .unwrap_or_else(|e| panic!("DISPATCH_PARAMS is not JSON ({e}):\n{log}"));
    assert_eq!(env_params, params);

    assert_eq!(line_value(&log, "DISPATCH_ID"), "nightly-1");
    assert_eq!(line_value(&log, "DISPATCH_KIND"), "probe");
    assert_eq!(line_value(&log, "DISPATCH_ATTEMPT"), "1");
    assert_eq!(line_value(&log, "DISPATCH_RESOURCE"), "printer");

    let names: BTreeSet<&str> = between(&log, "NAMES-BEGIN", "NAMES-END").lines().collect();
    let required = [
        "DISPATCH_ID",
        "DISPATCH_KIND",
        "DISPATCH_ATTEMPT",
        "DISPATCH_RESOURCE",
        "DISPATCH_PARAMS",
        "PATH",
    ];
    // What `/bin/sh` itself exports on top of what it was given.
    let shell_own = ["PWD", "OLDPWD", "SHLVL", "_"];
    for name in required {
        assert!(
            names.contains(name),
            "`{name}` missing from the handler's env: {names:?}"
        );
    }
    let extra: Vec<&&str> = names
        .iter()
        .filter(|n| !required.contains(n) && !shell_own.contains(n))
        .collect();
    assert!(
        extra.is_empty(),
        "the handler's env was not cleared, it also has {extra:?}"
    );
    // No value of the dispatcher's environment (other than `PATH`) reaches the handler under any name.
    let env = between(&log, "ENV-BEGIN", "ENV-END");
    let home = world.home.to_str().expect("UTF-8 tempdir");
    for value in ["must-not-reach-the-handler", "leak123", home] {
        assert!(
            !env.contains(value),
            "`{value}` from the dispatcher's environment reached the handler:\n{env}"
        );
    }

    assert_eq!(
        line_value(&log, "CWD-ENTRIES").trim(),
        "0",
        "cwd is not empty"
    );
    let cwd = line_value(&log, "CWD");
    assert!(
        !Path::new(cwd).exists(),
        "the working directory `{cwd}` was not removed"
    );
}

#[test]
fn declared_env_names_pass_through_and_nothing_else() {
    let world = World::new()
        .handler(
            "greet.sh",
            "#!/bin/sh\necho \"GREETING=${GREETING-unset}\"\necho \"OTHER=${OTHER-unset}\"\n",
        )
        .index(&format!(
            "{DEFAULT_INDEX}greet:\n  handler: greet.sh\n  env: [GREETING]\n  timeout: 30s\n  grace: 1s\n"
        ))
        .build();
    world.submit("hi.yml", "kind: greet\n");

    let mut run = world.run_command(world.remote_arg(), &["--until-empty"]);
    run.env("GREETING", "bonjour").env("OTHER", "undeclared");
    world.output(run).assert_exit(0);

    let log = world
        .fresh_clone()
        .read_string(&log_file("hi", 1))
        .expect("the log is committed");
    assert_eq!(line_value(&log, "GREETING"), "bonjour");
    assert_eq!(line_value(&log, "OTHER"), "unset");
}

#[test]
fn resource_comes_from_the_request_else_the_index_else_the_kind() {
    let script = "#!/bin/sh\necho \"DISPATCH_RESOURCE=$DISPATCH_RESOURCE\"\n";
    let world = World::new()
        .handler("res.sh", script)
        .index(&format!(
            "{DEFAULT_INDEX}\
with-index:\n  handler: res.sh\n  resource: index-lock\n  timeout: 30s\n  grace: 1s\n\
bare-kind:\n  handler: res.sh\n  timeout: 30s\n  grace: 1s\n"
        ))
        .build();
    world.submit(
        "from-request.yml",
        "kind: with-index\nresource: request-lock\n",
    );
    world.submit("from-index.yml", "kind: with-index\n");
    world.submit("from-kind.yml", "kind: bare-kind\n");

    world.run(&[]).assert_exit(0);

    let clone = world.fresh_clone();
    for (id, expected) in [
        ("from-request", "request-lock"),
        ("from-index", "index-lock"),
        ("from-kind", "bare-kind"),
    ] {
        let log = clone
            .read_string(&log_file(id, 1))
            .unwrap_or_else(|| panic!("no log for `{id}`"));
        assert_eq!(
            line_value(&log, "DISPATCH_RESOURCE"),
            expected,
            "request `{id}`"
        );
    }
}

#[test]
fn handler_runs_under_an_exclusive_flock_on_its_resource_lock_file() {
    let world = World::new().build();
    let lock = world.locks.join("printer.lock");
    // Created by "the admin" beforehand, readable by anyone, so an unprivileged handler can open it.
    fs::write(&lock, "").expect("create lock file");
    fs::set_permissions(&lock, fs::Permissions::from_mode(0o666)).expect("chmod lock file");
    // The probe must see the lock directory, which isolated handlers do not.
    world.handler(
        "locked.sh",
        &format!(
            "#!/bin/sh\nflock -n -E 42 '{}' true\necho \"FLOCK_EXIT=$?\"\n",
            lock.display()
        ),
    );
    world.index(&format!(
        "{DEFAULT_INDEX}locked:\n  handler: locked.sh\n  resource: printer\n  timeout: 30s\n  grace: 1s\n  isolation: none\n"
    ));
    world.publish("add the locked kind");
    world.submit("print.yml", "kind: locked\n");

    world.run(&[]).assert_exit(0);

    let log = world
        .fresh_clone()
        .read_string(&log_file("print", 1))
        .expect("the log is committed");
    assert_eq!(
        line_value(&log, "FLOCK_EXIT"),
        "42",
        "`{}` was not locked while the handler ran",
        lock.display()
    );
    let after = Command::new("flock")
        .args(["-n", "-E", "42"])
        .arg(&lock)
        .arg("true")
        .status()
        .expect("spawn flock");
    assert_eq!(
        after.code(),
        Some(0),
        "the lock was not released after the run"
    );
}

#[test]
fn stdin_larger_than_a_pipe_reaches_a_reader_whole_and_a_handler_that_never_reads_it_still_ends() {
    // 100,000 bytes of params: more than a pipe holds (64 KiB), so the input is written in pieces
    // while the handler runs (and less than one environment string may hold, 128 KiB: the params
    // are in DISPATCH_PARAMS too).
    let blob = "x".repeat(100_000);
    let world = World::new()
        .handler(
            "count.sh",
            "#!/bin/sh\necho \"STDIN-BYTES=$(wc -c | tr -d ' ')\"\n",
        )
        .handler("ignore.sh", "#!/bin/sh\necho ignored\n")
        .index(&format!(
            "{DEFAULT_INDEX}\
tally:\n  handler: count.sh\n  timeout: 30s\n  grace: 1s\n\
skip:\n  handler: ignore.sh\n  timeout: 30s\n  grace: 1s\n"
        ))
        .build();
    let request = |kind: &str| format!("kind: {kind}\nparams:\n  blob: {blob}\n");
    world.submit("counted.yml", request("tally"));
    world.submit("ignored.yml", request("skip"));

    world.run(&["--max-request-size", "1MiB"]).assert_exit(0);

    let clone = world.fresh_clone();
    let log = clone
        .read_string(&log_file("counted", 1))
        .expect("the log is committed");
    let stdin_bytes: usize = line_value(&log, "STDIN-BYTES")
        .parse()
        .unwrap_or_else(|e| panic!("STDIN-BYTES is not a number ({e}):\n{log}"));
    assert!(
        stdin_bytes > blob.len(),
        "the handler read {stdin_bytes} bytes of an input holding {} bytes of params:\n{log}",
        blob.len()
    );
    for id in ["counted", "ignored"] {
        assert_eq!(clone.status(id)["state"], "succeeded", "request `{id}`");
    }
}

#[test]
fn handler_starts_with_no_signal_blocked_and_sigpipe_at_its_default() {
    let world = World::new()
        .handler(
            "signals.awk",
            // Not a shell script: dash unblocks every signal when it starts.
            "#!/usr/bin/awk -f\nBEGIN { while ((getline line < \"/proc/self/status\") > 0) if (line ~ /^Sig(Blk|Ign):/) { sub(/:[ \\t]*/, \"=\", line); print line } }\n",
        )
        .index(&format!(
            "{DEFAULT_INDEX}signals:\n  handler: signals.awk\n  timeout: 30s\n  grace: 1s\n"
        ))
        .build();
    world.submit("sig.yml", "kind: signals\n");

    world.run(&[]).assert_exit(0);

    let log = world
        .fresh_clone()
        .read_string(&log_file("sig", 1))
        .expect("the log is committed");
    let mask = |name: &str| {
        u64::from_str_radix(line_value(&log, name).trim(), 16)
            .unwrap_or_else(|e| panic!("{name} is not a hex mask ({e}):\n{log}"))
    };
    assert_eq!(mask("SigBlk"), 0, "signals blocked in the handler:\n{log}");
    const SIGPIPE_BIT: u64 = 1 << (13 - 1);
    assert_eq!(
        mask("SigIgn") & SIGPIPE_BIT,
        0,
        "SIGPIPE is ignored in the handler:\n{log}"
    );
}

#[test]
fn handler_and_every_thread_of_the_dispatcher_keep_the_dispatchers_starting_priority() {
    // Each `stat` as "(name)=policy/nice": fields 41 and 19, after the name, which may hold spaces
    // (0 is SCHED_OTHER); the dispatcher's threads end with `;`.
    let world = World::new()
        .handler(
            "priority.sh",
            r#"#!/bin/sh
policy() {
  stat=$(cat "$1" 2>/dev/null) || return 0
  name=${stat#*\(}; name=${name%\)*}
  set -- ${stat##*\) }
  echo "($name)=${39}/${17}"
}
echo "MINE=$(policy /proc/$$/stat)"
seen=""
for t in /proc/$PPID/task/*; do seen="$seen$(policy "$t/stat");"; done
echo "THREADS=$seen"
"#,
        )
        // The probe reads the dispatcher's threads, which isolated handlers cannot see.
        .index(&format!(
            "{DEFAULT_INDEX}priority:\n  handler: priority.sh\n  timeout: 30s\n  isolation: none\n"
        ))
        .build();
    world.submit("niced.yml", "kind: priority\n");
    // SAFETY: `getpriority` only reads this thread's nice value.
    let base = unsafe { nix::libc::getpriority(nix::libc::PRIO_PROCESS, 0) };
    let nice = (base + 3).min(19);
    let mut cmd = world.run_command(world.remote_arg(), &["--until-empty"]);
    // SAFETY: only an async-signal-safe call between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(
            &mut cmd,
            move || match nix::libc::setpriority(nix::libc::PRIO_PROCESS, 0, nice) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            },
        );
    }
    world.output(cmd).assert_exit(0);
    let log = world
        .fresh_clone()
        .read_string(&log_file("niced", 1))
        .expect("the log is committed");
    assert_eq!(
        line_value(&log, "MINE").trim(),
        format!("(priority.sh)=0/{nice}"),
        "the handler runs under SCHED_OTHER at the dispatcher's starting nice value:\n{log}"
    );
    let threads = line_value(&log, "THREADS");
    let threads: Vec<&str> = threads.split(';').filter(|t| !t.is_empty()).collect();
    assert!(
        threads.iter().any(|t| t.starts_with("(git-dispatch)=")),
        "the dispatcher's first thread is seen: {threads:?}"
    );
    assert!(
        threads.iter().all(|t| t.ends_with(&format!("=0/{nice}"))),
        "every thread of the dispatcher runs under SCHED_OTHER at its starting nice value: \
         {threads:?}"
    );
}

/// The dispatchers' scratch folders (`git-dispatch-*`) in `tmp`.
fn scratch_folders(tmp: &Path) -> BTreeSet<String> {
    fs::read_dir(tmp)
        .expect("read the temporary folder")
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.starts_with("git-dispatch-"))
        .collect()
}

#[test]
fn scratch_folders_of_a_killed_dispatcher_are_swept_at_start_and_a_live_ones_are_not() {
    // One temporary folder for every dispatcher here, as on one host; handlers run as `nobody`
    // when the tests run as root, so it must be reachable.
    let tmp = tempfile::tempdir().expect("temporary folder");
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o711)).expect("chmod");
    let with_tmp = |mut cmd: Command| {
        cmd.env("TMPDIR", tmp.path());
        cmd
    };

    // A dispatcher that keeps running meanwhile, on another remote and workdir.
    let live_world = World::new().build();
    let mut live = live_world.spawn(with_tmp(
        live_world.run_command(live_world.remote_arg(), &["--poll-interval", "200ms"]),
    ));
    let mut live_scratch = BTreeSet::new();
    assert!(
        wait_until(RUN_DEADLINE, || {
            live_scratch = scratch_folders(tmp.path());
            !live_scratch.is_empty()
        }),
        "the live dispatcher made no scratch folder: {}",
        live.output_so_far()
    );

    // A dispatcher killed while its handler runs: its scratch folder (the request's copy) stays.
    let world = World::new().build();
    world.submit("killed.yml", "kind: echo\n");
    let mut crashing = with_tmp(world.run_command(world.remote_arg(), &["--until-empty"]));
    crashing.env("GIT_DISPATCH_FAILPOINT", "running");
    let crashed = world.spawn(crashing).wait(RUN_DEADLINE);
    assert_eq!(crashed.signal, Some(9), "{crashed}");
    let left: BTreeSet<String> = scratch_folders(tmp.path())
        .difference(&live_scratch)
        .cloned()
        .collect();
    assert_eq!(left.len(), 1, "the killed dispatcher left {left:?}");

    // Started again, it sweeps what it left and not what the live dispatcher uses.
    world
        .output(with_tmp(
            world.run_command(world.remote_arg(), &["--until-empty"]),
        ))
        .assert_exit(0);
    let status = world.fresh_clone().status("killed");
    assert!(
        status["state"].is_string(),
        "no outcome after the restart: {status:#}"
    );
    assert!(live.running(), "{}", live.output_so_far());
    assert_eq!(
        scratch_folders(tmp.path()),
        live_scratch,
        "the scratch folders after the restart are not just the live dispatcher's"
    );
    for name in &live_scratch {
        assert!(
            tmp.path().join(name).join("runs").is_dir(),
            "the live dispatcher's scratch folder `{name}` lost its content"
        );
    }

    live.terminate();
    live.wait(RUN_DEADLINE).assert_exit(0);
    assert_eq!(scratch_folders(tmp.path()), BTreeSet::new());
}
