//! Several dispatchers on one remote (`git daemon` on 127.0.0.1), each with its own
//! `--dispatcher-id`, workdir and `--lock-dir`, so that only the claims through the remote keep a
//! request from running twice and a resource from running on two "hosts" at once. Each test asserts
//! on what the handlers left in one shared file (`support::fleet::Runs`) and on a fresh clone: every
//! request started at most once and recorded exactly once, no resource run by two at once.
//! (Two dispatchers on one workdir: `reliability::workdir_lock`, and `workdir` here with two ids.)

use std::collections::HashMap;

use crate::support::fleet::{Runs, tally};
use crate::support::{Checkout, World, add_kinds};

// Three dispatchers drain 300 requests, with and without SIGKILLs.
mod drain;
// A dispatcher cut off from the remote stops its handler; another records the request `abandoned`.
mod fencing;
// Forged and huge records, claims changed by hand, one id twice, a frozen dispatcher.
mod attacks;
// `runs_on` and `--labels`: a kind runs only where its labels are.
mod labels;
// One workdir, two dispatcher ids: the second is refused.
mod workdir;
// A claim push applied by the server whose report was lost.
mod unanswered;
// A backlog shared among the dispatchers: evenly, and past a long queue another holds.
mod share;

/// The kind every test here runs: `work`, the `Runs` handler sleeping `seconds`, the host variable
/// passed through, and `extra` index lines.
fn add_work_kind(world: &World, runs: &Runs, seconds: &str, extra: &str) {
    add_kinds(
        world,
        &[(
            "work",
            &runs.handler(seconds),
            &format!("  env: [{}]\n{extra}", crate::support::fleet::HOST_VAR),
        )],
    );
}

/// Submits `n` requests of `kind` in one commit, `PREFIX-NNN` on resources `res-00`.. round robin
/// over `resources`; returns id -> resource.
fn submit_spread(
    world: &World,
    kind: &str,
    prefix: &str,
    n: usize,
    resources: usize,
) -> HashMap<String, String> {
    let requests: Vec<(String, String)> = (0..n)
        .map(|i| {
            (
                format!("{prefix}-{i:03}"),
                format!("res-{:02}", i % resources),
            )
        })
        .collect();
    submit_requests(
        world,
        requests.iter().map(|(id, resource)| {
            (
                id.as_str(),
                format!("kind: {kind}\nid: {id}\nresource: {resource}\n"),
            )
        }),
    );
    requests.into_iter().collect()
}

/// Submits each `(id, yaml)` as `requests/ID.yml`, all in one commit.
fn submit_requests<'a>(world: &World, requests: impl IntoIterator<Item = (&'a str, String)>) {
    let requests: Vec<(String, String)> = requests
        .into_iter()
        .map(|(id, yaml)| (format!("{id}.yml"), yaml))
        .collect();
    let files: Vec<(&str, &[u8])> = requests
        .iter()
        .map(|(name, yaml)| (name.as_str(), yaml.as_bytes()))
        .collect();
    world.submit_many(&files);
}

/// Every id of `ids` has exactly one outcome commit (`Dispatch-Id` trailer) and a status file on the
/// remote, no other id has one, and nothing is left in `requests/`.
#[track_caller]
fn assert_recorded_once<'a>(clone: &Checkout, ids: impl IntoIterator<Item = &'a String>) {
    let trailers = clone.trailers("Dispatch-Id");
    let counts = tally(trailers.iter().map(String::as_str));
    let twice: Vec<(&String, &usize)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "ids recorded more than once ({} of {}; the first (id, outcome commits)): {:?}",
        twice.len(),
        counts.len(),
        &twice[..twice.len().min(10)]
    );
    let mut expected: Vec<&String> = ids.into_iter().collect();
    expected.sort();
    let recorded: Vec<&String> = counts.keys().collect();
    assert_eq!(recorded, expected, "the ids recorded on the remote");
    assert_eq!(
        clone.ls("requests"),
        [".gitkeep"],
        "requests left in the inbox"
    );
    assert_eq!(clone.statuses().len(), expected.len(), "status files");
}

/// Whether process `pid` is alive (a zombie is not).
pub(super) fn alive(pid: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(std::path::Path::new("/proc").join(pid).join("stat"))
    else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z" | "X") | None)
}
