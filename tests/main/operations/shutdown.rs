//! Shutdown: SIGTERM during a run records and pushes it and takes nothing new (with one job, the
//! request taken ahead stays in the inbox); SIGKILL while a run waits for its slot leaves that request
//! to the restart; a second SIGINT exits 130 at once and the handler dies with the dispatcher.

use std::fs;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use super::{DEADLINE, remote_tip};
use crate::support::{Background, DEFAULT_INDEX, Strays, World, add_kinds, log_file, wait_until};

/// `handlers/<name>` that touches `markers/started-<id>`, then waits for `markers/go` (at most 30 s)
/// and exits 0: the test decides when a run ends.
fn gated_handler(world: &World) -> String {
    let markers = world.markers.display();
    format!(
        "#!/bin/sh\ntouch '{markers}/started-'\"$DISPATCH_ID\"\ni=0\n\
         while [ ! -e '{markers}/go' ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done\n\
         echo \"gated run of $DISPATCH_ID done\"\n"
    )
}

/// Sends `signal` to the dispatcher (as `kill -s` would).
fn send(dispatcher: &Background, signal: Signal) {
    let pid = Pid::from_raw(i32::try_from(dispatcher.pid()).expect("pids fit in i32"));
    kill(pid, signal).unwrap_or_else(|e| panic!("kill -{signal} {pid}: {e}"));
}

#[test]
fn sigterm_during_a_run_records_and_pushes_it_and_takes_nothing_new() {
    sigterm_during_a_run(&[]);
}

#[test]
fn sigterm_during_a_run_with_one_job_leaves_the_request_taken_ahead_in_the_inbox() {
    // With one job the next request is taken while the current one runs, and waits for the slot.
    let (world, out) = sigterm_during_a_run(&["--jobs", "1"]);
    assert!(
        out.stderr
            .contains("behind: not started: the dispatcher is stopping"),
        "`behind` was not taken ahead:\n{out}"
    );
    assert_journal_empty(&world);
}

/// Nothing is left in the dispatcher's journal but its folders of spare files.
fn assert_journal_empty(world: &World) {
    let left: Vec<_> = fs::read_dir(world.work.join("journal"))
        .expect("the journal")
        .map(|e| e.expect("entry").file_name())
        .filter(|name| name != "spare" && name != "spare-entries")
        .collect();
    assert!(left.is_empty(), "left in the journal: {left:?}");
}

#[test]
fn sigkill_while_a_run_waits_for_its_slot_leaves_that_request_to_run_after_the_restart() {
    let world = World::new().build();
    add_kinds(&world, &[("gated", &gated_handler(&world), "")]);
    world.submit("first.yml", "kind: gated\n");
    world.submit("behind.yml", "kind: gated\n");
    let dispatcher = world.spawn(world.run_command(
        world.remote_arg(),
        &["--poll-interval", "200ms", "--jobs", "1"],
    ));
    // `behind` is taken ahead while `first` runs: its journal entry is written and synced, without
    // a start mark, before it waits for the slot.
    let prepared = world.work.join("journal").join("behind.json");
    let unmarked = |bytes: &[u8]| {
        let mut documents = serde_json::Deserializer::from_slice(bytes).into_iter::<Value>();
        let entry = documents.next().and_then(Result::ok);
        entry.is_some_and(|e| e["key"] == "behind" && e.get("started_at").is_none())
            && documents.next().is_none()
    };
    let waiting = wait_until(DEADLINE, || {
        world.markers.join("started-first").exists()
            && fs::read(&prepared).is_ok_and(|bytes| unmarked(&bytes))
    });
    assert!(
        waiting,
        "`first` never ran with `behind` waiting for the slot: {}",
        dispatcher.output_so_far()
    );
    kill(Pid::from_raw(dispatcher.pid() as i32), Signal::SIGKILL).expect("kill -KILL");
    let killed = dispatcher.wait(DEADLINE);
    assert_eq!(killed.signal, Some(9), "{killed}");
    // `behind`'s process, made and waiting at its gate (a clone of the dispatcher, with its command
    // line), dies with the dispatcher.
    let workdir = world.work.to_string_lossy().into_owned();
    let of_the_dispatcher = || {
        fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|p| {
                fs::read(p.path().join("cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&workdir))
            })
            .count()
    };
    assert!(
        wait_until(DEADLINE, || of_the_dispatcher() == 0),
        "{} process(es) of the killed dispatcher are left",
        of_the_dispatcher()
    );

    fs::write(world.markers.join("go"), "").expect("let the handlers finish");
    let out = world.run(&[]);
    out.assert_exit(0);
    assert!(
        !out.stderr.contains("unreadable"),
        "the prepared entry was taken for a torn one:\n{out}"
    );
    let clone = world.fresh_clone();
    assert_eq!(clone.status("first")["state"], "abandoned", "{out}");
    assert_eq!(clone.status("behind")["state"], "succeeded", "{out}");
    assert_eq!(clone.status("behind")["attempts"], 1, "{out}");
    assert_eq!(clone.ls("requests"), [".gitkeep"], "{out}");
    assert_journal_empty(&world);
}

fn sigterm_during_a_run(args: &[&str]) -> (World, crate::support::RunOutput) {
    let world = World::new().build();
    add_kinds(&world, &[("gated", &gated_handler(&world), "")]);
    // Both are waiting before the dispatcher starts; `behind` is queued on the same resource.
    world.submit("first.yml", "kind: gated\n");
    world.submit("behind.yml", "kind: gated\n");
    let mut run_args = vec!["--poll-interval", "200ms"];
    run_args.extend_from_slice(args);
    let mut dispatcher = world.spawn(world.run_command(world.remote_arg(), &run_args));
    let started = world.markers.join("started-first");
    let running = wait_until(DEADLINE, || started.exists() || !dispatcher.running());
    assert!(
        running && started.exists(),
        "the handler never started: {}",
        dispatcher.output_so_far()
    );

    dispatcher.terminate();
    // Let the dispatcher see the signal before the run ends (best effort: the log says so); the
    // assertions below do not depend on it.
    wait_until(Duration::from_secs(5), || {
        dispatcher.output_so_far().to_lowercase().contains("signal")
    });
    fs::write(world.markers.join("go"), "").expect("let the handler finish");
    let out = dispatcher.wait(DEADLINE);

    out.assert_exit(0);
    let clone = world.fresh_clone();
    assert_eq!(clone.status("first")["state"], "succeeded", "{out}");
    assert!(
        clone
            .read_string(&log_file("first", 1))
            .is_some_and(|log| log.contains("gated run of first done")),
        "the run that was interrupted is not logged in full:\n{out}"
    );
    assert_eq!(
        clone.ls("requests"),
        [".gitkeep", "behind.yml"],
        "the request queued behind was taken after SIGTERM (or the first is still waiting):\n{out}"
    );
    assert!(
        clone.statuses().iter().all(|(key, _)| key == "first"),
        "only `first` may have an outcome: {:?}",
        clone.statuses()
    );
    assert!(
        !world.markers.join("started-behind").exists(),
        "the handler ran for the request queued behind after SIGTERM"
    );
    (world, out)
}

#[test]
fn a_second_sigint_exits_130_at_once_and_the_handler_dies_with_the_dispatcher() {
    let world = World::new().build();
    let sleepers = Strays::sleeping(30);
    let long = format!(
        "#!/bin/sh\ntouch '{}/started-'\"$DISPATCH_ID\"\nexec {}\n",
        world.markers.display(),
        sleepers.command
    );
    // Longer than the sleep, so only the signals can end the run early.
    world.handler("long.sh", &long);
    world.index(&format!(
        "{DEFAULT_INDEX}long:\n  handler: long.sh\n  timeout: 60s\n  grace: 1s\n"
    ));
    world.publish("add the long kind");
    world.submit("stuck.yml", "kind: long\n");
    let tip = remote_tip(&world);
    let mut dispatcher =
        world.spawn(world.run_command(world.remote_arg(), &["--poll-interval", "200ms"]));
    let mut pids = Vec::new();
    let running = wait_until(DEADLINE, || {
        pids = sleepers.pids();
        !pids.is_empty() || !dispatcher.running()
    });
    assert!(
        running && !pids.is_empty() && world.markers.join("started-stuck").exists(),
        "the handler never started: {}",
        dispatcher.output_so_far()
    );

    send(&dispatcher, Signal::SIGINT);
    // Two signals sent back to back may be delivered as one: wait for the first to be taken in.
    let noticed = wait_until(Duration::from_secs(10), || {
        dispatcher.output_so_far().to_lowercase().contains("signal") || !dispatcher.running()
    });
    assert!(
        noticed && dispatcher.running(),
        "the first SIGINT did not start a graceful shutdown (the dispatcher must wait for the \
         handler): {}",
        dispatcher.output_so_far()
    );
    send(&dispatcher, Signal::SIGINT);
    // Well before the handler's 30 s sleep ends.
    let out = dispatcher.wait(Duration::from_secs(15));

    out.assert_exit(130);
    let mut left = Vec::new();
    let gone = wait_until(Duration::from_secs(5), || {
        left = sleepers.pids();
        left.is_empty()
    });
    assert!(
        gone,
        "the handler `{}` outlived the dispatcher (pids {left:?})",
        sleepers.command
    );
    assert_eq!(remote_tip(&world), tip, "something was pushed:\n{out}");
    let clone = world.fresh_clone();
    assert_eq!(clone.ls("requests"), [".gitkeep", "stuck.yml"]);
    assert_eq!(
        clone.statuses(),
        Vec::new(),
        "an outcome was pushed:\n{out}"
    );
}
