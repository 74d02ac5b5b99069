//! `drain NAME`/`undrain NAME`: of two dispatchers on one `git daemon` remote, the drained one starts
//! nothing new, finishes and pushes the run it had, and says it is drained (log, `/metrics`, its
//! heartbeat in `status --json`); the other takes all the new work; `undrain` lets it start again.

use super::{DEADLINE, operate};
use crate::support::fleet::{Member, outputs};
use crate::support::{GitDaemon, World, add_kinds, free_port, metric, wait_until};

#[test]
fn a_drained_dispatcher_starts_nothing_new_but_records_its_run_and_the_other_takes_the_work() {
    let world = World::new().build();
    let markers = world.markers.display();
    add_kinds(
        &world,
        &[(
            "hold",
            &format!(
                "#!/bin/sh\ntouch '{markers}/started'\n\
                 while [ ! -e '{markers}/release' ]; do sleep 0.05; done\necho released\n"
            ),
            "",
        )],
    );
    let daemon = GitDaemon::serve(&world);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut fleet = vec![Member::start(
        &world,
        &daemon.url(),
        "d1",
        &["--lease", "4s", "--metrics-addr", &addr],
    )];
    world.submit("long.yml", "kind: hold\nid: long\n");
    assert!(
        wait_until(DEADLINE, || world.markers.join("started").exists()),
        "long never started on d1:\n{}",
        outputs(&fleet)
    );
    fleet.push(Member::start(
        &world,
        &daemon.url(),
        "d2",
        &["--lease", "4s"],
    ));

    operate(&world, &["drain", "d1", "--reason", "disk swap"]).assert_exit(0);
    assert!(
        fleet[0].wait_for_output("dispatcher `d1` is drained", DEADLINE),
        "d1 never said it is drained:\n{}",
        outputs(&fleet)
    );
    assert_eq!(metric(port, "git_dispatch_drained"), Some(1.0));
    let files: Vec<(String, String)> = (0..6)
        .map(|i| {
            (
                format!("e-{i}.yml"),
                format!("kind: echo\nid: e-{i}\nresource: r-{i}\n"),
            )
        })
        .collect();
    let files: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, y)| (n.as_str(), y.as_bytes()))
        .collect();
    world.submit_many(&files);
    std::fs::write(world.markers.join("release"), "").expect("release");

    let watch = world.clone_from(&daemon.url());
    let all = wait_until(DEADLINE, || {
        watch.sync();
        watch.statuses().len() == 7
    });
    assert!(all, "not all recorded:\n{}", outputs(&fleet));
    assert_eq!(watch.status("long")["state"], "succeeded");
    assert_eq!(
        watch.status("long")["dispatcher"],
        "d1",
        "the drained one records its run"
    );
    for i in 0..6 {
        let status = watch.status(&format!("e-{i}"));
        assert_eq!(
            status["dispatcher"], "d2",
            "e-{i} ran on a drained dispatcher: {status:#}"
        );
    }

    // Its heartbeat says so, with the reason.
    let said = wait_until(DEADLINE, || {
        let out = operate(&world, &["status", "--json"]);
        let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_default();
        json["dispatchers"].as_array().is_some_and(|all| {
            all.iter().any(|d| {
                d["id"] == "d1"
                    && d["state"] == "drained"
                    && d["blocked"]
                        .as_str()
                        .is_some_and(|b| b.contains("disk swap"))
            })
        })
    });
    assert!(
        said,
        "d1's heartbeat never said drained:\n{}",
        outputs(&fleet)
    );

    operate(&world, &["undrain", "d1"]).assert_exit(0);
    assert!(
        fleet[0].wait_for_output("starting requests again", DEADLINE),
        "d1 never started again:\n{}",
        outputs(&fleet)
    );
    assert_eq!(metric(port, "git_dispatch_drained"), Some(0.0));
    for member in &mut fleet {
        member.stop(DEADLINE).assert_exit(0);
    }
}
