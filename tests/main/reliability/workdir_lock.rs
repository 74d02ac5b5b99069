//! One dispatcher per workdir: a `dispatcher.lock` held for a moment (by a child a killed dispatcher
//! left) is waited for; a second dispatcher on a workdir in use exits 2.

use std::fs;

use super::DEADLINE;
use crate::support::World;

#[test]
fn a_workdir_lock_held_for_a_moment_is_waited_for() {
    // What a dispatcher killed while it started a child leaves: its lock held by that child until
    // the child executes its program (the full suite under load hit this after fail points).
    let world = World::new().build();
    world.submit("after-lock.yml", "kind: echo\nparams:\n  message: hi\n");
    fs::create_dir_all(&world.work).expect("workdir");
    let mut holder = std::process::Command::new("flock")
        .arg(world.work.join("dispatcher.lock"))
        .args(["-c", "echo held; sleep 0.5"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run flock");
    let mut held = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().expect("piped")),
        &mut held,
    )
    .expect("flock says it holds the lock");
    assert_eq!(held, "held\n");

    world.run(&[]).assert_exit(0);
    assert!(holder.wait().expect("flock ends").success());
    assert_eq!(
        world.fresh_clone().status("after-lock")["state"],
        "succeeded"
    );
}

#[test]
fn second_dispatcher_on_the_same_workdir_exits_2_in_use() {
    let world = World::new().build();
    let mut first =
        world.spawn(world.run_command(world.remote_arg(), &["--poll-interval", "200ms"]));
    assert!(
        first.wait_for_output("serving", DEADLINE),
        "the first dispatcher is not serving: {}",
        first.output_so_far()
    );

    let second = world.run(&[]);
    second.assert_exit(2);
    assert!(second.stderr.contains("in use"), "{second}");

    assert!(
        first.running(),
        "the first dispatcher stopped: {}",
        first.output_so_far()
    );
    first.terminate();
    first.wait(DEADLINE).assert_exit(0);
}
