//! Capability routing end to end: a kind with `runs_on: [gpu]` is run only by the dispatcher started
//! with `--labels gpu`; a kind without `runs_on` by either.

use std::time::Duration;

use super::{add_work_kind, assert_recorded_once, submit_requests, submit_spread};
use crate::support::fleet::{Member, Runs, outputs, tally, wait_for_outcomes};
use crate::support::{GitDaemon, World};

#[test]
fn a_kind_that_runs_on_gpu_is_run_only_by_the_dispatcher_labelled_gpu() {
    let world = World::new().build();
    let runs = Runs::new(&world);
    add_work_kind(&world, &runs, "0.05", "  runs_on: [gpu]\n");
    let daemon = GitDaemon::serve(&world);
    let mut expected = submit_spread(&world, "work", "gpu", 20, 4);
    let plain: Vec<String> = (0..10).map(|i| format!("plain-{i:02}")).collect();
    submit_requests(
        &world,
        plain
            .iter()
            .map(|id| (id.as_str(), format!("kind: echo\nid: {id}\n"))),
    );
    expected.extend(plain.iter().map(|id| (id.clone(), "echo".to_owned())));

    let options = ["--lease", "4s", "--jobs", "2"];
    // The one without the label starts first, and gets a head start of the first requests.
    let mut fleet = vec![Member::start(&world, &daemon.url(), "cpu", &options)];
    fleet.push(Member::start(
        &world,
        &daemon.url(),
        "gpu",
        &["--lease", "4s", "--jobs", "2", "--labels", "gpu"],
    ));
    let watch = world.clone_from(&daemon.url());
    assert!(
        wait_for_outcomes(&watch, 30, Duration::from_secs(120)),
        "30 requests not recorded:\n{}",
        outputs(&fleet)
    );
    for member in &mut fleet {
        member.stop(Duration::from_secs(30)).assert_exit(0);
    }

    let clone = world.clone_from(&daemon.url());
    assert_recorded_once(&clone, expected.keys());
    for (id, _) in expected.iter().filter(|(id, _)| id.starts_with("gpu-")) {
        let status = clone.status(id);
        assert_eq!(status["state"], "succeeded", "{id}: {status:#}");
        assert_eq!(status["dispatcher"], "gpu", "{id}: {status:#}");
    }
    let hosts = tally(runs.read().iter().map(|r| r.host.as_str()));
    assert_eq!(
        hosts.into_iter().collect::<Vec<_>>(),
        [("host-gpu".to_owned(), 20)],
        "where the `runs_on: [gpu]` handlers ran"
    );
    for id in &plain {
        assert_eq!(clone.status(id)["state"], "succeeded", "{id}");
    }
}
