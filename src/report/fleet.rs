//! What `status` shows of the dispatchers serving one remote, read from the refs they write under
//! `refs/dispatch/` (a clone keeps them under `refs/git-dispatch/<remote>/`): each dispatcher's heartbeat (fresh, stale
//! or stopped), the claims of resources, which queued request runs where, and why a queued request
//! that no fresh dispatcher can run waits.

use std::collections::BTreeMap;

use git2::{Oid, Repository};
use serde_json::{Value as Json, json};

use crate::claim::protocol::{self, Claim, Heartbeat, RunningEntry};
use crate::git::dispatch_refs::message_of;
use crate::inbox::router::{INDEX_PATH, parse_index};
use crate::report::history::Waiting;

/// A dispatcher as its last heartbeat shows it.
pub(crate) struct Seen {
    pub beat: Heartbeat,
    pub freshness: Freshness,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Freshness {
    /// Its heartbeat is within its lease of now.
    Fresh,
    /// Its heartbeat is older than its lease: it is gone, or cannot reach the remote.
    Stale,
    /// It exited cleanly.
    Stopped,
}

impl Freshness {
    pub(crate) fn word(self) -> &'static str {
        match self {
            Self::Fresh => "fresh",
            Self::Stale => "stale",
            Self::Stopped => "stopped",
        }
    }
}

/// Why no fresh dispatcher can run a queued request.
pub(crate) struct Blocked {
    /// `no_fresh_dispatcher`, `labels` or `kind`.
    pub reason: &'static str,
    pub message: String,
}

/// The dispatchers and claims of one remote, with what the tip's index says of each kind.
#[derive(Default)]
pub(crate) struct Fleet {
    pub dispatchers: Vec<Seen>,
    pub claims: Vec<Claim>,
    /// Records this build cannot read (a later version, or not a record at all).
    pub unreadable: Vec<String>,
    kinds: BTreeMap<String, KindShown>,
}

/// What the fleet needs of a kind of the index.
#[derive(Default)]
struct KindShown {
    runs_on: Vec<String>,
    /// Seconds after which a run of it is stuck: its timeout plus twice its grace, by when the
    /// sandbox has killed every handler of it.
    stuck_after: i64,
}

impl Fleet {
    /// Reads the dispatchers' refs kept under `namespace` (a clone's `refs/git-dispatch/<remote>/`)
    /// and the index at `tip`; `now` in seconds.
    pub(crate) fn read(
        repo: &Repository,
        namespace: Option<&str>,
        tip: Oid,
        now: i64,
    ) -> Result<Self, git2::Error> {
        let mut records = Vec::new();
        if let Some(namespace) = namespace {
            for reference in repo.references_glob(&format!("{namespace}*"))? {
                let reference = reference?;
                let Ok(name) = reference.name().map(str::to_owned) else {
                    continue;
                };
                // Read only when its header says it is of a record's size: one pushed by hand may
                // be huge, and is then unreadable like any other stranger.
                let message = reference
                    .target()
                    .and_then(|oid| message_of(repo, oid))
                    .and_then(Result::ok)
                    .unwrap_or_default();
                records.push((
                    format!("{}{}", protocol::PREFIX, &name[namespace.len()..]),
                    message,
                    None,
                ));
            }
        }
        Ok(Self::of_records(repo, tip, records, now))
    }

    /// The fleet of `records`: the remote's refs under `refs/dispatch/`, their commits' messages
    /// and, where known, when the ref last moved (seconds; a dispatcher reads them from the remote
    /// itself, and a heartbeat whose ref moved within its lease is fresh even before its new
    /// commit is read), with the index at `tip`.
    pub(crate) fn of_records(
        repo: &Repository,
        tip: Oid,
        records: impl IntoIterator<Item = (String, String, Option<i64>)>,
        now: i64,
    ) -> Self {
        let mut fleet = Self {
            kinds: kinds_at(repo, tip),
            ..Self::default()
        };
        for (remote_name, message, moved) in records {
            if remote_name.starts_with(protocol::DISPATCHERS) {
                match protocol::decode::<Heartbeat>(&message) {
                    Some(beat) => fleet.dispatchers.push(Seen {
                        freshness: freshness(&beat, now, moved),
                        beat,
                    }),
                    None => fleet.unreadable.push(remote_name),
                }
            } else if remote_name.starts_with(protocol::CLAIMS) {
                match protocol::decode::<Claim>(&message) {
                    Some(claim) => fleet.claims.push(claim),
                    None => fleet.unreadable.push(remote_name),
                }
            }
        }
        fleet.dispatchers.sort_by(|a, b| a.beat.id.cmp(&b.beat.id));
        fleet.claims.sort_by(|a, b| a.resource.cmp(&b.resource));
        fleet
    }

    /// The dispatcher whose heartbeat says it runs request `id` (a stopped one runs nothing).
    pub(crate) fn running(&self, id: &str) -> Option<(&Heartbeat, &RunningEntry)> {
        self.dispatchers
            .iter()
            .filter(|d| d.freshness != Freshness::Stopped)
            .find_map(|d| {
                d.beat
                    .running
                    .iter()
                    .find(|r| r.id == id)
                    .map(|r| (&d.beat, r))
            })
    }

    /// Why no fresh dispatcher can run a queued request of `kind`, if none can.
    pub(crate) fn blocked(&self, kind: Option<&str>) -> Option<Blocked> {
        let taking: Vec<&Heartbeat> = self
            .dispatchers
            .iter()
            .filter(|d| d.freshness == Freshness::Fresh && d.beat.state == "running")
            .map(|d| &d.beat)
            .collect();
        if taking.is_empty() {
            return Some(Blocked {
                reason: "no_fresh_dispatcher",
                message: "no fresh dispatcher: none has sent a heartbeat within its lease".into(),
            });
        }
        let kind = kind?;
        let runs_on = self
            .kinds
            .get(kind)
            .map_or(&[][..], |k| k.runs_on.as_slice());
        let labelled: Vec<&Heartbeat> = taking
            .into_iter()
            .filter(|d| runs_on.iter().all(|l| d.labels.contains(l)))
            .collect();
        let labels = runs_on.join(", ");
        if labelled.is_empty() {
            return Some(Blocked {
                reason: "labels",
                message: format!(
                    "no fresh dispatcher has the labels `{labels}` (the kind's `runs_on`)"
                ),
            });
        }
        let defines = |d: &&Heartbeat| d.kinds.as_ref().is_none_or(|k| k.iter().any(|k| k == kind));
        if !labelled.iter().any(defines) {
            let with = if runs_on.is_empty() {
                String::new()
            } else {
                format!(" with the labels `{labels}`")
            };
            return Some(Blocked {
                reason: "kind",
                message: format!("no fresh dispatcher{with} defines kind `{kind}`"),
            });
        }
        None
    }

    /// The runs that fresh dispatchers say they run for longer than their kind allows (its timeout
    /// plus twice its grace): (dispatcher, run, seconds it has run). Those of a stale dispatcher
    /// are its staleness's to tell.
    pub(crate) fn stuck(&self, now: i64) -> Vec<(&Heartbeat, &RunningEntry, i64)> {
        self.dispatchers
            .iter()
            .filter(|d| d.freshness == Freshness::Fresh)
            .flat_map(|d| d.beat.running.iter().map(move |r| (&d.beat, r)))
            .filter_map(|(beat, run)| {
                let since = chrono::DateTime::parse_from_rfc3339(&run.since)
                    .ok()?
                    .timestamp();
                let limit = self.kinds.get(&run.kind)?.stuck_after;
                let ran = now.saturating_sub(since);
                (ran > limit).then_some((beat, run, ran))
            })
            .collect()
    }

    /// A queued request as `status --json` lists it: `waiting` plus where it runs or why it waits.
    pub(crate) fn queue_json(&self, waiting: &Waiting, mut item: Json) -> Json {
        let (state, dispatcher, since, blocked) = match self.running(&waiting.id) {
            Some((beat, entry)) => ("running", json!(beat.id), json!(entry.since), Json::Null),
            None => (
                "queued",
                Json::Null,
                Json::Null,
                self.blocked(waiting.kind.as_deref()).map_or(
                    Json::Null,
                    |b| json!({"reason": b.reason, "message": b.message}),
                ),
            ),
        };
        let awaiting = state == "queued" && waiting.approvals.is_some();
        item["state"] = json!(if awaiting { "awaiting_approval" } else { state });
        item["approvals"] = waiting.approvals.map_or(
            Json::Null,
            |(filed, need)| json!({"filed": filed, "need": need}),
        );
        item["not_before"] = json!(waiting.not_before);
        item["dispatcher"] = dispatcher;
        item["running_since"] = since;
        item["blocked"] = blocked;
        item
    }

    pub(crate) fn dispatchers_json(&self, now: i64) -> Json {
        self.dispatchers
            .iter()
            .map(|d| {
                let b = &d.beat;
                json!({
                    "id": b.id,
                    "host": b.host,
                    "software": b.software,
                    "labels": b.labels,
                    "kinds": b.kinds,
                    "jobs": b.jobs,
                    "state": b.state,
                    "blocked": b.blocked,
                    "freshness": d.freshness.word(),
                    "started_at": b.started_at,
                    "seen_at": b.seen_at,
                    "seen_seconds_ago": now.saturating_sub(b.seen_at_s),
                    "lease_ms": b.lease_ms,
                    "running": b.running,
                })
            })
            .collect()
    }

    pub(crate) fn claims_json(&self) -> Json {
        self.claims
            .iter()
            .map(|c| {
                json!({
                    "resource": c.resource,
                    "dispatcher": c.holder.dispatcher,
                    "host": c.holder.host,
                    "requests": c.requests.iter().map(|r| &r.id).collect::<Vec<_>>(),
                    "since": c.since,
                    "renewed_at": c.renewed_at,
                    "lease_ms": c.lease_ms,
                    "took_over_from": c.took_over_from.as_ref().map(|h| &h.dispatcher),
                })
            })
            .collect()
    }
}

/// How `beat` looks at `now`, its ref seen to move at `moved` (seconds) if known.
fn freshness(beat: &Heartbeat, now: i64, moved: Option<i64>) -> Freshness {
    let lease = i64::try_from(beat.lease_ms / 1000).unwrap_or(i64::MAX);
    let seen = beat.seen_at_s.max(moved.unwrap_or(i64::MIN));
    if beat.state == "stopped" {
        Freshness::Stopped
    } else if now.saturating_sub(seen) <= lease {
        Freshness::Fresh
    } else {
        Freshness::Stale
    }
}

/// What the fleet needs of each usable kind of the index at `tip` (none when it does not read).
fn kinds_at(repo: &Repository, tip: Oid) -> BTreeMap<String, KindShown> {
    let bytes = repo
        .find_commit(tip)
        .and_then(|c| c.tree())
        .and_then(|t| t.get_path(std::path::Path::new(INDEX_PATH)))
        .and_then(|e| repo.find_blob(e.id()))
        .map(|b| b.content().to_vec());
    let Ok(index) = bytes
        .map_err(|e| e.to_string())
        .and_then(|b| parse_index(&b))
    else {
        return BTreeMap::new();
    };
    index
        .kinds
        .into_iter()
        .filter_map(|(kind, spec)| {
            let spec = spec.ok()?;
            let stuck_after = spec
                .timeout
                .saturating_add(spec.grace.saturating_mul(2))
                .as_secs();
            Some((
                kind,
                KindShown {
                    runs_on: spec.runs_on,
                    stuck_after: i64::try_from(stuck_after).unwrap_or(i64::MAX),
                },
            ))
        })
        .collect()
}

/// The `not_before` of a queued request while it is still ahead of `now`.
pub(crate) fn waits_until(waiting: &Waiting, now: i64) -> Option<&str> {
    let text = waiting.not_before.as_deref()?;
    let at = chrono::DateTime::parse_from_rfc3339(text).ok()?.timestamp();
    (at > now).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(labels: &[&str], kinds: Option<&[&str]>, seen: i64, state: &str) -> Seen {
        let beat = Heartbeat {
            version: protocol::VERSION,
            id: "d".into(),
            host: "h".into(),
            boot: "b".into(),
            software: "1".into(),
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
            kinds: kinds.map(|k| k.iter().map(|k| (*k).to_owned()).collect()),
            jobs: 1,
            started_at: String::new(),
            seen_at: String::new(),
            seen_at_s: seen,
            lease_ms: 30_000,
            state: state.into(),
            blocked: None,
            running: Vec::new(),
            claims: Vec::new(),
        };
        Seen {
            freshness: freshness(&beat, 1000, None),
            beat,
        }
    }

    fn fleet(dispatchers: Vec<Seen>) -> Fleet {
        Fleet {
            dispatchers,
            kinds: [(
                "train".to_owned(),
                KindShown {
                    runs_on: vec!["gpu".to_owned()],
                    stuck_after: 60,
                },
            )]
            .into(),
            ..Fleet::default()
        }
    }

    #[test]
    fn a_heartbeat_is_fresh_within_its_lease_stale_after_and_stopped_when_it_says_so() {
        assert_eq!(beat(&[], None, 970, "running").freshness, Freshness::Fresh);
        assert_eq!(beat(&[], None, 969, "running").freshness, Freshness::Stale);
        // Its ref seen to move since: alive, its new heartbeat not read yet.
        let old = beat(&[], None, 969, "running").beat;
        assert_eq!(freshness(&old, 1000, Some(990)), Freshness::Fresh);
        assert_eq!(freshness(&old, 1000, Some(960)), Freshness::Stale);
        assert_eq!(
            beat(&[], None, 1000, "stopped").freshness,
            Freshness::Stopped
        );
    }

    #[test]
    fn a_request_is_blocked_by_no_fresh_dispatcher_then_labels_then_kinds() {
        let reason = |f: &Fleet, kind| f.blocked(Some(kind)).map(|b| b.reason);
        let none = fleet(vec![beat(&["gpu"], None, 1, "running")]);
        assert_eq!(reason(&none, "echo"), Some("no_fresh_dispatcher"));
        let stopping = fleet(vec![beat(&["gpu"], None, 1000, "stopping")]);
        assert_eq!(reason(&stopping, "echo"), Some("no_fresh_dispatcher"));
        let cpu = fleet(vec![beat(&["cpu"], Some(&["echo"]), 1000, "running")]);
        assert_eq!(reason(&cpu, "echo"), None);
        assert_eq!(reason(&cpu, "train"), Some("labels"));
        assert_eq!(reason(&cpu, "render"), Some("kind"));
        let gpu = fleet(vec![
            beat(&["cpu"], None, 1000, "running"),
            beat(&["gpu"], Some(&["echo"]), 1000, "running"),
        ]);
        assert_eq!(reason(&gpu, "render"), None);
        let message = gpu.blocked(Some("train")).map(|b| b.message);
        assert_eq!(
            message.as_deref(),
            Some("no fresh dispatcher with the labels `gpu` defines kind `train`")
        );
    }

    #[test]
    fn a_run_past_its_kinds_timeout_is_stuck_and_a_dispatcher_silent_for_a_day_only_listed() {
        let run = |since: &str| RunningEntry {
            id: "t-1".into(),
            kind: "train".into(),
            resource: "t".into(),
            since: since.into(),
        };
        // now is 1000 s after the epoch; `train` is stuck after 60 s.
        let mut busy = beat(&["gpu"], None, 1000, "running");
        busy.beat.running.push(run("1970-01-01T00:15:40Z"));
        assert!(fleet(vec![busy]).stuck(1000).is_empty(), "60 s is not past");
        let mut busy = beat(&["gpu"], None, 1000, "running");
        busy.beat.running.push(run("1970-01-01T00:15:39Z"));
        let busy = fleet(vec![busy]);
        assert_eq!(busy.stuck(1000).len(), 1);
        let blockers = crate::report::blockers::of_fleet(&busy, &[], 1000);
        assert_eq!(blockers.len(), 1);
        assert_eq!(blockers[0].what, "stuck");
        assert!(
            blockers[0].reason.contains("`t-1` (train)"),
            "{}",
            blockers[0].reason
        );

        let day = 24 * 60 * 60;
        let gone = |seen| fleet(vec![beat(&[], None, seen, "running")]);
        let whats = |f: &Fleet, now| {
            crate::report::blockers::of_fleet(f, &[], now)
                .iter()
                .map(|b| b.what)
                .collect::<Vec<_>>()
        };
        assert_eq!(whats(&gone(0), day), ["stale"]);
        assert!(whats(&gone(0), day + 1).is_empty());
    }
}
