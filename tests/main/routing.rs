//! Routing: a request's `kind` is looked up in the `handlers/index.yml` of the commit the dispatcher
//! fetched, so a handler added (or remapped) by a later push is used by the next run or the next poll,
//! with no restart and no rebuild. (A broken index makes requests wait: `control::blockers`.)

use std::time::Duration;

use crate::support::{DEFAULT_INDEX, World, log_file, processed, wait_until};

const LATE_HANDLER: &str = "#!/bin/sh\necho \"late handler ran for $DISPATCH_ID\"\n";

fn index_with_late_kind() -> String {
    format!("{DEFAULT_INDEX}late:\n  handler: late.sh\n  timeout: 30s\n  grace: 1s\n")
}

/// The later kind's params schema: `who` is a required string.
const LATE_SCHEMA: &str = r#"{
  "type": "object",
  "required": ["who"],
  "properties": { "who": { "type": "string" } }
}
"#;

#[test]
fn kind_added_by_a_later_push_is_routed_by_the_next_run() {
    let world = World::new().build();
    world.submit("early.yml", "kind: echo\n");
    world.run(&[]).assert_exit(0);

    world.handler("late.sh", LATE_HANDLER);
    world.schema("late.schema.json", LATE_SCHEMA);
    world.index(&format!(
        "{DEFAULT_INDEX}late:\n  handler: late.sh\n  schema: late.schema.json\n  timeout: 30s\n  grace: 1s\n"
    ));
    world.publish("add the late kind");
    world.submit("newcomer.yml", "kind: late\nparams:\n  who: newcomer\n");
    world.submit("anonymous.yml", "kind: late\nparams: {}\n");
    world.run(&[]).assert_exit(0);

    let clone = world.fresh_clone();
    let status = clone.status("newcomer");
    assert_eq!(status["state"], "succeeded", "status: {status:#}");
    assert_eq!(status["handler"], "handlers/late.sh");
    assert!(
        clone
            .read_string(&log_file("newcomer", 1))
            .is_some_and(|log| log.contains("late handler ran for newcomer")),
        "the new handler did not run"
    );
    let (_, rejected) = clone.rejected_for("anonymous.yml");
    assert!(
        rejected["error"]
            .as_str()
            .is_some_and(|e| e.contains("who")),
        "the new kind's params schema was not applied: {rejected:#}"
    );
}

#[test]
fn remapping_a_kind_in_the_index_takes_effect_on_the_next_run() {
    let world = World::new().build();
    world.submit("before.yml", "kind: echo\n");
    world.run(&[]).assert_exit(0);

    world.handler("echo2.sh", "#!/bin/sh\necho \"second echo handler\"\n");
    world.index(&DEFAULT_INDEX.replace("handler: echo.sh", "handler: echo2.sh"));
    world.publish("route echo to echo2.sh");
    world.submit("after.yml", "kind: echo\n");
    world.run(&[]).assert_exit(0);

    let clone = world.fresh_clone();
    assert_eq!(clone.status("before")["handler"], "handlers/echo.sh");
    let status = clone.status("after");
    assert_eq!(status["handler"], "handlers/echo2.sh");
    assert_eq!(
        status["handler_blob"],
        clone.git(&["rev-parse", "HEAD:handlers/echo2.sh"]).as_str()
    );
    assert!(
        clone
            .read_string(&log_file("after", 1))
            .is_some_and(|log| log.contains("second echo handler")),
        "the remapped handler did not run"
    );
}

#[test]
fn polling_loop_routes_a_kind_pushed_while_it_runs_and_exits_zero_on_sigterm() {
    let world = World::new().build();
    let mut dispatcher =
        world.spawn(world.run_command(world.remote_arg(), &["--poll-interval", "200ms"]));
    let clone = world.fresh_clone();
    let processed = |clone: &crate::support::Checkout, key: &str| {
        clone.sync();
        clone.read(&processed(key, "status.json")).is_some()
    };

    // First prove the loop is up and has read the old index.
    world.submit("warmup.yml", "kind: echo\n");
    let warm = wait_until(Duration::from_secs(20), || {
        processed(&clone, "warmup") || !dispatcher.running()
    });
    assert!(
        warm && processed(&clone, "warmup"),
        "the polling dispatcher did not process `warmup`: {}",
        dispatcher.output_so_far()
    );

    world.handler("late.sh", LATE_HANDLER);
    world.index(&index_with_late_kind());
    world.publish("add the late kind");
    world.submit("late-1.yml", "kind: late\n");
    let seen = wait_until(Duration::from_secs(20), || {
        processed(&clone, "late-1") || !dispatcher.running()
    });
    assert!(
        seen && processed(&clone, "late-1"),
        "the polling dispatcher did not process `late-1`: {}",
        dispatcher.output_so_far()
    );
    assert_eq!(clone.status("late-1")["state"], "succeeded");
    assert_eq!(clone.status("late-1")["handler"], "handlers/late.sh");

    dispatcher.terminate();
    dispatcher.wait(Duration::from_secs(15)).assert_exit(0);
}

/// Capability routing: a kind with `runs_on: [gpu]` is left queued by a dispatcher without the
/// label (which still drains the rest and exits), and run by one started with `--labels gpu`.
#[test]
fn a_kind_whose_runs_on_labels_a_dispatcher_lacks_is_left_queued_for_one_that_has_them() {
    let world = World::new().build();
    crate::support::add_kinds(
        &world,
        &[(
            "train",
            "#!/bin/sh\necho \"trained $DISPATCH_ID\"\n",
            "  runs_on: [gpu]\n",
        )],
    );
    world.submit("train-1.yml", "kind: train\n");
    world.submit("train-2.yml", "kind: train\n");
    world.submit("plain.yml", "kind: echo\n");

    let out = world.run(&["--labels", "cpu"]);
    out.assert_exit(0);
    let clone = world.fresh_clone();
    assert_eq!(clone.status("plain")["state"], "succeeded");
    assert_eq!(
        clone.ls("requests"),
        [".gitkeep", "train-1.yml", "train-2.yml"],
        "the gpu requests did not stay queued:\n{out}"
    );
    let said = "leaving requests of kind `train` for a dispatcher with labels `gpu`";
    assert_eq!(
        out.stderr.matches(said).count(),
        1,
        "not said once for the kind:\n{out}"
    );

    // `--once` does not wait for them either, and a dry run says they would be left.
    let once = world.output(world.run_command(world.remote_arg(), &["--once"]));
    once.assert_exit(0);
    let dry = world.run(&["--dry-run"]);
    dry.assert_exit(0);
    assert!(
        dry.stdout
            .contains("would leave  requests/train-1.yml  for another dispatcher"),
        "{dry}"
    );
    assert_eq!(world.fresh_clone().ls("requests").len(), 3);

    world.run(&["--labels", "cpu,gpu"]).assert_exit(0);
    let clone = world.fresh_clone();
    assert_eq!(clone.ls("requests"), [".gitkeep"]);
    for id in ["train-1", "train-2"] {
        assert_eq!(clone.status(id)["state"], "succeeded", "{id}");
    }
}

/// With `--handlers-dir`, a kind the host does not define but the repository's index lists is left
/// for a host that defines it; a kind neither lists is still rejected.
#[test]
fn a_kind_the_hosts_handlers_dir_lacks_is_left_for_a_host_that_defines_it() {
    let world = World::new().build();
    crate::support::add_kinds(
        &world,
        &[("train", "#!/bin/sh\necho \"trained $DISPATCH_ID\"\n", "")],
    );
    let host = world.root.join("host-handlers");
    std::fs::create_dir_all(&host).expect("host handlers dir");
    std::fs::write(
        host.join("index.yml"),
        "echo:\n  handler: echo.sh\n  timeout: 30s\n",
    )
    .expect("host index");
    std::fs::write(host.join("echo.sh"), "#!/bin/sh\necho \"host echo\"\n").expect("handler");
    let mode = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755);
    std::fs::set_permissions(host.join("echo.sh"), mode).expect("chmod");
    world.submit("train-1.yml", "kind: train\n");
    world.submit("plain.yml", "kind: echo\n");
    world.submit("stray.yml", "kind: nosuch\n");

    let host_arg = host.to_str().expect("UTF-8 path");
    let out = world.run(&["--handlers-dir", host_arg]);
    out.assert_exit(0);
    let clone = world.fresh_clone();
    assert_eq!(clone.status("plain")["state"], "succeeded");
    assert_eq!(clone.status("stray")["state"], "rejected");
    assert_eq!(
        clone.ls("requests"),
        [".gitkeep", "train-1.yml"],
        "the kind the host lacks was not left queued:\n{out}"
    );
    assert!(
        out.stderr
            .contains("leaving requests of kind `train` for a dispatcher that defines it"),
        "{out}"
    );

    // A host that takes its handlers from the repository runs it.
    world.run(&[]).assert_exit(0);
    assert_eq!(world.fresh_clone().status("train-1")["state"], "succeeded");
}
