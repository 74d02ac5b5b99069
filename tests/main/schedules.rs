//! `schedules/NAME.yml`: slots become requests `NAME.<slot>` exactly once with two dispatchers on a
//! `git daemon` remote; after a stop, `catch_up` decides which missed slots run; `overlap: skip`
//! writes no slot while the last one runs; an invalid schedule is reported by `validate --index`,
//! `doctor`, `status` and the dispatcher's log. (DST: unit tests of `inbox::schedule`.)

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use crate::support::fleet::{Member, outputs};
use crate::support::{GitDaemon, World, add_kinds, git_command, wait_until};

const DEADLINE: Duration = Duration::from_secs(60);

/// Writes `schedules/NAME.yml` in the submitter's clone and commits it with the real time (slots
/// are counted from the schedule's commit), then pushes.
fn schedule_now(world: &World, name: &str, yaml: &str) {
    let clone = &world.submitter;
    clone.sync();
    clone.write(&format!("schedules/{name}.yml"), yaml);
    clone.git(&["add", "-A"]);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let date = format!("{now} +0000");
    let mut cmd = git_command(&world.home, &clone.dir);
    cmd.env("GIT_AUTHOR_DATE", &date)
        .env("GIT_COMMITTER_DATE", &date)
        .args(["commit", "-q", "-m", &format!("schedule {name}")]);
    assert!(cmd.status().expect("git").success());
    clone.push();
}

/// How many commits added `requests/ID.yml`, by id, for the ids of schedule `name`.
fn added(clone: &crate::support::Checkout, name: &str) -> BTreeMap<String, usize> {
    let mut added = BTreeMap::new();
    let log = clone.git(&[
        "log",
        "--diff-filter=A",
        "--name-only",
        "--format=",
        "--",
        "requests/",
    ]);
    for line in log.lines() {
        if let Some(id) = line
            .strip_prefix("requests/")
            .and_then(|f| f.strip_suffix(".yml"))
            .filter(|id| id.starts_with(&format!("{name}.")))
        {
            *added.entry(id.to_owned()).or_default() += 1;
        }
    }
    added
}

#[test]
fn two_dispatchers_turn_each_slot_into_one_request_recorded_once() {
    let world = World::new().build();
    let daemon = GitDaemon::serve(&world);
    schedule_now(
        &world,
        "tick",
        "every: 1s\noverlap: queue\nrequest: {kind: echo}\n",
    );
    let mut fleet: Vec<Member> = ["s1", "s2"]
        .iter()
        .map(|id| Member::start(&world, &daemon.url(), id, &["--lease", "4s"]))
        .collect();
    let watch = world.clone_from(&daemon.url());
    let enough = wait_until(DEADLINE, || {
        watch.sync();
        watch.statuses().len() >= 6
    });
    assert!(enough, "slots did not run:\n{}", outputs(&fleet));
    for member in &mut fleet {
        member.stop(DEADLINE).assert_exit(0);
    }
    watch.sync();
    let added = added(&watch, "tick");
    assert!(added.len() >= 6, "{added:?}");
    assert!(
        added.values().all(|n| *n == 1),
        "a slot added twice: {added:?}"
    );
    let ids = watch.trailers("Dispatch-Id");
    let mut seen = std::collections::HashSet::new();
    assert!(
        ids.iter().all(|id| seen.insert(id.clone())),
        "an id recorded twice: {ids:?}"
    );
    for (key, status) in watch.statuses() {
        assert_eq!(status["schedule"], "tick", "{key}: {status:#}");
        assert_eq!(status["state"], "succeeded", "{key}: {status:#}");
    }
}

/// After a stop of three slots or more (`every: 2s`, committed 7 s before the dispatcher starts):
/// how many slots the dispatcher's first `schedule:` commit writes (its catch-up), and how many of
/// all it wrote were due before it started.
fn caught_up(policy: &str) -> (usize, usize) {
    let world = World::new().build();
    schedule_now(
        &world,
        "tock",
        &format!("every: 2s\ncatch_up: {policy}\noverlap: queue\nrequest: {{kind: echo}}\n"),
    );
    let committed = SystemTime::now();
    let passed = wait_until(Duration::from_secs(20), || {
        committed
            .elapsed()
            .is_ok_and(|e| e >= Duration::from_secs(7))
    });
    assert!(passed);
    let started = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    world.run(&[]).assert_exit(0);
    let clone = world.fresh_clone();
    // The first look's commit: `schedule: tock.A, tock.B, ...`.
    let first = clone
        .git(&["log", "--reverse", "--format=%s", "--grep=^schedule: "])
        .lines()
        .next()
        .map_or(0, |subject| subject.matches("tock.").count());
    let before_start = added(&clone, "tock")
        .keys()
        .filter_map(|id| {
            let stamp = id.strip_prefix("tock.")?;
            let at = chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ").ok()?;
            u64::try_from(at.and_utc().timestamp()).ok()
        })
        .filter(|t| *t <= started)
        .count();
    (first, before_start)
}

#[test]
fn after_a_stop_latest_runs_the_newest_missed_slot_all_runs_each_and_none_runs_none() {
    // One request for all the missed slots (its first look writes one slot, the newest).
    let (latest, _) = caught_up("latest");
    assert_eq!(latest, 1, "catch_up: latest");
    // One per missed slot: three or more.
    let (all, _) = caught_up("all");
    assert!(
        all >= 3,
        "catch_up: all wrote {all} slots at its first look"
    );
    // None of the slots due before the dispatcher started.
    let (_, none) = caught_up("none");
    assert_eq!(none, 0, "catch_up: none");
}

#[test]
fn overlap_skip_writes_no_slot_while_the_last_one_runs() {
    let world = World::new().build();
    let markers = world.markers.display();
    add_kinds(
        &world,
        &[(
            "hold",
            &format!(
                "#!/bin/sh\ntouch '{markers}/started'\n\
                 while [ ! -e '{markers}/release' ]; do sleep 0.05; done\n"
            ),
            "",
        )],
    );
    schedule_now(&world, "slow", "every: 1s\nrequest: {kind: hold}\n");
    let dispatcher =
        world.spawn(world.run_command(world.remote_arg(), &["--poll-interval", "200ms"]));
    assert!(
        wait_until(DEADLINE, || world.markers.join("started").exists()),
        "never started:\n{}",
        dispatcher.output_so_far()
    );
    let since = SystemTime::now();
    // Three more slots pass while the first run holds.
    assert!(wait_until(Duration::from_secs(10), || {
        since.elapsed().is_ok_and(|e| e >= Duration::from_secs(3))
    }));
    assert!(
        dispatcher
            .output_so_far()
            .contains("skipped: a request of this schedule is still queued or running"),
        "{}",
        dispatcher.output_so_far()
    );
    std::fs::write(world.markers.join("release"), "").expect("release");
    dispatcher.terminate();
    dispatcher.wait(DEADLINE).assert_exit(0);
    let clone = world.fresh_clone();
    let added = added(&clone, "slow");
    // The held slot, and at most the one written after it ended before the stop.
    assert!(!added.is_empty() && added.len() <= 2, "{added:?}");
}

#[test]
fn an_invalid_schedule_is_reported_by_validate_doctor_status_and_the_dispatcher() {
    let world = World::new().build();
    world.submitter.write(
        "schedules/broken.yml",
        "every: 1m\nrequest: {kind: no-such-kind}\n",
    );
    world.submitter.write(
        "schedules/fine.yml",
        "cron: \"0 3 * * *\"\ntimezone: Europe/Madrid\nrequest: {kind: echo}\n",
    );
    world.publish("two schedules");
    let validate =
        crate::everyday::everyday(&world, &world.submitter.dir, &["validate", "--index"]);
    validate.assert_exit(1);
    assert!(
        validate
            .stderr
            .contains("schedule `schedules/broken.yml`: its `request` would be rejected"),
        "{validate}"
    );
    let status = crate::everyday::everyday(&world, &world.submitter.dir, &["status", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&status.stdout).expect("JSON");
    let schedules = json["schedules"].as_array().expect("schedules");
    assert_eq!(schedules.len(), 2, "{json:#}");
    assert_eq!(schedules[0]["name"], "broken");
    assert_eq!(schedules[0]["valid"], false);
    assert_eq!(schedules[1]["valid"], true);
    assert!(schedules[1]["next"].as_str().is_some(), "{json:#}");
    let mut doctor = world.dispatcher();
    doctor
        .args(["doctor", "--remote", world.remote_arg(), "--workdir"])
        .arg(&world.work)
        .arg("--lock-dir")
        .arg(&world.locks);
    let doctor = world.output(doctor);
    assert!(
        doctor
            .all_output()
            .contains("schedule `schedules/broken.yml`"),
        "{doctor}"
    );
    assert!(
        doctor.all_output().contains("schedule `fine` is valid"),
        "{doctor}"
    );
    let run = world.run(&[]);
    run.assert_exit(0);
    assert_eq!(
        run.stderr
            .matches("schedule `schedules/broken.yml`")
            .count(),
        1,
        "said once: {run}"
    );
    // The valid one made its latest slot; the broken one nothing.
    let ran = world.fresh_clone().statuses();
    assert!(
        ran.iter().all(|(key, _)| key.starts_with("fine.")),
        "{ran:?}"
    );
}
