//! A run's cgroup folders (v1) serve a later run of the same limits once they are empty, yet what
//! each run used is its own: its CPU time and peak memory start from nothing, a folder an
//! out-of-memory kill happened in is not used again, and neither is one that still has more than a
//! little charged to it (the page cache of a large file a run wrote).

use std::fs;

use super::{entry, index_with};
use crate::support::{Checkout, World, log_file, root_or_skip};

/// Every kind has these limits, so that any run's folders may serve any later run.
const LIMITS: [&str; 2] = ["memory: 256MiB", "timeout: 60s"];
const MIB: u64 = 1 << 20;

/// The run's folder in the v1 `memory` hierarchy, as its handler printed it (`MEMCG <path>`).
fn folder(clone: &Checkout, key: &str) -> String {
    let log = clone.read_string(&log_file(key, 1)).unwrap_or_default();
    log.lines()
        .find_map(|l| l.strip_prefix("MEMCG "))
        .and_then(|l| l.split(':').nth(2))
        .unwrap_or_else(|| panic!("`{key}` printed no memory cgroup:\n{log}"))
        .to_owned()
}

#[test]
fn a_reused_cgroup_folder_counts_only_its_own_runs_usage_and_one_with_an_oom_kill_or_a_large_charge_is_not_reused()
 {
    if !root_or_skip(
        "a_reused_cgroup_folder_counts_only_its_own_runs_usage_and_one_with_an_oom_kill_or_a_large_charge_is_not_reused",
    ) {
        return;
    }
    let world = World::new().build();
    let kept = world.root.join("kept");
    fs::create_dir(&kept).expect("a folder");
    fs::set_permissions(&kept, std::os::unix::fs::PermissionsExt::from_mode(0o1777))
        .expect("chmod");
    let writable = format!("writable: [{}]", kept.display());
    let head = "#!/bin/sh\necho \"MEMCG $(grep ':memory:' /proc/self/cgroup)\"\n";
    let handlers = [
        (
            "busy",
            "timeout 1.5 sh -c 'while :; do :; done'\nexit 0\n".to_owned(),
        ),
        ("light", "echo light\n".to_owned()),
        (
            "hog",
            "exec python3 -c 'b = b\"x\" * (128 << 20); print(\"HELD\", len(b))'\n".to_owned(),
        ),
        (
            "writer",
            format!("head -c {} /dev/zero > {}/big\n", 64 * MIB, kept.display()),
        ),
        (
            "oom",
            "exec python3 -c 'b = b\"x\" * (1 << 30); print(\"HELD\", len(b))'\n".to_owned(),
        ),
    ];
    let mut entries = Vec::new();
    for (kind, body) in &handlers {
        world.handler(&format!("{kind}.sh"), &format!("{head}{body}"));
        let mut settings = LIMITS.to_vec();
        settings.push(&writable);
        entries.push(entry(kind, &format!("{kind}.sh"), &settings));
    }
    world.index(&index_with(&entries));
    world.publish("the kinds");
    let order = [
        ("busy-1", "busy"),
        ("light-1", "light"),
        ("hog-1", "hog"),
        ("light-2", "light"),
        ("writer-1", "writer"),
        ("light-3", "light"),
        ("oom-1", "oom"),
        ("light-4", "light"),
    ];
    for (key, kind) in order {
        world.submit(
            &format!("{key}.yml"),
            format!("kind: {kind}\nresource: one\n"),
        );
    }

    world.run(&["--jobs", "1"]).assert_exit(0);

    let clone = world.fresh_clone();
    let status = |key: &str| clone.status(key);
    let number = |key: &str, field: &str| {
        let s = status(key);
        s[field]
            .as_u64()
            .unwrap_or_else(|| panic!("no `{field}` for {key}: {s:#}"))
    };
    for key in [
        "busy-1", "light-1", "hog-1", "light-2", "writer-1", "light-3", "light-4",
    ] {
        assert_eq!(status(key)["state"], "succeeded", "{:#}", status(key));
    }
    assert!(number("busy-1", "cpu_ms") >= 700, "{:#}", status("busy-1"));
    assert!(number("light-1", "cpu_ms") < 300, "{:#}", status("light-1"));
    assert!(
        number("hog-1", "memory_peak_bytes") >= 128 * MIB,
        "{:#}",
        status("hog-1")
    );
    for light in ["light-2", "light-3", "light-4"] {
        assert!(
            number(light, "memory_peak_bytes") < 32 * MIB,
            "{:#}",
            status(light)
        );
    }
    assert_eq!(
        status("oom-1")["error"],
        "out of memory (limit 256MiB)",
        "{:#}",
        status("oom-1")
    );
    assert!(
        status("light-4")["error"].is_null(),
        "{:#}",
        status("light-4")
    );

    let folders: Vec<String> = order.iter().map(|(key, _)| folder(&clone, key)).collect();
    let reused = (1..folders.len()).any(|i| folders[..i].contains(&folders[i]));
    assert!(reused, "every run got a new folder: {folders:#?}");
    for (left, by) in [
        ("writer-1", "64 MiB of page cache"),
        ("oom-1", "an OOM kill"),
    ] {
        let at = order
            .iter()
            .position(|(key, _)| *key == left)
            .expect("a run");
        assert!(
            !folders[at + 1..].contains(&folders[at]),
            "`{left}`'s folder, left with {by}, served a later run: {folders:#?}"
        );
    }
}
