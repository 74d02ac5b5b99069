//! `git-dispatch status [--json] [--no-fetch]`: in a clone of an inbox, fetch the upstream (and the
//! dispatchers' refs under `refs/dispatch/`) and read its tip without checking anything out: the
//! dispatchers and their claims, the requests waiting (oldest first, with their age, each running on
//! a dispatcher or, when no fresh dispatcher can run it, why), the last outcomes recorded, and how
//! many of each state the last 24 hours saw.
//!
//! A running request stays in `requests/` until its outcome is pushed: it is shown running from its
//! dispatcher's heartbeat ([`crate::commands::dispatchers`]).

use std::collections::BTreeMap;

use serde_json::{Value as Json, json};

use crate::cli::StatusArgs;
use crate::clock::{now_seconds, rfc3339_seconds};
use crate::commands::dispatchers::Fleet;
use crate::commands::table::{Paint, age, duration, print_table};
use crate::error::CommandError;
use crate::git::view::short;
use crate::submitter::checkout::{Checkout, Tip};
use crate::submitter::history::{History, Recorded, Waiting};

/// How many outcomes `recent` lists.
const RECENT: usize = 20;
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

pub(crate) fn run(args: &StatusArgs) -> Result<(), CommandError> {
    let checkout = Checkout::open(args.clone.repo.path.as_deref()).map_err(CommandError::config)?;
    let tip = fetched_tip(&checkout, args.clone.no_fetch)?;
    let remote = checkout.upstream().ok().map(|upstream| {
        if !args.clone.no_fetch {
            checkout.fetch_dispatch_refs(&upstream).map_err(|e| {
                CommandError::remote(anyhow::anyhow!(e).context(format!(
                    "could not fetch the dispatchers' refs from `{}`; pass --no-fetch to see them \
                     as last fetched",
                    upstream.remote
                )))
            })?;
        }
        Ok::<_, CommandError>(upstream.remote)
    });
    let remote = remote.transpose()?;
    let history = History::new(&checkout.repo, tip.oid);
    let now = now_seconds();
    let fleet = Fleet::read(&checkout.repo, remote.as_deref(), tip.oid, now)
        .map_err(|e| CommandError::config(anyhow::anyhow!(e)))?;
    let queue = history.queue().map_err(CommandError::config)?;
    let (recent, counts) = outcomes(&history, now)?;
    if args.json {
        let report = json!({
            "tip": { "ref": tip.name, "commit": tip.oid.to_string() },
            "dispatchers": fleet.dispatchers_json(now),
            "claims": fleet.claims_json(),
            "queue": queue
                .iter()
                .map(|w| fleet.queue_json(w, waiting_json(w, now)))
                .collect::<Vec<_>>(),
            "recent": recent.iter().map(|(r, s)| recent_json(r, s.as_ref())).collect::<Vec<_>>(),
            "counts_24h": counts,
        });
        println!("{report:#}");
    } else {
        print_report(&tip, &fleet, &queue, &recent, &counts, now, Paint::stdout());
    }
    Ok(())
}

/// Fetches the upstream (unless `no_fetch`) and returns its tip; without an upstream, HEAD.
pub(crate) fn fetched_tip(checkout: &Checkout, no_fetch: bool) -> Result<Tip, CommandError> {
    match checkout.upstream() {
        Ok(upstream) if !no_fetch => checkout.fetch(&upstream).map_err(|e| {
            CommandError::remote(anyhow::anyhow!(e).context(format!(
                "could not fetch `{}`; pass --no-fetch to see it as last fetched",
                upstream.short()
            )))
        })?,
        Ok(_) => {}
        Err(_) => eprintln!("note: this branch has no upstream; showing HEAD"),
    }
    checkout.tip().map_err(CommandError::config)
}

/// The last [`RECENT`] outcomes (with their status files) and the counts of the last 24 hours.
#[allow(clippy::type_complexity)]
fn outcomes(
    history: &History<'_>,
    now: i64,
) -> Result<(Vec<(Recorded, Option<Json>)>, BTreeMap<String, u64>), CommandError> {
    let mut recent = Vec::new();
    let mut counts: BTreeMap<String, u64> = STATES.iter().map(|s| ((*s).to_owned(), 0)).collect();
    // The whole history is walked: commit times need not decrease along it (a submitter's clock may
    // be behind the dispatcher's), so there is no safe place to stop early.
    for recorded in history.outcomes().map_err(CommandError::config)? {
        let recorded = recorded.map_err(|e| CommandError::config(anyhow::anyhow!(e)))?;
        if now - recorded.time <= DAY {
            *counts.entry(recorded.state.clone()).or_default() += 1;
        }
        if recent.len() < RECENT {
            let status = history
                .status(&recorded.id, recorded.commit)
                .ok()
                .flatten()
                .map(|(_, status)| status);
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
        "age_seconds": (now - waiting.entry.arrival.time).max(0),
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

fn print_report(
    tip: &Tip,
    fleet: &Fleet,
    queue: &[Waiting],
    recent: &[(Recorded, Option<Json>)],
    counts: &BTreeMap<String, u64>,
    now: i64,
    paint: Paint,
) {
    println!("{} at {}", tip.name, short(tip.oid));
    println!();
    fleet.print(now, paint);
    if queue.is_empty() {
        println!("queue: empty");
    } else {
        println!("queue: {} waiting, oldest first", queue.len());
        let rows: Vec<Vec<String>> = queue
            .iter()
            .map(|w| fleet.queue_row(w, now, paint))
            .collect();
        print_table(&rows, paint);
    }
    println!();
    if recent.is_empty() {
        println!("recent outcomes: none yet");
    } else {
        println!("recent outcomes, newest first:");
        let rows: Vec<Vec<String>> = recent
            .iter()
            .map(|(r, status)| {
                let ms = status.as_ref().and_then(|s| s["duration_ms"].as_u64());
                vec![
                    r.id.clone(),
                    r.kind.clone().unwrap_or_else(|| "-".to_owned()),
                    paint.state(&r.state),
                    ms.map_or_else(|| "-".to_owned(), duration),
                    format!("{} ago", age(now - r.time)),
                ]
            })
            .collect();
        print_table(&rows, paint);
    }
    println!();
    let seen: Vec<String> = counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(state, n)| format!("{n} {}", paint.state(state)))
        .collect();
    if seen.is_empty() {
        println!("last 24 hours: no outcomes");
    } else {
        println!("last 24 hours: {}", seen.join(", "));
    }
}
