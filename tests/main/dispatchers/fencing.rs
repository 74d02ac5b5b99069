//! Fencing: a dispatcher that can no longer renew its claim stops its handler before its lease
//! ends, and another dispatcher, once the lease has expired, records the request `abandoned`, naming
//! the one that held it.

use std::fs;
use std::time::{Duration, Instant};

use super::{alive, assert_recorded_once};
use crate::support::fleet::{Member, outputs, recorded_ids};
use crate::support::proxy::Proxy;
use crate::support::{GitDaemon, Strays, World, wait_until};

#[test]
fn a_dispatcher_cut_off_from_the_remote_stops_its_handler_and_another_records_it_abandoned() {
    loses_the_remote(Proxy::cut);
}

/// A remote that stops answering without closing anything (packets dropped): the dispatcher's
/// fetches and pushes hang rather than fail, and the handler must still be stopped in time.
#[test]
fn a_dispatcher_whose_remote_stops_answering_stops_its_handler_and_another_records_it_abandoned() {
    loses_the_remote(Proxy::stall);
}

/// alpha runs a long handler through a proxy that `trouble` then breaks; beta, on the remote
/// itself, takes the expired claim over. alpha's handler must be stopped (fenced) long before its
/// timeout, and `long-1` recorded `abandoned` once, by beta, naming alpha.
fn loses_the_remote(trouble: fn(&Proxy)) {
    let world = World::new().build();
    let strays = Strays::sleeping(3600);
    let starts = world.markers.join("starts");
    // `exec`: the sleeping handler itself is found by its command line.
    let script = format!(
        "#!/bin/sh\necho $$ >> {}\nexec {}\n",
        starts.display(),
        strays.command
    );
    // Its natural end is the kind's timeout, 60 s after it starts.
    world.handler("long.sh", &script);
    world.index(&format!(
        "{}long:\n  handler: long.sh\n  timeout: 60s\n  grace: 1s\n",
        crate::support::DEFAULT_INDEX
    ));
    world.publish("the long kind");
    let daemon = GitDaemon::serve(&world);
    let proxy = Proxy::start(daemon.port());
    world.submit("long-1.yml", "kind: long\nid: long-1\n");
    world.submit("long-2.yml", "kind: long\nid: long-2\n");

    // One job: `long-2`, of the same resource and claim, is taken ahead and waits for the slot,
    // which `long-1`'s run gives up when its handler is stopped.
    let options = ["--lease", "4s", "--jobs", "1"];
    let mut fleet = vec![Member::start(&world, &proxy.url(), "alpha", &options)];
    let mut pid = String::new();
    assert!(
        wait_until(Duration::from_secs(60), || {
            // The pid on the host: an isolated handler is pid 1 in its own namespace.
            pid = strays
                .pids()
                .first()
                .map(i32::to_string)
                .unwrap_or_default();
            !pid.is_empty()
        }),
        "alpha did not start the handler:\n{}",
        outputs(&fleet)
    );
    assert!(alive(&pid), "the handler ended at once");

    trouble(&proxy);
    let cut_at = Instant::now();
    fleet.push(Member::start(&world, &daemon.url(), "beta", &options));
    // Fenced: alpha stops the handler once its last renewal is older than half the lease (2 s),
    // long before the 60 s the handler would run.
    let stopped = wait_until(Duration::from_secs(15), || !alive(&pid));
    assert!(
        stopped,
        "alpha's handler (pid {pid}) still runs {:?} after the remote was lost:\n{}",
        cut_at.elapsed(),
        outputs(&fleet)
    );

    // beta takes the expired claim over and records the request.
    let watch = world.clone_from(&daemon.url());
    let mut last = Instant::now();
    assert!(
        wait_until(Duration::from_secs(60), || {
            if last.elapsed() < Duration::from_millis(300) {
                return false;
            }
            last = Instant::now();
            recorded_ids(&watch).len() == 2
        }),
        "nobody recorded `long-1` and `long-2`:\n{}",
        outputs(&fleet)
    );
    // However the remote was lost, alpha says so while it is still lost: a silent remote holds a
    // fetch or push for a bounded time (the lease, at least 10 s), not for minutes.
    assert!(
        fleet[0].wait_for_output("could not", Duration::from_secs(40)),
        "alpha said nothing of the lost remote:\n{}",
        outputs(&fleet)
    );
    // alpha gets the remote back and stops: it records nothing more for `long-1`.
    proxy.restore();
    let alpha = fleet[0].stop(Duration::from_secs(30));
    alpha.assert_exit(0);
    fleet[1].stop(Duration::from_secs(30)).assert_exit(0);
    // `long-2` was given the slot after its claim's deadline: it never started.
    assert!(
        !alpha.stderr.contains("long-2: running") && alpha.stderr.contains("long-2: not started"),
        "alpha started `long-2` after its claim's deadline:\n{alpha}"
    );

    let clone = world.clone_from(&daemon.url());
    assert_recorded_once(&clone, &["long-1".to_owned(), "long-2".to_owned()]);
    let started = fs::read_to_string(&starts).unwrap_or_default();
    assert_eq!(
        started.lines().count(),
        1,
        "handlers started (pids): {started}"
    );
    let status = clone.status("long-1");
    assert_eq!(status["state"], "abandoned", "{status:#}");
    assert_eq!(status["dispatcher"], "beta", "{status:#}");
    let error = status["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("alpha"),
        "the error does not name alpha: {status:#}"
    );
    strays.assert_gone("after both dispatchers stopped");
}
