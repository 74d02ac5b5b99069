//! Resource limits: a 1 GiB allocation fails under a kind's `memory: 100MiB` and succeeds under 2 GiB
//! (an address-space rlimit without isolation, a cgroup's memory limit with it: killed and recorded
//! out of memory); `nproc`, and the cgroup's `pids:`, stop a fork loop, and nothing of the loop is left
//! behind.

use super::{HOG, entry, index_with};
use crate::support::{Strays, World, log_file, root_or_skip};

#[test]
fn a_one_gib_allocation_fails_under_memory_100mib_and_succeeds_under_2gib() {
    // Without isolation, `memory:` is an address-space rlimit, which the allocation runs into.
    let world = World::new()
        .handler("hog.sh", HOG)
        .index(&index_with(&[
            entry(
                "hog-small",
                "hog.sh",
                &[
                    "memory: 100MiB",
                    "timeout: 30s",
                    "grace: 1s",
                    "isolation: none",
                ],
            ),
            entry(
                "hog-large",
                "hog.sh",
                &[
                    "memory: 2GiB",
                    "timeout: 30s",
                    "grace: 1s",
                    "isolation: none",
                ],
            ),
        ]))
        .build();
    world.submit("hog-small.yml", "kind: hog-small\n");
    world.submit("hog-large.yml", "kind: hog-large\n");

    world.run(&[]).assert_exit(0);

    let clone = world.fresh_clone();
    let small = clone.status("hog-small");
    let small_log = clone
        .read_string(&log_file("hog-small", 1))
        .unwrap_or_default();
    assert_eq!(
        small["state"], "failed",
        "1 GiB fit under `memory: 100MiB`: {small:#}\n{small_log}"
    );
    assert!(
        small_log.contains("MemoryError") && !small_log.contains("ALLOCATED"),
        "the allocation did not fail with MemoryError:\n{small_log}"
    );
    let large = clone.status("hog-large");
    let large_log = clone
        .read_string(&log_file("hog-large", 1))
        .unwrap_or_default();
    assert_eq!(
        large["state"], "succeeded",
        "the control failed: {large:#}\n{large_log}"
    );
    assert!(
        large_log.contains("ALLOCATED 1073741824"),
        "the control did not allocate 1 GiB:\n{large_log}"
    );
}

#[test]
fn a_fork_loop_hits_nproc_and_leaves_no_process_behind() {
    // RLIMIT_NPROC counts every process of the handler's user: only as `nobody` under a root
    // dispatcher is that count known to start near zero.
    if !root_or_skip("a_fork_loop_hits_nproc_and_leaves_no_process_behind") {
        return;
    }
    let strays = Strays::sleeping(31337);
    let forker = format!(
        "#!/bin/sh\ni=0\nwhile [ $i -lt 200 ]; do\n  {} &\n  i=$((i+1))\ndone\necho \"STARTED $i\"\nwait\n",
        strays.command
    );
    let world = World::new()
        .handler("forker.sh", &forker)
        .index(&index_with(&[entry(
            "forker",
            "forker.sh",
            &["nproc: 50", "timeout: 5s", "grace: 1s"],
        )]))
        .build();
    world.submit("forker.yml", "kind: forker\n");

    world.run(&[]).assert_exit(0);

    let clone = world.fresh_clone();
    let status = clone.status("forker");
    let log = clone
        .read_string(&log_file("forker", 1))
        .expect("the log is committed");
    assert!(
        status["state"] == "failed" || status["state"] == "timed_out",
        "unexpected outcome: {status:#}\n{log}"
    );
    assert!(
        ["Cannot fork", "Resource temporarily unavailable"]
            .iter()
            .any(|e| log.contains(e)),
        "no fork failure in the log (was `nproc: 50` applied?):\n{log}"
    );
    assert!(
        !log.contains("STARTED 200"),
        "all 200 forks succeeded under `nproc: 50`:\n{log}"
    );
    strays.assert_gone("the fork loop's children");
}
