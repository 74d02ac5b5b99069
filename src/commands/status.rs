//! `git-dispatch status [--json] [--no-fetch]`: in a clone of an inbox, fetch the upstream (and the
//! dispatchers' refs under `refs/dispatch/`) and read its tip without checking anything out: the
//! dispatchers and their claims, the requests waiting (oldest first, with their age, each running on
//! a dispatcher or, when no fresh dispatcher can run it, why), the last outcomes recorded, and how
//! many of each state the last 24 hours saw.
//!
//! A running request stays in `requests/` until its outcome is pushed: it is shown running from its
//! dispatcher's heartbeat ([`crate::report::fleet`]).
//!
//! `--state`, `--kind`, `--since` and `--dispatcher` ([`Filter`]) narrow the queue, the recent
//! outcomes (then up to [`RECENT_FILTERED`] of them) and the counts to what matches them all.

use std::collections::BTreeMap;

use serde_json::Value as Json;

use crate::cli::StatusArgs;
use crate::clock::now_seconds;
use crate::commands::table::{Paint, age, duration, print_table};
use crate::error::CommandError;
use crate::git::view::short;
use crate::report::fleet::Fleet;
use crate::report::history::{History, Recorded, Waiting};
use crate::report::{self, RECENT};
use crate::submitter::checkout::{Checkout, Tip, dispatch_namespace};

/// How many outcomes `recent` lists with a filter: enough to see what it selects, bounded so that
/// the output stays readable.
const RECENT_FILTERED: usize = 1000;
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
    let namespace = remote.as_deref().map(dispatch_namespace);
    let fleet = Fleet::read(&checkout.repo, namespace.as_deref(), tip.oid, now)
        .map_err(|e| CommandError::config(anyhow::anyhow!(e)))?;
    let filter = Filter::of(args);
    let mut queue = history.queue().map_err(CommandError::config)?;
    let mut blockers = crate::report::blockers::read(&checkout.repo, tip.oid)
        .map_err(|e| CommandError::config(anyhow::anyhow!(e)))?;
    blockers.extend(crate::report::blockers::of_fleet(&fleet, &queue, now));
    queue.retain(|w| filter.keeps_waiting(w, &fleet));
    let (recent, counts) = outcomes(&history, &filter, now)?;
    let schedules = crate::report::schedules::read(&checkout.repo, tip.oid)
        .map_err(|e| CommandError::config(anyhow::anyhow!(e)))?;
    if args.json {
        let report = report::document(
            (&tip.name, tip.oid),
            (&blockers, &schedules),
            &fleet,
            &queue,
            &recent,
            &counts,
            now,
        );
        println!("{report:#}");
    } else {
        let view = Report {
            tip: &tip,
            blockers: &blockers,
            schedules: &schedules,
            fleet: &fleet,
            queue: &queue,
            recent: &recent,
            counts: &counts,
            filtered: filter.any(),
        };
        view.print(now, Paint::stdout());
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

/// What `--state`, `--kind`, `--since` and `--dispatcher` let through; empty, everything.
struct Filter {
    states: Vec<String>,
    kinds: Vec<String>,
    /// Seconds: outcomes recorded longer ago are left out.
    since: Option<i64>,
    dispatcher: Option<String>,
}

impl Filter {
    fn of(args: &StatusArgs) -> Self {
        Self {
            states: args.states.clone(),
            kinds: args.kinds.clone(),
            since: args
                .since
                .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
            dispatcher: args.dispatcher.clone(),
        }
    }

    fn any(&self) -> bool {
        !self.states.is_empty()
            || !self.kinds.is_empty()
            || self.since.is_some()
            || self.dispatcher.is_some()
    }

    fn state(&self, state: &str) -> bool {
        self.states.is_empty() || self.states.iter().any(|s| s == state)
    }

    fn kind(&self, kind: Option<&str>) -> bool {
        self.kinds.is_empty() || kind.is_some_and(|k| self.kinds.iter().any(|s| s == k))
    }

    /// A request in the queue: running (on a dispatcher, from its heartbeat) or queued. `--since`
    /// does not apply; with `--dispatcher`, only those it runs.
    fn keeps_waiting(&self, waiting: &Waiting, fleet: &Fleet) -> bool {
        let running_on = fleet.running(&waiting.id).map(|(beat, _)| beat.id.as_str());
        let state = match (running_on, waiting.approvals) {
            (Some(_), _) => "running",
            (None, Some(_)) => "awaiting_approval",
            (None, None) => "queued",
        };
        self.state(state)
            && self.kind(waiting.kind.as_deref())
            && self
                .dispatcher
                .as_deref()
                .is_none_or(|name| running_on == Some(name))
    }

    /// An outcome, on what its commit says (state, kind, when); `--dispatcher` needs its status.
    fn keeps_recorded(&self, recorded: &Recorded, now: i64) -> bool {
        self.state(&recorded.state)
            && self.kind(recorded.kind.as_deref())
            && self.since.is_none_or(|since| now - recorded.time <= since)
    }

    fn keeps_status(&self, status: Option<&Json>) -> bool {
        self.dispatcher
            .as_deref()
            .is_none_or(|name| status.and_then(|s| s["dispatcher"].as_str()) == Some(name))
    }
}

/// The last outcomes that `filter` keeps, newest first, with their status files ([`RECENT`] of them,
/// [`RECENT_FILTERED`] with a filter), and the counts of those of the last 24 hours.
#[allow(clippy::type_complexity)]
fn outcomes(
    history: &History<'_>,
    filter: &Filter,
    now: i64,
) -> Result<(Vec<(Recorded, Option<Json>)>, BTreeMap<String, u64>), CommandError> {
    let limit = if filter.any() {
        RECENT_FILTERED
    } else {
        RECENT
    };
    report::outcomes(
        history,
        limit,
        now,
        filter.dispatcher.is_some(),
        |recorded| filter.keeps_recorded(recorded, now),
        |status| filter.keeps_status(status),
    )
    .map_err(|e| CommandError::config(anyhow::anyhow!(e)))
}

/// What `status` prints, after the filters.
struct Report<'a> {
    tip: &'a Tip,
    blockers: &'a [crate::report::blockers::Blocker],
    schedules: &'a [crate::report::schedules::Shown],
    fleet: &'a Fleet,
    queue: &'a [Waiting],
    recent: &'a [(Recorded, Option<Json>)],
    counts: &'a BTreeMap<String, u64>,
    /// Whether a filter narrowed the lists (their headings say so).
    filtered: bool,
}

impl Report<'_> {
    fn print(&self, now: i64, paint: Paint) {
        let Self {
            tip,
            blockers,
            schedules,
            fleet,
            queue,
            recent,
            counts,
            filtered,
        } = *self;
        let (waiting, none) = if filtered {
            ("matching", "none matching")
        } else {
            ("waiting", "empty")
        };
        println!("{} at {}", tip.name, short(tip.oid));
        for blocker in blockers {
            println!("{} {}", paint.state("blocked:"), blocker.line());
        }
        println!();
        fleet.print(now, paint);
        if !schedules.is_empty() {
            println!("schedules:");
            let rows: Vec<Vec<String>> = schedules
                .iter()
                .map(|s| match &s.error {
                    Some(e) => vec![s.name.clone(), paint.state("invalid"), e.clone()],
                    None => vec![
                        s.name.clone(),
                        format!("last {}", s.last.as_deref().unwrap_or("none")),
                        format!("next {}", s.next.as_deref().unwrap_or("none")),
                    ],
                })
                .collect();
            print_table(&rows, paint);
            println!();
        }
        if queue.is_empty() {
            println!("queue: {none}");
        } else {
            println!("queue: {} {waiting}, oldest first", queue.len());
            let rows: Vec<Vec<String>> = queue
                .iter()
                .map(|w| fleet.queue_row(w, now, paint))
                .collect();
            print_table(&rows, paint);
        }
        println!();
        if recent.is_empty() {
            println!(
                "recent outcomes: {}",
                if filtered {
                    "none matching"
                } else {
                    "none yet"
                }
            );
        } else {
            let capped = if filtered && recent.len() == RECENT_FILTERED {
                format!(" (the first {RECENT_FILTERED})")
            } else {
                String::new()
            };
            let matching = if filtered { " matching" } else { "" };
            println!("recent outcomes{matching}, newest first{capped}:");
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
        let matching = if filtered { " (matching)" } else { "" };
        if seen.is_empty() {
            println!("last 24 hours{matching}: no outcomes");
        } else {
            println!("last 24 hours{matching}: {}", seen.join(", "));
        }
    }
}
