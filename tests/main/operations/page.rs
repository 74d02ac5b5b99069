//! What `--http-addr` serves an operator besides `/metrics`: `/api/status`, the document of
//! `status --json`, read by the dispatcher from its own workdir.

use super::DEADLINE;
use crate::support::{World, chromium, free_port, http_get, wait_until};

#[test]
fn api_status_lists_the_queue_and_the_recent_outcomes_as_status_json_does() {
    let world = World::new().build();
    world.submit("done.yml", "kind: echo\n");
    world.submit(
        "later.yml",
        "kind: echo\nid: later\nnot_before: \"2999-01-01T00:00:00Z\"\n",
    );
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut dispatcher = world.spawn(world.run_command(
        world.remote_arg(),
        &["--poll-interval", "200ms", "--http-addr", &addr],
    ));
    let mut document = serde_json::Value::Null;
    let served = wait_until(DEADLINE, || {
        if let Some((200, body)) = http_get(port, "/api/status") {
            document = serde_json::from_str(&body).expect("/api/status is JSON");
        }
        document["recent"].as_array().is_some_and(|r| !r.is_empty()) || !dispatcher.running()
    });
    assert!(
        served,
        "no outcome on /api/status: {}",
        dispatcher.output_so_far()
    );
    assert_eq!(document["recent"][0]["id"], "done", "{document:#}");
    assert_eq!(document["recent"][0]["state"], "succeeded", "{document:#}");
    assert_eq!(document["counts_24h"]["succeeded"], 1, "{document:#}");
    let queue = document["queue"].as_array().expect("a queue");
    assert_eq!(queue.len(), 1, "{document:#}");
    assert_eq!(queue[0]["id"], "later");
    assert_eq!(queue[0]["state"], "queued");
    assert_eq!(queue[0]["not_before"], "2999-01-01T00:00:00Z");
    // The same keys as `status --json` prints from a clone.
    let out = crate::everyday::everyday(&world, &world.submitter.dir, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&out.stdout).expect("status --json");
    let keys = |v: &serde_json::Value| {
        v.as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert_eq!(keys(&document), keys(&status));
    dispatcher.terminate();
    dispatcher.wait(DEADLINE).assert_exit(0);
}

#[test]
fn the_page_renders_in_a_browser_what_runs_waits_failed_and_what_blocks() {
    let world = World::new().build();
    let markers = world.markers.display();
    crate::support::add_kinds(
        &world,
        &[
            (
                "hold",
                &format!(
                    "#!/bin/sh\ntouch '{markers}/held'\n\
                     while [ ! -e '{markers}/release' ]; do sleep 0.05; done\n"
                ),
                "",
            ),
            ("broken", "#!/bin/sh\necho 'disk full' >&2\nexit 3\n", ""),
        ],
    );
    world.submit("bad-1.yml", "kind: broken\nid: bad-1\n");
    world.submit("long-1.yml", "kind: hold\nid: long-1\n");
    world.submit("next-1.yml", "kind: hold\nid: next-1\n");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let dispatcher = world.spawn(world.run_command(
        world.remote_arg(),
        &[
            "--poll-interval",
            "200ms",
            "--http-addr",
            &addr,
            "--jobs",
            "2",
        ],
    ));
    let ready = wait_until(DEADLINE, || {
        world.markers.join("held").exists()
            && http_get(port, "/api/status")
                .is_some_and(|(_, body)| body.contains("\"bad-1\"") && body.contains("\"running\""))
    });
    assert!(ready, "not ready: {}", dispatcher.output_so_far());
    let url = format!("http://127.0.0.1:{port}/");
    let dom = chromium(&["--dump-dom"], &url);
    let section = |id: &str| {
        let start = dom
            .find(&format!("id=\"{id}\""))
            .unwrap_or_else(|| panic!("no #{id} in the page:\n{dom}"));
        let end = dom[start..]
            .find("</table>")
            .map_or(dom.len(), |e| start + e);
        dom[start..end].to_owned()
    };
    assert!(section("running").contains("long-1"), "{dom}");
    assert!(section("queue").contains("next-1"), "{dom}");
    let recent = section("recent");
    assert!(
        recent.contains("bad-1") && recent.contains("state-failed"),
        "{recent}"
    );
    assert!(recent.contains("href=\"/logs/bad-1\""), "{recent}");
    assert!(dom.contains("Dispatch-safe"), "{dom}");
    assert!(dom.contains("name=\"viewport\""), "{dom}");
    // The log link serves the log as committed.
    let (code, log) = http_get(port, "/logs/bad-1").expect("/logs/bad-1");
    assert_eq!(code, 200);
    assert!(log.contains("disk full"), "{log}");
    // A screenshot for people: `target/page.png`.
    let shot = concat!(env!("CARGO_MANIFEST_DIR"), "/target/page.png");
    chromium(
        &[&format!("--screenshot={shot}"), "--window-size=1100,1100"],
        &url,
    );
    assert!(
        std::fs::metadata(shot).is_ok_and(|m| m.len() > 1000),
        "no screenshot"
    );

    // Paused, the page says so.
    crate::everyday::everyday(
        &world,
        &world.submitter.dir,
        &["pause", "--reason", "migration"],
    )
    .assert_exit(0);
    let paused = wait_until(DEADLINE, || {
        chromium(&["--dump-dom"], &url).contains("Not dispatch-safe")
    });
    assert!(paused, "the page never showed the pause");
    assert!(chromium(&["--dump-dom"], &url).contains("migration"));
    std::fs::write(world.markers.join("release"), "").expect("release");
    dispatcher.terminate();
    dispatcher.wait(DEADLINE).assert_exit(0);
}

/// `status` of `/api/status` as JSON, once it answers 200.
fn api_status(port: u16) -> Option<serde_json::Value> {
    match http_get(port, "/api/status") {
        Some((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

#[test]
fn the_page_shows_every_dispatcher_of_the_remote_what_each_runs_and_a_stale_one_as_a_blocker() {
    use crate::support::GitDaemon;
    use crate::support::fleet::Member;

    let world = World::new().build();
    let markers = world.markers.display();
    crate::support::add_kinds(
        &world,
        &[
            (
                "hold",
                &format!(
                    "#!/bin/sh\ntouch '{markers}/held'\n\
                     while [ ! -e '{markers}/release' ]; do sleep 0.05; done\n"
                ),
                "  runs_on: [far]\n",
            ),
            ("train", "#!/bin/sh\necho trained\n", "  runs_on: [gpu]\n"),
        ],
    );
    let daemon = GitDaemon::serve(&world);
    world.submit("far-1.yml", "kind: hold\nid: far-1\nresource: far\n");
    world.submit("train-1.yml", "kind: train\nid: train-1\n");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut near = Member::start(
        &world,
        &daemon.url(),
        "near",
        &["--lease", "4s", "--http-addr", &addr],
    );
    let mut far = Member::start(
        &world,
        &daemon.url(),
        "far",
        &["--lease", "4s", "--labels", "far"],
    );

    // `near` serves the page: it shows `far` too, and that `far` runs far-1.
    let mut document = serde_json::Value::Null;
    let shown = wait_until(DEADLINE, || {
        document = api_status(port).unwrap_or_default();
        let running_far = document["queue"].as_array().is_some_and(|q| {
            q.iter()
                .any(|i| i["id"] == "far-1" && i["state"] == "running" && i["dispatcher"] == "far")
        });
        let both = document["dispatchers"]
            .as_array()
            .is_some_and(|d| d.len() == 2);
        world.markers.join("held").exists() && running_far && both
    });
    assert!(
        shown,
        "far-1 not shown running on `far`, or not both dispatchers shown: {document:#}\n{}{}",
        near.output_so_far(),
        far.output_so_far()
    );
    let ids: Vec<&str> = document["dispatchers"]
        .as_array()
        .expect("dispatchers")
        .iter()
        .filter_map(|d| d["id"].as_str())
        .collect();
    assert_eq!(ids, ["far", "near"], "{document:#}");
    let far_seen = &document["dispatchers"][0];
    assert_eq!(far_seen["freshness"], "fresh", "{document:#}");
    let host = far_seen["host"].as_str().expect("a host").to_owned();
    assert_eq!(far_seen["running"][0]["id"], "far-1", "{document:#}");
    // No dispatcher has the label `gpu`: train-1's kind is a blocker, and it says why it waits.
    let blockers = document["blockers"].as_array().expect("blockers");
    assert!(
        blockers.iter().any(|b| b["what"] == "no_dispatcher"
            && b["reason"]
                .as_str()
                .is_some_and(|r| r.contains("`train`") && r.contains("`gpu`"))),
        "{document:#}"
    );
    let page = http_get(port, "/").expect("the page").1;
    let table = &page[page
        .find("id=\"dispatchers\"")
        .expect("a dispatchers table")..];
    assert!(table.contains(&host) && table.contains("far-1"), "{page}");
    assert!(
        page.contains("no fresh dispatcher has the labels `gpu`"),
        "{page}"
    );

    // `far` dies: within a lease and a look, it is stale, a blocker naming what it ran.
    far.kill();
    let stale = wait_until(DEADLINE, || {
        document = api_status(port).unwrap_or_default();
        document["blockers"].as_array().is_some_and(|b| {
            b.iter()
                .any(|b| b["what"] == "stale" && b["dispatcher"] == "far")
        })
    });
    assert!(
        stale,
        "`far` never shown stale: {document:#}\n{}",
        near.output_so_far()
    );
    let reason = document["blockers"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["what"] == "stale"))
        .map(|b| b["reason"].to_string())
        .unwrap_or_default();
    assert!(reason.contains("far-1"), "{reason}");
    let page = http_get(port, "/").expect("the page").1;
    assert!(page.contains("Not dispatch-safe"), "{page}");
    assert!(
        page.contains(&format!("dispatcher `far` on {host} is stale")),
        "{page}"
    );
    // `status` in a clone says the same (within a second: both judge by whole seconds, from
    // clocks read at other moments).
    let mut status = serde_json::Value::Null;
    let said = wait_until(DEADLINE, || {
        let out = crate::everyday::everyday(&world, &world.submitter.dir, &["status", "--json"]);
        status = serde_json::from_str(&out.stdout).expect("status --json");
        let whats: Vec<&str> = status["blockers"]
            .as_array()
            .expect("blockers")
            .iter()
            .filter_map(|b| b["what"].as_str())
            .collect();
        whats.contains(&"stale") && whats.contains(&"no_dispatcher")
    });
    assert!(said, "{status:#}");
    std::fs::write(world.markers.join("release"), "").expect("release");
    near.stop(DEADLINE).assert_exit(0);
}

/// The records the page shows are read again and again (a heartbeat moves each quarter of a lease):
/// they are fetched into a repository of their own, so the workdir's clone gains no pack per read.
#[test]
fn reading_the_other_dispatchers_heartbeats_adds_nothing_to_the_workdirs_clone() {
    use crate::support::GitDaemon;
    use crate::support::fleet::Member;

    let world = World::new().build();
    let daemon = GitDaemon::serve(&world);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut near = Member::start(
        &world,
        &daemon.url(),
        "near",
        &["--lease", "2s", "--http-addr", &addr],
    );
    let mut far = Member::start(&world, &daemon.url(), "far", &["--lease", "2s"]);
    let packs =
        || std::fs::read_dir(near.work.join("repo.git/objects/pack")).map_or(0, Iterator::count);
    // The `seen_at` of `far` as the page shows it, each time it moved.
    let mut seen = Vec::new();
    let mut moves = |n: usize| {
        wait_until(DEADLINE, || {
            let document = api_status(port).unwrap_or_default();
            let at = document["dispatchers"]
                .as_array()
                .and_then(|d| d.iter().find(|d| d["id"] == "far"))
                .map(|d| d["seen_at"].to_string());
            if let Some(at) = at.filter(|at| seen.last() != Some(at)) {
                seen.push(at);
            }
            seen.len() >= n
        })
    };
    assert!(
        moves(2),
        "`far` never shown twice: {}",
        near.output_so_far()
    );
    let before = packs();
    assert!(moves(5), "`far` not shown moving: {}", near.output_so_far());
    assert_eq!(
        packs(),
        before,
        "the page's reads wrote packs into the clone"
    );
    far.stop(DEADLINE).assert_exit(0);
    near.stop(DEADLINE).assert_exit(0);
}
