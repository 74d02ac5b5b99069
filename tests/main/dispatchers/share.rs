//! How a backlog is shared among dispatchers: a dispatcher claims no more than its share of the
//! resources known to have work while others are about (each claimed as many as it could get first,
//! and the one with the most ran last, alone, while the others had nothing they could take); a long
//! queue another dispatcher holds does not hide what waits behind it from an idle one; and with one
//! slot no resource is claimed for a request its own queue comes before.

use std::time::Duration;

use super::{add_work_kind, assert_recorded_once, submit_requests, submit_spread};
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
    // Every dispatcher has written its heartbeat, then rewritten it (every quarter of the lease,
    // in the turn of its loop after a look at the remote): it has looked since all three were
    // there, before the backlog comes.
    let watch = world.clone_from(&daemon.url());
    let beats = || -> std::collections::BTreeMap<String, String> {
        watch
            .git(&["ls-remote", "origin", "refs/dispatch/dispatchers/*"])
            .lines()
            .filter_map(|line| line.split_once('\t'))
            .map(|(oid, name)| (name.to_owned(), oid.to_owned()))
            .collect()
    };
    let mut first = beats();
    assert!(
        wait_until(Duration::from_secs(30), || {
            first = beats();
            first.len() == FLEET.len()
        }),
        "not every dispatcher wrote its heartbeat:\n{}",
        outputs(&fleet)
    );
    assert!(
        wait_until(Duration::from_secs(30), || {
            let now = beats();
            first
                .iter()
                .all(|(name, oid)| now.get(name).is_some_and(|o| o != oid))
        }),
        "not every dispatcher rewrote its heartbeat:\n{}",
        outputs(&fleet)
    );
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

/// Submits `ids` of kind `work` in one commit, each on its own resource when `resource` is `None`.
fn submit_work(world: &World, ids: &[String], resource: Option<&str>) {
    submit_requests(
        world,
        ids.iter().map(|id| {
            let resource = resource.unwrap_or(id);
            (
                id.as_str(),
                format!("kind: work\nid: {id}\nresource: {resource}\n"),
            )
        }),
    );
}

/// A world whose `work` kind sleeps `seconds`, served by `git daemon`, and one dispatcher `d1`
/// with `--jobs 1`.
fn one_slot(seconds: &str) -> (World, Runs, GitDaemon, Vec<Member>) {
    let world = World::new().build();
    let runs = Runs::new(&world);
    add_work_kind(&world, &runs, seconds, "");
    let daemon = GitDaemon::serve(&world);
    let fleet = vec![Member::start(
        &world,
        &daemon.url(),
        "d1",
        &["--lease", "8s", "--jobs", "1"],
    )];
    (world, runs, daemon, fleet)
}

#[test]
fn requests_behind_a_long_queue_another_dispatcher_holds_are_run_by_an_idle_one() {
    let (world, runs, daemon, mut fleet) = one_slot("1");
    // 80 requests of a second each on one resource, which d1 claims and runs one after another.
    let long: Vec<String> = (0..80).map(|i| format!("long-{i:02}")).collect();
    submit_work(&world, &long, Some("queue"));
    assert!(
        wait_until(Duration::from_secs(60), || runs.started() >= 1),
        "d1 started nothing:\n{}",
        outputs(&fleet)
    );
    // Behind them, four on resources nobody holds; and a second dispatcher with nothing to do.
    let other: Vec<String> = (0..4).map(|i| format!("other-{i}")).collect();
    submit_work(&world, &other, None);
    fleet.push(Member::start(
        &world,
        &daemon.url(),
        "d2",
        &["--lease", "8s", "--jobs", "2"],
    ));
    let watch = world.clone_from(&daemon.url());
    let mut recorded = Vec::new();
    assert!(
        wait_until(Duration::from_secs(120), || {
            recorded = crate::support::fleet::recorded_ids(&watch);
            other.iter().all(|id| recorded.contains(id))
        }),
        "the four behind the long queue were not recorded:\n{}",
        outputs(&fleet)
    );
    let long_done = recorded.iter().filter(|id| id.starts_with("long-")).count();
    assert!(
        long_done < 10,
        "the four behind the long queue waited for {long_done} of its requests: d2 did not see \
         them past the requests d1 holds:\n{}",
        outputs(&fleet)
    );
    let hosts: Vec<String> = runs
        .read()
        .into_iter()
        .filter(|r| r.id.starts_with("other-"))
        .map(|r| r.host)
        .collect();
    assert_eq!(hosts, ["host-d2"; 4], "where the four ran");
    for member in &mut fleet {
        member.stop(Duration::from_secs(30)).assert_exit(0);
    }
}

#[test]
fn with_one_slot_no_resource_is_claimed_for_a_request_behind_a_queue_held_here() {
    let (world, runs, daemon, mut fleet) = one_slot("0.3");
    // One commit: 30 requests on one resource, then one on its own (arrival order: by name).
    let mut ids: Vec<String> = (0..30).map(|i| format!("long-{i:02}")).collect();
    submit_work(&world, &ids, Some("queue"));
    submit_work(&world, &["other-0".to_owned()], None);
    ids.push("other-0".to_owned());
    let watch = world.clone_from(&daemon.url());
    // While the queue's runs come first, a claim of `other-0` would keep any other dispatcher
    // from running it: it is claimed only once the queue's last requests are taken.
    let mut claimed_while_queued = None;
    assert!(
        wait_until(Duration::from_secs(120), || {
            // Read before the claim: a claim seen after it is not older than these starts.
            let unstarted = 30usize.saturating_sub(runs.started());
            let claim = watch.git(&["ls-remote", "origin", "refs/dispatch/claims/other-0"]);
            // The slot and two runs ahead: `other-0` may be claimed once it is among the next three.
            if !claim.is_empty() && unstarted > 3 {
                claimed_while_queued = Some(unstarted);
                return true;
            }
            crate::support::fleet::recorded_ids(&watch).len() == 31
        }),
        "31 requests not recorded:\n{}",
        outputs(&fleet)
    );
    assert_eq!(
        claimed_while_queued, None,
        "`other-0` was claimed with that many of the queue's requests not started"
    );
    for member in &mut fleet {
        member.stop(Duration::from_secs(30)).assert_exit(0);
    }
    assert_recorded_once(&world.clone_from(&daemon.url()), ids.iter());
}
