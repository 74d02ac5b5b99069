//! What an inbox shows at a commit, read without checking anything out: the queue and the outcomes
//! ([`history`]), the dispatchers and their claims from the refs they write ([`fleet`]), and what
//! keeps requests from starting ([`blockers`]), the schedules ([`schedules`]); [`document`] puts them together as the JSON
//! document `status --json` prints and a dispatcher serves on `/api/status`.
//!
//! Read-only: nothing here writes to the repository it is given.

pub(crate) mod blockers;
pub(crate) mod fleet;
pub(crate) mod history;
pub(crate) mod schedules;

use std::collections::BTreeMap;

use git2::{Oid, Repository};
use serde_json::{Value as Json, json};

use crate::clock::rfc3339_seconds;
use crate::report::blockers::Blocker;
use crate::report::fleet::Fleet;
use crate::report::history::{History, Recorded, Waiting};

/// How many outcomes `recent` lists.
pub(crate) const RECENT: usize = 20;
/// The window of `counts_24h`.
const DAY: i64 = 24 * 60 * 60;
/// Every state an outcome can have, so `counts_24h` names each even when it is zero.
const STATES: [&str; 6] = [
    "succeeded",
    "failed",
    "timed_out",
    "rejected",
    "abandoned",
    "cancelled",
];

/// Everything at `tip` (named `tip_name`), unfiltered, with `fleet` (read from a clone's refs, or
/// by a dispatcher from the remote): the document of [`document`].
pub(crate) fn read(
    repo: &Repository,
    (tip_name, tip): (&str, Oid),
    fleet: &Fleet,
    now: i64,
) -> Result<Json, String> {
    let history = History::new(repo, tip);
    let queue = history.queue().map_err(|e| e.to_string())?;
    let (recent, counts) = outcomes(&history, RECENT, now, false, |_| true, |_| true)?;
    let mut blockers = blockers::read(repo, tip).map_err(|e| e.to_string())?;
    blockers.extend(blockers::of_fleet(fleet, &queue, now));
    let schedules = schedules::read(repo, tip).map_err(|e| e.to_string())?;
    Ok(document(
        (tip_name, tip),
        (&blockers, &schedules),
        fleet,
        &queue,
        &recent,
        &counts,
        now,
    ))
}

/// The status document: the tip, the blockers, the dispatchers and claims, the queue (each request
/// running where, or why it waits), the recent outcomes and the counts of the last 24 hours.
pub(crate) fn document(
    (tip_name, tip): (&str, Oid),
    (blockers, schedules): (&[Blocker], &[schedules::Shown]),
    fleet: &Fleet,
    queue: &[Waiting],
    recent: &[(Recorded, Option<Json>)],
    counts: &BTreeMap<String, u64>,
    now: i64,
) -> Json {
    json!({
        "tip": { "ref": tip_name, "commit": tip.to_string() },
        "blockers": blockers.iter().map(Blocker::json).collect::<Vec<_>>(),
        "schedules": schedules.iter().map(schedules::Shown::json).collect::<Vec<_>>(),
        "dispatchers": fleet.dispatchers_json(now),
        "claims": fleet.claims_json(),
        "queue": queue
            .iter()
            .map(|w| fleet.queue_json(w, waiting_json(w, now)))
            .collect::<Vec<_>>(),
        "recent": recent.iter().map(|(r, s)| recent_json(r, s.as_ref())).collect::<Vec<_>>(),
        "counts_24h": counts,
    })
}

/// The last `limit` outcomes that `keep` and `keep_status` let through, newest first, with their
/// status files, and the counts of those of the last 24 hours. `status_needed`: `keep_status`
/// looks at the status of outcomes that are only counted too.
#[allow(clippy::type_complexity)]
pub(crate) fn outcomes(
    history: &History<'_>,
    limit: usize,
    now: i64,
    status_needed: bool,
    keep: impl Fn(&Recorded) -> bool,
    keep_status: impl Fn(Option<&Json>) -> bool,
) -> Result<(Vec<(Recorded, Option<Json>)>, BTreeMap<String, u64>), String> {
    let mut recent = Vec::new();
    let mut counts: BTreeMap<String, u64> = STATES.iter().map(|s| ((*s).to_owned(), 0)).collect();
    // The whole history is walked: commit times need not decrease along it (a submitter's clock may
    // be behind the dispatcher's), so there is no safe place to stop early.
    for recorded in history.outcomes().map_err(|e| e.to_string())? {
        let recorded = recorded.map_err(|e| e.to_string())?;
        let listed = recent.len() < limit;
        let counted = now - recorded.time <= DAY;
        if !(listed || counted) || !keep(&recorded) {
            continue;
        }
        // A status is read only where it is shown or the filter needs it.
        let status = (listed || status_needed)
            .then(|| history.status(&recorded.id, recorded.commit).ok().flatten())
            .flatten()
            .map(|(_, status)| status);
        if !keep_status(status.as_ref()) {
            continue;
        }
        if counted {
            *counts.entry(recorded.state.clone()).or_default() += 1;
        }
        if listed {
            recent.push((recorded, status));
        }
    }
    Ok((recent, counts))
}

fn waiting_json(waiting: &Waiting, now: i64) -> Json {
    json!({
        "id": waiting.id,
        "kind": waiting.kind,
        "path": waiting.entry.path,
        "arrived_at": rfc3339_seconds(waiting.entry.arrival.time),
        "age_seconds": now.saturating_sub(waiting.entry.arrival.time).max(0),
        "commit": waiting.entry.arrival.commit.to_string(),
    })
}

fn recent_json(recorded: &Recorded, status: Option<&Json>) -> Json {
    let field = |key: &str| status.map_or(Json::Null, |s| s[key].clone());
    json!({
        "id": recorded.id,
        "kind": recorded.kind,
        "state": recorded.state,
        "duration_ms": field("duration_ms"),
        "exit_code": field("exit_code"),
        "finished_at": match field("finished_at") {
            Json::Null => Json::String(rfc3339_seconds(recorded.time)),
            at => at,
        },
        "commit": recorded.commit.to_string(),
    })
}
