//! What keeps requests from starting, read from a clone's tip as the dispatchers read it ([`read`]):
//! a pause or drains in `control.yml` (with who set them and when: the commit that last changed
//! the file), a `control.yml` that does not read, an index or envelope schema that does not read;
//! and what the dispatchers' refs show ([`of_fleet`]): stale dispatchers, kinds no fresh
//! dispatcher can run, stuck runs. For `status` (text and `--json`), `doctor` and the page.

use std::path::Path;

use git2::{Oid, Repository};
use serde_json::{Value as Json, json};

use crate::clock::rfc3339_seconds;
use crate::git::view::TreeView;
use crate::inbox::control::{CONTROL_PATH, Control};
use crate::inbox::router::Catalog;
use crate::report::fleet::{Fleet, Freshness};
use crate::report::history::Waiting;

/// How long a stale dispatcher counts as a blocker: after a day without a heartbeat it is only
/// listed (a host retired without a clean stop would otherwise block the verdict for good).
const STALE_FOR: i64 = 24 * 60 * 60;

/// How many commits are looked back for the one that set `control.yml`.
const MAX_WALK: usize = 100_000;

/// One reason nothing (or one dispatcher) starts requests.
pub(crate) struct Blocker {
    /// `paused`, `drained`, `control`, `index`; `stale`, `no_dispatcher` or `stuck`.
    pub what: &'static str,
    /// The drained, stale dispatcher, or the one of the stuck run.
    pub dispatcher: Option<String>,
    pub reason: String,
    /// Who changed `control.yml` to say so, and when (pause and drain).
    pub by: Option<(String, i64)>,
}

impl Blocker {
    pub(crate) fn json(&self) -> Json {
        json!({
            "what": self.what,
            "dispatcher": self.dispatcher,
            "reason": self.reason,
            "by": self.by.as_ref().map(|(who, _)| who),
            "since": self.by.as_ref().map(|(_, at)| rfc3339_seconds(*at)),
            "line": self.line(),
        })
    }

    /// `paused by Ada <ada@example.org> since 2026-12-05T10:00:00Z: migration`.
    pub(crate) fn line(&self) -> String {
        if matches!(self.what, "stale" | "no_dispatcher" | "stuck") {
            return self.reason.clone();
        }
        let what = match (&self.dispatcher, self.what) {
            (Some(d), _) => format!("dispatcher `{d}` is drained"),
            (None, "paused") => "paused".to_owned(),
            (None, "control") => format!("`{CONTROL_PATH}` does not read"),
            (None, _) => "the index does not read".to_owned(),
        };
        let by = self.by.as_ref().map_or_else(String::new, |(who, at)| {
            format!(" by {who} since {}", rfc3339_seconds(*at))
        });
        if self.reason.is_empty() {
            format!("{what}{by}")
        } else {
            format!("{what}{by}: {}", self.reason)
        }
    }
}

/// The blockers at commit `tip`.
pub(crate) fn read(repo: &Repository, tip: Oid) -> Result<Vec<Blocker>, git2::Error> {
    let commit = repo.find_commit(tip)?;
    let tree = commit.tree()?;
    let mut found = Vec::new();
    match Control::of_tree(repo, &tree) {
        Err(reason) => found.push(Blocker {
            what: "control",
            dispatcher: None,
            reason,
            by: None,
        }),
        Ok(control) => {
            let by = (control.paused.is_some() || !control.drained.is_empty())
                .then(|| last_change(repo, tip))
                .transpose()?
                .flatten();
            if let Some(reason) = control.paused {
                found.push(Blocker {
                    what: "paused",
                    dispatcher: None,
                    reason,
                    by: by.clone(),
                });
            }
            for (dispatcher, reason) in control.drained {
                found.push(Blocker {
                    what: "drained",
                    dispatcher: Some(dispatcher),
                    reason,
                    by: by.clone(),
                });
            }
        }
    }
    let view = TreeView {
        repo,
        tree,
        commit: tip,
    };
    if let Some(reason) = Catalog::load(&view).blocker() {
        found.push(Blocker {
            what: "index",
            dispatcher: None,
            reason,
            by: None,
        });
    }
    Ok(found)
}

/// The author and time of the commit that gave `control.yml` the content it has at `tip`, along
/// first parents.
fn last_change(repo: &Repository, tip: Oid) -> Result<Option<(String, i64)>, git2::Error> {
    let blob = |c: &git2::Commit<'_>| {
        c.tree()
            .ok()
            .and_then(|t| t.get_path(Path::new(CONTROL_PATH)).ok())
            .map(|e| e.id())
    };
    let mut commit = repo.find_commit(tip)?;
    let now = blob(&commit);
    for _ in 0..MAX_WALK {
        let Ok(parent) = commit.parent(0) else { break };
        if blob(&parent) != now {
            break;
        }
        commit = parent;
    }
    let who = commit.author();
    Ok(Some((
        format!(
            "{} <{}>",
            String::from_utf8_lossy(who.name_bytes()),
            String::from_utf8_lossy(who.email_bytes())
        ),
        commit.time().seconds(),
    )))
}

/// What the dispatchers' refs show that needs an operator: each dispatcher stale for less than
/// [`STALE_FOR`] (and what it last ran), each kind whose queued requests no fresh dispatcher can
/// run while others are fresh (its labels or its kind), each run past its kind's timeout. `queue` is what waits at the tip.
pub(crate) fn of_fleet(fleet: &Fleet, queue: &[Waiting], now: i64) -> Vec<Blocker> {
    let mut found = Vec::new();
    let blocker = |what, dispatcher: Option<&str>, reason: String| Blocker {
        what,
        dispatcher: dispatcher.map(str::to_owned),
        reason,
        by: None,
    };
    for seen in &fleet.dispatchers {
        let beat = &seen.beat;
        let silent = now.saturating_sub(beat.seen_at_s);
        if seen.freshness != Freshness::Stale || silent > STALE_FOR {
            continue;
        }
        let ran: Vec<&str> = beat.running.iter().map(|r| r.id.as_str()).collect();
        let ran = match ran.is_empty() {
            true => String::new(),
            false => format!("; it last ran {}", ran.join(", ")),
        };
        found.push(blocker(
            "stale",
            Some(&beat.id),
            format!(
                "dispatcher `{}` on {} is stale: no heartbeat since {} ({silent} s, its lease is \
                 {} s){ran}",
                beat.id,
                beat.host,
                beat.seen_at,
                beat.lease_ms / 1000
            ),
        ));
    }
    // Requests that would start now but for the fleet, by kind.
    let mut by_kind: std::collections::BTreeMap<Option<&str>, (usize, String)> =
        std::collections::BTreeMap::new();
    for waiting in queue {
        let held = waiting.approvals.is_some()
            || crate::report::fleet::waits_until(waiting, now).is_some()
            || fleet.running(&waiting.id).is_some();
        if held {
            continue;
        }
        // No fresh dispatcher at all is how a remote served by `run --until-empty` from cron
        // looks between runs: each request says so, and the dispatchers are listed.
        if let Some(b) = fleet
            .blocked(waiting.kind.as_deref())
            .filter(|b| b.reason != "no_fresh_dispatcher")
        {
            by_kind
                .entry(waiting.kind.as_deref())
                .or_insert((0, b.message))
                .0 += 1;
        }
    }
    for (kind, (count, message)) in by_kind {
        let which = kind.map_or_else(String::new, |k| format!(" of kind `{k}`"));
        found.push(blocker(
            "no_dispatcher",
            None,
            format!("{count} queued request(s){which} wait: {message}"),
        ));
    }
    for (beat, run, ran) in fleet.stuck(now) {
        found.push(blocker(
            "stuck",
            Some(&beat.id),
            format!(
                "request `{}` ({}) has run on `{}` since {} ({ran} s): longer than its kind's \
                 timeout plus twice its grace",
                run.id, run.kind, beat.id, run.since
            ),
        ));
    }
    found
}
