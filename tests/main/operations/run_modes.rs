//! Run modes: `--dry-run` says what would run and what would be rejected and changes nothing; `--once`
//! takes only the oldest request.

use super::{inbox_and_processed, remote_tip};
use crate::support::{World, add_kinds};

#[test]
fn dry_run_says_what_would_run_and_what_would_be_rejected_and_changes_nothing() {
    let world = World::new().build();
    let marker = world.markers.join("marker-ran");
    let touching = format!("#!/bin/sh\ntouch '{}'\n", marker.display());
    add_kinds(&world, &[("touch", &touching, "  resource: shelf\n")]);
    world.submit("valid.yml", "kind: touch\ntimeout: 20s\n");
    world.submit("invalid.yml", "kind: count\nparams:\n  count: ten\n");
    world.submit("stranger.yml", "kind: nobody-knows\n");
    let tip = remote_tip(&world);
    let before = inbox_and_processed(&world);

    let out = world.run(&["--dry-run"]);

    out.assert_exit(0);
    let would: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("would"))
        .collect();
    assert_eq!(would.len(), 3, "one line per waiting request:\n{out}");
    let run_line = would
        .iter()
        .find(|l| l.starts_with("would run"))
        .unwrap_or_else(|| panic!("no `would run` line:\n{out}"));
    for part in [
        " valid ",
        "kind=touch",
        "handler=handlers/touch.sh",
        "resource=shelf",
        "timeout=20s",
    ] {
        assert!(
            format!("{run_line} ").contains(part),
            "`{part}` missing from `{run_line}`"
        );
    }
    for (file, why) in [
        ("requests/invalid.yml", "count"),
        ("requests/stranger.yml", "nobody-knows"),
    ] {
        assert!(
            would
                .iter()
                .any(|l| l.starts_with("would reject") && l.contains(file) && l.contains(why)),
            "no `would reject` line for `{file}` saying why:\n{out}"
        );
    }
    assert!(!marker.exists(), "the handler ran in a dry run");
    assert_eq!(remote_tip(&world), tip, "a dry run pushed");
    assert_eq!(
        inbox_and_processed(&world),
        before,
        "a dry run changed the inbox"
    );
}

#[test]
fn once_takes_only_the_oldest_request() {
    let world = World::new().build();
    world.submit("c-oldest.yml", "kind: echo\n");
    world.submit("b-middle.yml", "kind: echo\n");
    world.submit("a-newest.yml", "kind: echo\n");

    let out = world.output(world.run_command(world.remote_arg(), &["--once"]));

    out.assert_exit(0);
    let clone = world.fresh_clone();
    assert_eq!(
        clone.ls("requests"),
        [".gitkeep", "a-newest.yml", "b-middle.yml"],
        "{out}"
    );
    let statuses = clone.statuses();
    assert_eq!(
        statuses
            .iter()
            .map(|(key, _)| key.as_str())
            .collect::<Vec<_>>(),
        ["c-oldest"],
        "{out}"
    );
    assert_eq!(statuses[0].1["state"], "succeeded");
}
