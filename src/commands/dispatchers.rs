//! How `status` prints the dispatchers, their claims and the queue ([`Fleet`] reads them).

use std::time::UNIX_EPOCH;

use crate::commands::table::{Paint, age, print_table};
use crate::report::fleet::{Fleet, Freshness, waits_until};
use crate::report::history::Waiting;

impl Fleet {
    /// A queued request as `status` prints it: id, kind, state, since when, and why it waits.
    pub(crate) fn queue_row(&self, waiting: &Waiting, now: i64, paint: Paint) -> Vec<String> {
        let kind = waiting.kind.clone().unwrap_or_else(|| "?".to_owned());
        match self.running(&waiting.id) {
            Some((beat, entry)) => vec![
                waiting.id.clone(),
                kind,
                paint.state("running"),
                format!("on {} since {}", beat.id, since(&entry.since, now)),
                String::new(),
            ],
            None => vec![
                waiting.id.clone(),
                kind,
                paint.state(if waiting.approvals.is_some() {
                    "awaiting_approval"
                } else {
                    "queued"
                }),
                format!("for {}", age(now - waiting.entry.arrival.time)),
                waits_until(waiting, now)
                    .map(|t| format!("waits until {t} (not_before)"))
                    .or_else(|| {
                        waiting.approvals.map(|(filed, need)| {
                            format!(
                                "needs {need} approval(s); {filed} filed (`git-dispatch approve`)"
                            )
                        })
                    })
                    .or_else(|| self.blocked(waiting.kind.as_deref()).map(|b| b.message))
                    .unwrap_or_default(),
            ],
        }
    }

    /// The dispatchers and the claims, as `status` prints them before the queue.
    pub(crate) fn print(&self, now: i64, paint: Paint) {
        if self.dispatchers.is_empty() {
            println!("dispatchers: none seen");
        } else {
            let fresh = self
                .dispatchers
                .iter()
                .filter(|d| d.freshness == Freshness::Fresh)
                .count();
            println!("dispatchers: {} ({fresh} fresh)", self.dispatchers.len());
            let rows: Vec<Vec<String>> = self
                .dispatchers
                .iter()
                .map(|d| {
                    let b = &d.beat;
                    let runs: Vec<String> = b
                        .running
                        .iter()
                        .map(|r| format!("{} ({}) since {}", r.id, r.kind, since(&r.since, now)))
                        .collect();
                    vec![
                        b.id.clone(),
                        b.host.clone(),
                        b.software.clone(),
                        if b.labels.is_empty() {
                            "no labels".to_owned()
                        } else {
                            format!("labels {}", b.labels.join(","))
                        },
                        paint.state(d.freshness.word()),
                        format!("seen {} ago", age(now.saturating_sub(b.seen_at_s))),
                        if runs.is_empty() {
                            "idle".to_owned()
                        } else {
                            format!("runs {}", runs.join(", "))
                        },
                    ]
                })
                .collect();
            print_table(&rows, paint);
        }
        for name in &self.unreadable {
            println!("  note: `{name}` holds a record this version cannot read");
        }
        if !self.claims.is_empty() {
            println!("claims:");
            for c in &self.claims {
                println!(
                    "  {} -> {}: {}",
                    c.resource,
                    c.holder.dispatcher,
                    c.requests
                        .iter()
                        .map(|r| r.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        println!();
    }
}

/// How long ago an RFC 3339 time was, or the time as written when it does not parse.
fn since(at: &str, now: i64) -> String {
    humantime::parse_rfc3339_weak(at)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_secs()).ok())
        .map_or_else(|| at.to_owned(), |secs| age(now - secs))
}
