//! Three dispatchers drain one inbox: every request's handler starts once (at most once when
//! dispatchers are SIGKILLed and restarted), every id is recorded once, and no resource runs on two
//! hosts at once.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::{add_work_kind, assert_recorded_once, submit_spread};
use crate::support::fleet::{
    Member, Run, Runs, assert_no_overlap, now_ns, outputs, tally, wait_for_outcomes,
};
use crate::support::{GitDaemon, World};

const FLEET: [&str; 3] = ["d1", "d2", "d3"];
const OPTIONS: [&str; 4] = ["--lease", "4s", "--jobs", "2"];
const DRAIN_DEADLINE: Duration = Duration::from_secs(240);
const STOP_DEADLINE: Duration = Duration::from_secs(30);

#[test]
fn three_dispatchers_drain_300_requests_each_run_once_and_no_resource_on_two_at_once() {
    let world = World::new().build();
    let runs = Runs::new(&world);
    add_work_kind(&world, &runs, "0.1", "");
    let daemon = GitDaemon::serve(&world);
    let resource_of = submit_spread(&world, "work", "w", 300, 30);

    let mut fleet: Vec<Member> = FLEET
        .iter()
        .map(|id| Member::start(&world, &daemon.url(), id, &OPTIONS))
        .collect();
    let watch = world.clone_from(&daemon.url());
    assert!(
        wait_for_outcomes(&watch, 300, DRAIN_DEADLINE),
        "300 requests not recorded within {DRAIN_DEADLINE:?}:\n{}",
        outputs(&fleet)
    );
    for member in &mut fleet {
        member.stop(STOP_DEADLINE).assert_exit(0);
    }

    let clone = world.clone_from(&daemon.url());
    let all = runs.read();
    let started = started_once(&all, "");
    assert_eq!(started.len(), 300, "ids whose handler started");
    assert!(all.iter().all(|r| r.end.is_some()), "a run never ended");
    assert_recorded_once(&clone, resource_of.keys());
    for (key, status) in clone.statuses() {
        assert_eq!(status["state"], "succeeded", "{key}: {status:#}");
    }
    assert_no_overlap(&all, &resource_of, |run| {
        unreachable!("every run ended: {run:?}")
    });
    // How the work was shared is not a guarantee (a claim may hold several requests): shown only.
    eprintln!(
        "runs per host: {:?}",
        tally(all.iter().map(|r| r.host.as_str()))
    );
}

/// A small xorshift generator: the test prints its seed, so a failing sequence of kills can be
/// replayed by reading it.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        usize::try_from(self.0 % n as u64).expect("small")
    }
}

#[test]
fn dispatchers_killed_at_random_start_each_handler_at_most_once_and_record_it_once() {
    const N: usize = 150;
    const KILLS: usize = 5;
    let world = World::new().build();
    let runs = Runs::new(&world);
    // Not idempotent: a run its dispatcher's death interrupted is recorded `abandoned`, never run
    // again.
    add_work_kind(&world, &runs, "0.2", "  idempotent: false\n");
    let daemon = GitDaemon::serve(&world);
    let resource_of = submit_spread(&world, "work", "k", N, 15);

    let seed = u64::try_from(now_ns() % 1_000_000_007).expect("small") | 1;
    let mut rng = Rng(seed);
    let mut fleet: Vec<Member> = FLEET
        .iter()
        .map(|id| Member::start(&world, &daemon.url(), id, &OPTIONS))
        .collect();
    // When each host's dispatcher was killed (ns): a run it left unfinished ended by then.
    let mut kills: HashMap<String, Vec<u128>> = HashMap::new();
    for kill in 0..KILLS {
        // After 5 to 25 more handler starts, kill one at random and start it again.
        let target = runs.started() + 5 + rng.below(20);
        let progressed =
            crate::support::wait_until(Duration::from_secs(60), || runs.started() >= target);
        if !progressed {
            break;
        }
        let member = &mut fleet[rng.below(FLEET.len())];
        kills.entry(member.host()).or_default().push(now_ns());
        let killed = member.kill();
        eprintln!(
            "seed {seed}: kill {kill} of {} after {} starts ({:?})",
            member.id,
            runs.started(),
            killed.signal
        );
        member.restart(&world);
    }
    let watch = world.clone_from(&daemon.url());
    assert!(
        wait_for_outcomes(&watch, N, DRAIN_DEADLINE),
        "seed {seed}: {N} requests not recorded within {DRAIN_DEADLINE:?}:\n{}",
        outputs(&fleet)
    );
    for member in &mut fleet {
        member.stop(STOP_DEADLINE).assert_exit(0);
    }

    let clone = world.clone_from(&daemon.url());
    let all = runs.read();
    started_once(&all, &format!("seed {seed}: "));
    assert_recorded_once(&clone, resource_of.keys());
    let run_of: HashMap<&str, &Run> = all.iter().map(|r| (r.id.as_str(), r)).collect();
    for id in resource_of.keys() {
        let status = clone.status(id);
        let state = status["state"].as_str().unwrap_or_default();
        match run_of.get(id.as_str()) {
            Some(run) if run.end.is_none() => assert_eq!(
                state, "abandoned",
                "seed {seed}: {id}'s handler was killed with its dispatcher: {status:#}"
            ),
            // A run that ended, or a claimed request its dispatcher died before starting.
            Some(_) => assert!(
                state == "succeeded" || state == "abandoned",
                "seed {seed}: {id}: {status:#}"
            ),
            None => assert_eq!(
                state, "abandoned",
                "seed {seed}: {id} never started yet is recorded: {status:#}"
            ),
        }
    }
    // A run that wrote no end was killed with its dispatcher: it ended by the next kill of its host.
    assert_no_overlap(&all, &resource_of, |run| {
        kills
            .get(&run.host)
            .and_then(|times| times.iter().copied().find(|t| *t >= run.start))
            .unwrap_or_else(|| {
                panic!("seed {seed}: a run that never ended on a live host: {run:?}")
            })
    });
}

/// How many times each id's handler started, asserting none started more than once (`context`
/// begins the message).
fn started_once(all: &[Run], context: &str) -> BTreeMap<String, usize> {
    let started = tally(all.iter().map(|r| r.id.as_str()));
    let twice: Vec<_> = started.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "{context}handlers started more than once ({} ids of {}; the first (id, starts)): {:?}",
        twice.len(),
        started.len(),
        &twice[..twice.len().min(10)]
    );
    started
}
