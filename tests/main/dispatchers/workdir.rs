//! A workdir belongs to one dispatcher whatever its `--dispatcher-id`: a second one on it is refused
//! (exit 2, "in use") and the first keeps serving. (`reliability::workdir_lock` pins the same with one
//! id over a local path.)

use std::time::Duration;

use crate::support::fleet::Member;
use crate::support::{GitDaemon, World};

#[test]
fn a_second_dispatcher_id_on_a_workdir_in_use_is_refused() {
    let world = World::new().build();
    let daemon = GitDaemon::serve(&world);
    let mut first = Member::start(&world, &daemon.url(), "one", &["--lease", "4s"]);
    let work = first.work.clone();
    assert!(
        first.wait_for_output("serving", Duration::from_secs(30)),
        "the first dispatcher is not serving:\n{}",
        first.output_so_far()
    );

    let mut second = world.dispatcher();
    second
        .args([
            "run",
            "--until-empty",
            "--remote",
            &daemon.url(),
            "--workdir",
        ])
        .arg(&work)
        .args(["--dispatcher-id", "two", "--lease", "4s"]);
    let second = world.output(second);
    second.assert_exit(2);
    assert!(second.stderr.contains("in use"), "{second}");

    assert!(
        first.running(),
        "the first stopped:\n{}",
        first.output_so_far()
    );
    first.stop(Duration::from_secs(30)).assert_exit(0);
}
