//! A backlog's resources are shared evenly: a dispatcher claims no more than its share of the
//! resources known to have work while others are about. Each claimed as many as it could get first,
//! and the one with the most ran last, alone, while the others had nothing they could take.

use std::time::Duration;

use super::{add_work_kind, assert_recorded_once, submit_spread};
use crate::support::fleet::{Member, Runs, outputs, tally, wait_for_outcomes};
use crate::support::{GitDaemon, World, wait_until};

const FLEET: [&str; 3] = ["d1", "d2", "d3"];

#[test]
fn three_dispatchers_each_run_a_third_of_a_backlog_of_30_resources() {
    let world = World::new().build();
    let runs = Runs::new(&world);
    add_work_kind(&world, &runs, "0.3", "");
    let daemon = GitDaemon::serve(&world);
    let mut fleet: Vec<Member> = FLEET
        .iter()
        .map(|id| Member::start(&world, &daemon.url(), id, &["--lease", "4s", "--jobs", "2"]))
        .collect();
    // Every dispatcher has written its heartbeat, and looked at the others' (it looks every 200
    // ms), before the backlog comes.
    let watch = world.clone_from(&daemon.url());
    let beats = || {
        watch
            .git(&["ls-remote", "origin", "refs/dispatch/dispatchers/*"])
            .lines()
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(30), || beats() == FLEET.len()),
        "not every dispatcher wrote its heartbeat:\n{}",
        outputs(&fleet)
    );
    std::thread::sleep(Duration::from_secs(1));
    // 30 resources of 3 requests each: a claim lists a resource's three at once.
    let resource_of = submit_spread(&world, "work", "s", 90, 30);
    assert!(
        wait_for_outcomes(&watch, 90, Duration::from_secs(120)),
        "90 requests not recorded:\n{}",
        outputs(&fleet)
    );
    for member in &mut fleet {
        member.stop(Duration::from_secs(30)).assert_exit(0);
    }

    assert_recorded_once(&world.clone_from(&daemon.url()), resource_of.keys());
    let all = runs.read();
    let per_host = tally(all.iter().map(|r| r.host.as_str()));
    let resources_per_host = tally(
        all.iter()
            .map(|r| (r.host.as_str(), resource_of[&r.id].as_str()))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(|(host, _)| host),
    );
    assert_eq!(
        per_host.into_iter().collect::<Vec<_>>(),
        [
            ("host-d1".to_owned(), 30),
            ("host-d2".to_owned(), 30),
            ("host-d3".to_owned(), 30)
        ],
        "runs per dispatcher (resources per dispatcher: {resources_per_host:?})"
    );
}
