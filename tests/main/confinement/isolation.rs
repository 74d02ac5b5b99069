//! Isolation, tried as an attacker would: a handler sees the host read-only but for its working
//! directory, a private `/tmp` and its kind's `writable:` paths; the dispatcher's workdir, lock
//! directory, scratch folder and secrets file are not there at all; it sees and signals only its own
//! processes, so it can neither read another run's environment nor leave an escapee behind; runs of
//! two kinds, both `nobody`, cannot touch each other's files. `isolation: none` turns it off, with a
//! warning. Namespaces need a root dispatcher: as anyone else these tests stop early and say why
//! (`sandbox_tests_ran_as_root_in_ci` keeps that out of CI).

use std::fs;

use super::{HOG, entry, index_with};
use crate::support::{RUN_DEADLINE, Strays, World, add_kinds, log_file, root_or_skip};

/// Waits (at most 20 s, in the handler) for `file` to exist.
fn wait_for(file: &std::path::Path) -> String {
    format!(
        "i=0; while [ ! -e {f} ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done\n",
        f = file.display()
    )
}

/// Kind `victim` holds a token in its environment and waits; kind `spy`, running beside it as the
/// same user, reads every `/proc/*/environ` it can and tries to signal a process of the host.
#[test]
fn a_handler_cannot_read_another_kinds_environment_or_see_any_process_but_its_own() {
    if !root_or_skip(
        "a_handler_cannot_read_another_kinds_environment_or_see_any_process_but_its_own",
    ) {
        return;
    }
    let world = World::new().build();
    let started = world.markers.join("victim-started");
    let spied = world.markers.join("spied");
    let victim = format!(
        "#!/bin/sh\ntouch {}\n{}echo victim done\n",
        started.display(),
        wait_for(&spied)
    );
    let spy = format!(
        "#!/bin/sh\n{}\
         for f in /proc/[0-9]*/environ; do tr '\\0' '\\n' < $f 2>/dev/null | grep TOKEN= | rev; done\n\
         echo PROCESSES=$(ls -d /proc/[0-9]* | wc -l)\n\
         kill -0 $TEST_PID 2>&1 | sed 's/^/SIGNAL: /'\n\
         touch {}\n",
        wait_for(&started),
        spied.display()
    );
    world.handler("victim.sh", &victim);
    world.handler("spy.sh", &spy);
    world.index(&index_with(&[
        entry("victim", "victim.sh", &["env: [TOKEN]", "timeout: 60s"]),
        entry("spy", "spy.sh", &["env: [TEST_PID]", "timeout: 60s"]),
    ]));
    world.publish("victim and spy");
    world.submit("victim-1.yml", "kind: victim\nresource: v\n");
    world.submit("spy-1.yml", "kind: spy\nresource: s\n");

    let mut run = world.run_command(world.remote_arg(), &["--until-empty", "--jobs", "2"]);
    run.env("TOKEN", "kind-b-token")
        .env("TEST_PID", std::process::id().to_string());
    world.output(run).assert_exit(0);

    let clone = world.fresh_clone();
    let spy_log = clone.read_string(&log_file("spy-1", 1)).unwrap_or_default();
    assert_eq!(clone.status("victim-1")["state"], "succeeded");
    assert_eq!(
        clone.status("spy-1")["state"],
        "succeeded",
        "the spy did not run beside the victim:\n{spy_log}"
    );
    assert!(
        !spy_log.contains(&"TOKEN=kind-b-token".chars().rev().collect::<String>()),
        "the spy read the victim's environment:\n{spy_log}"
    );
    let processes: u32 = spy_log
        .lines()
        .find_map(|l| l.strip_prefix("PROCESSES="))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no count of processes:\n{spy_log}"));
    assert!(
        processes <= 5,
        "the spy sees {processes} processes, not only its own few:\n{spy_log}"
    );
    assert!(
        spy_log.contains("SIGNAL: ") && spy_log.contains("No such process"),
        "the spy reached a process of the host (or the probe did not run):\n{spy_log}"
    );
}

/// Kind `owner` publishes its working directory's path; kind `intruder` tries to plant a file there
/// and in the dispatcher's own folders; `owner` then looks whether anything arrived.
#[test]
fn a_handler_cannot_write_into_another_runs_folder_or_see_the_dispatchers_state() {
    if !root_or_skip("a_handler_cannot_write_into_another_runs_folder_or_see_the_dispatchers_state")
    {
        return;
    }
    let world = World::new().build();
    let place = world.markers.join("owner-dir");
    let planted = world.markers.join("planted");
    let owner = format!(
        "#!/bin/sh\npwd > {place}.tmp && mv {place}.tmp {place}\n{}\
         ls -A . | sed 's/^/FOUND /'\necho owner done\n",
        wait_for(&planted),
        place = place.display()
    );
    let intruder = format!(
        "#!/bin/sh\n{}dir=$(cat {})\n\
         echo evil > \"$dir/evil\" 2>/dev/null && echo PLANTED\n\
         for d in \"$WORKDIR\" \"$LOCKDIR\" \"$SECRETS\" \"$(dirname \"$dir\")\"; do\n\
           ls -A \"$d\" 2>/dev/null | sed \"s|^|SEEN $d/|\"\n\
           cat \"$d\" 2>/dev/null | sed 's/^/READ /'\n\
         done\n\
         touch {}\n",
        wait_for(&place),
        place.display(),
        planted.display()
    );
    world.handler("owner.sh", &owner);
    world.handler("intruder.sh", &intruder);
    world.index(&index_with(&[
        entry("owner", "owner.sh", &["timeout: 60s"]),
        entry(
            "intruder",
            "intruder.sh",
            &["env: [WORKDIR, LOCKDIR, SECRETS]", "timeout: 60s"],
        ),
    ]));
    world.publish("owner and intruder");
    world.submit("owner-1.yml", "kind: owner\nresource: o\n");
    world.submit("intruder-1.yml", "kind: intruder\nresource: i\n");
    let secrets = world.root.join("secrets.env");
    fs::write(&secrets, "API_TOKEN=do-not-read-me\n").expect("the secrets file");
    fs::set_permissions(
        &secrets,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod");

    let mut run = world.run_command(world.remote_arg(), &["--until-empty", "--jobs", "2"]);
    run.arg("--secrets-file")
        .arg(&secrets)
        .env("WORKDIR", &world.work)
        .env("LOCKDIR", &world.locks)
        .env("SECRETS", &secrets);
    world.output(run).assert_exit(0);

    let clone = world.fresh_clone();
    let owner_log = clone
        .read_string(&log_file("owner-1", 1))
        .unwrap_or_default();
    let intruder_log = clone
        .read_string(&log_file("intruder-1", 1))
        .unwrap_or_default();
    assert!(
        owner_log.contains("owner done") && !owner_log.contains("FOUND evil"),
        "another kind's run wrote into the owner's working directory:\n{owner_log}"
    );
    assert!(
        !intruder_log.contains("PLANTED"),
        "the intruder says it planted a file:\n{intruder_log}"
    );
    // Of the runs' folder, it sees its own files (shown again over the hidden folder), no other.
    let seen: Vec<&str> = intruder_log
        .lines()
        .filter(|l| l.starts_with("SEEN ") && !l.contains("intruder-1."))
        .collect();
    assert!(
        seen.is_empty() && !intruder_log.contains("READ "),
        "the intruder saw the dispatcher's state or other runs' folders: {seen:?}\n{intruder_log}"
    );
    assert_eq!(clone.status("intruder-1")["state"], "succeeded");
}

/// The host is read-only but for the working directory, a private `/tmp` and `writable:` paths.
#[test]
fn a_handler_writes_only_its_working_directory_its_private_tmp_and_its_writable_paths() {
    if !root_or_skip(
        "a_handler_writes_only_its_working_directory_its_private_tmp_and_its_writable_paths",
    ) {
        return;
    }
    let world = World::new().build();
    // Named after this world: nothing else on the host has it.
    let private = format!(
        "private-{}",
        world.root.file_name().expect("a name").to_string_lossy()
    );
    let allowed = world.root.join("allowed");
    let refused = world.root.join("refused");
    for dir in [&allowed, &refused] {
        fs::create_dir(dir).expect("a folder");
        fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o1777))
            .expect("chmod");
    }
    let probe = format!(
        "#!/bin/sh\n\
         try() {{ if touch \"$1\" 2>/dev/null; then echo \"WROTE $1\"; else echo \"REFUSED $1\"; fi; }}\n\
         try ./here\ntry /tmp/{private}\ntry /dev/shm/{private}\ntry {allowed}/yes\ntry {refused}/no\n\
         try /var/tmp/escape-$DISPATCH_ID\n\
         ls -A {root} | sed 's/^/ROOT /'\n",
        allowed = allowed.display(),
        refused = refused.display(),
        root = world.root.display()
    );
    world.handler("probe.sh", &probe);
    world.index(&index_with(&[entry(
        "probe",
        "probe.sh",
        &[
            &format!("writable: [{}]", allowed.display()),
            "timeout: 30s",
        ],
    )]));
    world.publish("the probe");
    world.submit("probe-1.yml", "kind: probe\n");

    world.run(&[]).assert_exit(0);

    let clone = world.fresh_clone();
    let log = clone
        .read_string(&log_file("probe-1", 1))
        .unwrap_or_default();
    for wrote in [
        "WROTE ./here".to_owned(),
        format!("WROTE /tmp/{private}"),
        format!("WROTE /dev/shm/{private}"),
        format!("WROTE {}/yes", allowed.display()),
    ] {
        assert!(log.contains(&wrote), "no `{wrote}`:\n{log}");
    }
    for refused_line in [
        format!("REFUSED {}/no", refused.display()),
        "REFUSED /var/tmp/escape-probe-1".to_owned(),
    ] {
        assert!(log.contains(&refused_line), "no `{refused_line}`:\n{log}");
    }
    // Of the host's /tmp, only the folders that lead to its writable path are there.
    assert_eq!(
        log.lines()
            .filter(|l| l.starts_with("ROOT "))
            .collect::<Vec<_>>(),
        ["ROOT allowed"],
        "the handler's /tmp is not its own:\n{log}"
    );
    assert!(
        allowed.join("yes").exists(),
        "the writable path was not the host's"
    );
    assert!(!refused.join("no").exists());
    assert!(
        !std::path::Path::new("/tmp").join(&private).exists()
            && !std::path::Path::new("/dev/shm").join(&private).exists(),
        "the private /tmp was the host's"
    );
}

/// An escapee with a session and an environment of its own is gone when its run ends.
#[test]
fn an_escapee_with_its_own_session_and_a_cleared_environment_dies_with_its_run() {
    if !root_or_skip("an_escapee_with_its_own_session_and_a_cleared_environment_dies_with_its_run")
    {
        return;
    }
    let strays = Strays::sleeping(3600);
    let escaper = format!(
        "#!/bin/sh\nsetsid env -i nohup {} >/dev/null 2>&1 &\n\
         session() {{ cut -d' ' -f6 /proc/$1/stat; }}\n\
         i=0; while [ \"$(session $!)\" = \"$(session $$)\" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done\n\
         echo left it running in session $(session $!)\n",
        strays.command
    );
    let world = World::new()
        .handler("escaper.sh", &escaper)
        .index(&index_with(&[entry(
            "escaper",
            "escaper.sh",
            &["timeout: 30s"],
        )]))
        .build();
    world.submit("escape-1.yml", "kind: escaper\n");

    // While the dispatcher lives on, the escapee must not outlive its run.
    let mut dispatcher =
        world.spawn(world.run_command(world.remote_arg(), &["--poll-interval", "200ms"]));
    assert!(
        dispatcher.wait_for_output("pushed", RUN_DEADLINE),
        "the outcome was not pushed: {}",
        dispatcher.output_so_far()
    );
    assert_eq!(world.fresh_clone().status("escape-1")["state"], "succeeded");
    strays.assert_gone("an escapee that left the handler's session and cleared its environment");
    dispatcher.terminate();
    dispatcher.wait(RUN_DEADLINE).assert_exit(0);
}

/// `isolation: none` gives the handler the host's view back, and the dispatcher says so.
#[test]
fn isolation_none_shows_the_host_and_is_warned_about_at_start() {
    if !root_or_skip("isolation_none_shows_the_host_and_is_warned_about_at_start") {
        return;
    }
    let world = World::new().build();
    let probe = format!(
        "#!/bin/sh\n[ -d {} ] && echo SEES-HOST-TMP\necho PID=$$\n",
        world.remote.display()
    );
    world.handler("probe.sh", &probe);
    world.index(&index_with(&[
        entry("open", "probe.sh", &["isolation: none", "timeout: 30s"]),
        entry("closed", "probe.sh", &["timeout: 30s"]),
    ]));
    world.publish("open and closed");
    world.submit("open-1.yml", "kind: open\n");
    world.submit("closed-1.yml", "kind: closed\n");

    let out = world.run(&[]);
    out.assert_exit(0);

    let clone = world.fresh_clone();
    let log = |key: &str| clone.read_string(&log_file(key, 1)).unwrap_or_default();
    let (open, closed) = (log("open-1"), log("closed-1"));
    assert!(open.contains("SEES-HOST-TMP"), "{open}");
    assert!(!open.contains("PID=1\n"), "{open}");
    assert!(!closed.contains("SEES-HOST-TMP"), "{closed}");
    assert!(
        closed.contains("PID=1\n"),
        "the isolated handler is its namespace's init:\n{closed}"
    );
    let said = out.all_output();
    assert!(
        said.contains("warning: kind `open` runs without isolation"),
        "no warning about `isolation: none`:\n{said}"
    );
    assert!(
        !said.contains("kind `closed` runs without isolation"),
        "{said}"
    );
}

/// Under a cgroup, `memory:` limits what the run uses: the allocation is killed and recorded as out
/// of memory, and a run that fits has its peak memory and CPU time in its status.
#[test]
fn a_run_over_its_cgroup_memory_is_failed_as_out_of_memory_and_usage_is_recorded() {
    if !root_or_skip(
        "a_run_over_its_cgroup_memory_is_failed_as_out_of_memory_and_usage_is_recorded",
    ) {
        return;
    }
    let world = World::new()
        .handler("hog.sh", HOG)
        .index(&index_with(&[
            entry("hog-small", "hog.sh", &["memory: 100MiB", "timeout: 60s"]),
            entry("hog-large", "hog.sh", &["memory: 2GiB", "timeout: 60s"]),
        ]))
        .build();
    world.submit("hog-small.yml", "kind: hog-small\n");
    world.submit("hog-large.yml", "kind: hog-large\n");

    world.run(&[]).assert_exit(0);

    let clone = world.fresh_clone();
    let small = clone.status("hog-small");
    assert_eq!(small["state"], "failed", "{small:#}");
    assert_eq!(small["error"], "out of memory (limit 100MiB)", "{small:#}");
    let large = clone.status("hog-large");
    let large_log = clone
        .read_string(&log_file("hog-large", 1))
        .unwrap_or_default();
    assert_eq!(large["state"], "succeeded", "{large:#}\n{large_log}");
    assert!(
        large_log.contains("ALLOCATED 1073741824"),
        "an address-space limit got in the way:\n{large_log}"
    );
    let peak = large["memory_peak_bytes"].as_u64().unwrap_or(0);
    assert!(
        peak >= 1 << 30,
        "the peak memory of a 1 GiB allocation is recorded as {peak}: {large:#}"
    );
    assert!(large["cpu_ms"].is_u64(), "no CPU time: {large:#}");
}

/// `pids:` bounds a fork loop within the run's cgroup; nothing of it is left.
#[test]
fn a_fork_loop_is_bounded_by_pids() {
    if !root_or_skip("a_fork_loop_is_bounded_by_pids") {
        return;
    }
    let strays = Strays::sleeping(3600);
    let (sleep, arg) = strays.command.split_once(' ').expect("`sleep ARG`");
    let forker = format!(
        "#!/bin/sh\nexec python3 - <<'EOF'\n\
         import os\n\
         forked = refused = 0\n\
         for _ in range(100):\n\
         \x20   try:\n\
         \x20       pid = os.fork()\n\
         \x20   except OSError:\n\
         \x20       refused += 1\n\
         \x20       continue\n\
         \x20   if pid == 0:\n\
         \x20       os.execvp('{sleep}', ['{sleep}', '{arg}'])\n\
         \x20   forked += 1\n\
         print('FORKED', forked, 'REFUSED', refused, flush=True)\n\
         EOF\n"
    );
    let world = World::new()
        .handler("forker.sh", &forker)
        .index(&index_with(&[entry(
            "forker",
            "forker.sh",
            &["pids: 20", "timeout: 30s"],
        )]))
        .build();
    world.submit("fork-1.yml", "kind: forker\n");

    world.run(&[]).assert_exit(0);

    let clone = world.fresh_clone();
    let log = clone
        .read_string(&log_file("fork-1", 1))
        .unwrap_or_default();
    let counts: Vec<u32> = log
        .lines()
        .find_map(|l| l.strip_prefix("FORKED "))
        .map(|rest| {
            rest.split(" REFUSED ")
                .filter_map(|n| n.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let [forked, refused] = counts[..] else {
        panic!("no counts:\n{log}");
    };
    assert!(
        forked < 20 && refused > 0,
        "{forked} forks under `pids: 20` ({refused} refused):\n{log}"
    );
    strays.assert_gone("the fork loop's sleeps");
}

/// `cpu:` bounds the run's CPU time: a busy loop of 3 s under `cpu: 0.2` gets about 0.6 s of CPU,
/// the same loop without it far more; both have `cpu_ms` recorded.
#[test]
fn cpu_bounds_the_cpu_time_of_a_busy_loop() {
    if !root_or_skip("cpu_bounds_the_cpu_time_of_a_busy_loop") {
        return;
    }
    let busy = "#!/bin/sh\nexec timeout 3 sh -c 'while :; do :; done'\n";
    let world = World::new()
        .handler("busy.sh", busy)
        .index(&index_with(&[
            entry("slow", "busy.sh", &["cpu: 0.2", "timeout: 30s"]),
            entry("fast", "busy.sh", &["timeout: 30s"]),
        ]))
        .build();
    world.submit("slow-1.yml", "kind: slow\nresource: a\n");
    world.submit("fast-1.yml", "kind: fast\nresource: b\n");

    world.run(&["--jobs", "2"]).assert_exit(0);

    let clone = world.fresh_clone();
    let cpu = |key: &str| {
        let status = clone.status(key);
        status["cpu_ms"]
            .as_u64()
            .unwrap_or_else(|| panic!("no `cpu_ms`: {status:#}"))
    };
    let (slow, fast) = (cpu("slow-1"), cpu("fast-1"));
    assert!(
        slow < 1000,
        "a 3 s busy loop under `cpu: 0.2` used {slow} ms of CPU"
    );
    assert!(
        fast > 1000,
        "control: the same loop without `cpu:` used only {fast} ms of CPU"
    );
}

/// An isolated handler is its namespace's process 1, which the kernel gives only the signals it
/// catches: at the timeout, one that catches SIGTERM gets it; one that leaves it at its default is
/// ended at once (not after its grace) and recorded as killed by SIGTERM.
#[test]
fn at_its_timeout_an_isolated_handler_ends_as_sigterm_would_end_it() {
    if !root_or_skip("at_its_timeout_an_isolated_handler_ends_as_sigterm_would_end_it") {
        return;
    }
    let plain = Strays::sleeping(3600);
    let world = World::new()
        .handler("plain.sh", &format!("#!/bin/sh\nexec {}\n", plain.command))
        .handler(
            "trapping.sh",
            "#!/bin/sh\ntrap 'echo caught TERM; exit 3' TERM\nsleep 3600 &\nwait\n",
        )
        .index(&index_with(&[
            entry("plain", "plain.sh", &["timeout: 1s", "grace: 60s"]),
            entry("trapping", "trapping.sh", &["timeout: 1s", "grace: 60s"]),
        ]))
        .build();
    world.submit("plain-1.yml", "kind: plain\nresource: a\n");
    world.submit("trapping-1.yml", "kind: trapping\nresource: b\n");

    world.run(&["--jobs", "2"]).assert_exit(0);

    let clone = world.fresh_clone();
    let plain_status = clone.status("plain-1");
    assert_eq!(plain_status["state"], "timed_out", "{plain_status:#}");
    assert_eq!(plain_status["signal"], 15, "{plain_status:#}");
    let ms = plain_status["duration_ms"].as_u64().expect("duration_ms");
    assert!(
        ms < 30_000,
        "ended after {ms} ms: the grace (60 s), not the timeout (1 s), ended it"
    );
    plain.assert_gone("the handler that left SIGTERM at its default");
    let trapping = clone.status("trapping-1");
    let log = clone
        .read_string(&log_file("trapping-1", 1))
        .unwrap_or_default();
    assert_eq!(trapping["state"], "timed_out", "{trapping:#}");
    assert!(
        log.contains("caught TERM") && trapping["exit_code"] == 3,
        "the handler that catches SIGTERM did not get it: {trapping:#}\n{log}"
    );
}

#[test]
fn a_run_whose_view_cannot_be_made_is_failed_and_the_runs_after_it_still_start() {
    // A `writable:` path missing on this host fails the run's setup before its handler's process
    // is made: the run must still take its turn for the slot, or every run after it waits for ever.
    if !root_or_skip("a_run_whose_view_cannot_be_made_is_failed_and_the_runs_after_it_still_start")
    {
        return;
    }
    let world = World::new().build();
    let missing = world.root.join("no-such-folder");
    add_kinds(
        &world,
        &[
            (
                "nowhere",
                "#!/bin/sh\necho ran\n",
                &format!("  writable: [{}]\n", missing.display()),
            ),
            ("fine", "#!/bin/sh\necho fine\n", ""),
        ],
    );
    world.submit("first.yml", "kind: nowhere\nresource: a\n");
    world.submit("second.yml", "kind: fine\nresource: b\n");
    world.submit("third.yml", "kind: fine\nresource: a\n");

    let out = world.run(&["--jobs", "1"]);
    out.assert_exit(0);

    let clone = world.fresh_clone();
    let first = clone.status("first");
    assert_eq!(first["state"], "failed", "{first:#}\n{out}");
    let error = first["error"].as_str().unwrap_or_default();
    assert!(error.contains("no-such-folder"), "{error}");
    assert_eq!(clone.status("second")["state"], "succeeded", "{out}");
    assert_eq!(clone.status("third")["state"], "succeeded", "{out}");
}
