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
    let world = World::new().build();
    let strays = Strays::sleeping(3600);
    let pid_file = world.markers.join("long.pid");
    // `exec`: the pid in the file is the sleeping handler itself.
    let script = format!(
        "#!/bin/sh\necho $$ > {}\nexec {}\n",
        pid_file.display(),
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

    let options = ["--lease", "4s", "--jobs", "2"];
    let mut fleet = vec![Member::start(&world, &proxy.url(), "alpha", &options)];
    let mut pid = String::new();
    assert!(
        wait_until(Duration::from_secs(60), || {
            pid = fs::read_to_string(&pid_file)
                .unwrap_or_default()
                .trim()
                .to_owned();
            !pid.is_empty()
        }),
        "alpha did not start the handler:\n{}",
        outputs(&fleet)
    );
    assert!(alive(&pid), "the handler ended at once");

    proxy.cut();
    let cut_at = Instant::now();
    fleet.push(Member::start(&world, &daemon.url(), "beta", &options));
    // Fenced: alpha stops the handler once its last renewal is older than half the lease (2 s),
    // long before the 60 s the handler would run.
    let stopped = wait_until(Duration::from_secs(15), || !alive(&pid));
    assert!(
        stopped,
        "alpha's handler (pid {pid}) still runs {:?} after the remote was cut off:\n{}",
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
            !recorded_ids(&watch).is_empty()
        }),
        "nobody recorded `long-1`:\n{}",
        outputs(&fleet)
    );
    // alpha gets the remote back and stops: it records nothing more for `long-1`.
    proxy.restore();
    for member in &mut fleet {
        member.stop(Duration::from_secs(30)).assert_exit(0);
    }

    let clone = world.clone_from(&daemon.url());
    assert_recorded_once(&clone, [&"long-1".to_owned()]);
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
