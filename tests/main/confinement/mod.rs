//! Confinement: what a handler cannot do. It runs as an unprivileged user (`--run-as`, `nobody` by
//! default when the dispatcher is root), under its kind's rlimits (`memory`, `nproc`), is killed whole
//! at its timeout and leaves nothing running when it ends; it gets only the secrets its kind lists, and
//! no common encoding of them reaches a committed log; its log is capped; it can only be an executable
//! file inside `handlers/`; and it cannot write into the dispatcher's workdir or lock dir.
//!
//! Every limit is shown to bind: a handler tries to break it and the test asserts that the attempt
//! failed, with a control where the attempt would otherwise succeed. Tests that mean nothing unless the
//! dispatcher is root stop early elsewhere and say why; `sandbox_tests_ran_as_root_in_ci` keeps those
//! skips out of CI. Left-over processes are recognised by a `sleep` argument unique to the test and to
//! this test process, so neither parallel tests nor a second test run on the same host are mistaken for
//! them (or killed by their clean-up).
//!
//! This file holds what the modules below share: an index with the kinds of a test.

use crate::support::DEFAULT_INDEX;

// Only executable files inside `handlers/` run.
mod handler_paths;
// The user a handler runs as, and what it may not write.
mod privileges;
// The kind's rlimits: `memory`, `nproc`.
mod limits;
// At its end, nothing the handler started survives: its group, its escapees, its zombies.
mod escapees;
// Only the listed secrets reach a handler; no encoding of them reaches a log.
mod secrets;
// A handler's log is capped, with its full length and digest recorded.
mod log_cap;

mod network;
// Namespaces and cgroups: what a handler sees, writes, signals and uses.
mod isolation;
// The unified cgroup hierarchy (v2).
mod cgroup_v2;
// A run's cgroup folders serving a later run.
mod cgroup_reuse;

/// A handler that allocates 1 GiB and says so (`ALLOCATED 1073741824`) if it could.
const HOG: &str =
    "#!/bin/sh\nexec python3 -c 'b = bytearray(1 << 30); print(\"ALLOCATED\", len(b))'\n";

/// One entry of `handlers/index.yml`: `handler` and the given `key: value` settings.
fn entry(kind: &str, handler: &str, settings: &[&str]) -> String {
    let mut yaml = format!("{kind}:\n  handler: {handler}\n");
    for setting in settings {
        yaml.push_str("  ");
        yaml.push_str(setting);
        yaml.push('\n');
    }
    yaml
}

/// The default index plus `entries`.
fn index_with(entries: &[String]) -> String {
    format!("{DEFAULT_INDEX}{}", entries.concat())
}
