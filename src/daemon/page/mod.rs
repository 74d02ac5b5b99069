//! `/` of `--http-addr`: the operator's page, rendered from the status document (`/api/status`)
//! and the dispatcher's health with minijinja (autoescaped, the template compiled into the
//! binary: no CDN, no script), and `/logs/<id>`: a request's logs as committed (so redacted).

use minijinja::value::Serde;
use minijinja::{Environment, Value, context};
use serde_json::{Value as Json, json};

use crate::layout::{Place, is_valid_name};

/// How often the page reloads itself, seconds.
const REFRESH: u32 = 5;

/// The page for `document` (the status document), `health` (`/healthz`'s verdict) and `me`.
pub(crate) fn render(document: &Json, health: Result<(), String>, me: &str) -> String {
    let mut env = Environment::new();
    env.add_template("page.html", include_str!("page.html"))
        .expect("the page's template compiles");
    let text = |v: &Json| v.as_str().map(str::to_owned).unwrap_or_default();
    let mut blockers: Vec<String> = Vec::new();
    if let Err(reason) = &health {
        blockers.push(reason.clone());
    }
    for b in document["blockers"].as_array().into_iter().flatten() {
        // As `status` prints it.
        let line = text(&b["line"]);
        if !blockers.iter().any(|l| l.contains(&text(&b["reason"]))) {
            blockers.push(line);
        }
    }
    let mut running = Vec::new();
    let mut queue = Vec::new();
    let mut approvals = Vec::new();
    for q in document["queue"].as_array().into_iter().flatten() {
        if q["state"] == "running" {
            running.push(json!({
                "id": q["id"], "kind": q["kind"],
                "dispatcher": q["dispatcher"], "since": q["running_since"],
            }));
            continue;
        }
        if let Some(need) = q["approvals"]["need"].as_u64() {
            approvals.push(json!({
                "id": q["id"], "kind": q["kind"], "arrived_at": q["arrived_at"],
                "need": need, "filed": q["approvals"]["filed"].as_u64().unwrap_or(0),
            }));
            continue;
        }
        let why = if let Some(until) = q["not_before"].as_str() {
            format!("waits until {until} (not_before)")
        } else if let Some(message) = q["blocked"]["message"].as_str() {
            message.to_owned()
        } else if !blockers.is_empty() {
            "the queue is blocked".to_owned()
        } else {
            "next in line".to_owned()
        };
        queue.push(json!({
            "id": q["id"], "kind": q["kind"], "arrived_at": q["arrived_at"], "why": why,
        }));
    }
    let dispatchers: Vec<Json> = document["dispatchers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            let runs: Vec<String> = d["running"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| text(&r["id"]))
                .collect();
            let labels: Vec<String> = d["labels"]
                .as_array()
                .into_iter()
                .flatten()
                .map(text)
                .collect();
            json!({
                "id": d["id"], "host": d["host"], "software": d["software"],
                "state": d["state"], "freshness": d["freshness"],
                "seen_ago": d["seen_seconds_ago"], "labels": labels.join(", "),
                "runs": runs.join(", "),
            })
        })
        .collect();
    let template = env.get_template("page.html").expect("added above");
    template
        .render(context! {
            refresh => REFRESH,
            branch => text(&document["tip"]["ref"]),
            tip => text(&document["tip"]["commit"]).chars().take(12).collect::<String>(),
            safe => blockers.is_empty(),
            blockers => blockers,
            running => Value::from(Serde(&running)),
            queue => Value::from(Serde(&queue)),
            approvals => Value::from(Serde(&approvals)),
            recent => Value::from(Serde(&document["recent"])),
            dispatchers => Value::from(Serde(&dispatchers)),
            schedules => Value::from(Serde(&document["schedules"])),
            me => me,
        })
        .unwrap_or_else(|e| format!("the page could not be rendered: {e}"))
}

/// `/logs/<id>`: every attempt's log of `id` at `tip`, as committed; `None` when there is none.
pub(crate) fn logs(repo: &git2::Repository, tip: git2::Oid, id: &str) -> Option<String> {
    if !is_valid_name(id) {
        return None;
    }
    let tree = repo.find_commit(tip).ok()?.tree().ok()?;
    let mut out = String::new();
    for attempt in 1.. {
        let path = Place::Sharded.log(id, attempt);
        let Ok(entry) = tree.get_path(std::path::Path::new(&path)) else {
            break;
        };
        let blob = repo.find_blob(entry.id()).ok()?;
        out.push_str(&format!("--- {path} ---\n"));
        out.push_str(&String::from_utf8_lossy(blob.content()));
        out.push('\n');
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_submitter_wrote_is_escaped_and_a_blocker_makes_it_unsafe() {
        let document = json!({
            "tip": {"ref": "main", "commit": "0123456789abcdef"},
            "blockers": [{"what": "paused", "reason": "<script>alert(1)</script>",
                "line": "paused: <script>alert(1)</script>"}],
            "queue": [{"id": "q<1>", "kind": "echo", "state": "queued", "arrived_at": "t"}],
            "recent": [], "dispatchers": [], "schedules": [],
        });
        let page = render(&document, Ok(()), "d1");
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(page.contains("&lt;script&gt;"), "{page}");
        assert!(page.contains("q&lt;1&gt;"), "{page}");
        assert!(page.contains("Not dispatch-safe"), "{page}");
        let calm = json!({"tip": {"ref": "main", "commit": "0"}, "blockers": [], "queue": [],
            "recent": [], "dispatchers": [], "schedules": []});
        assert!(render(&calm, Ok(()), "d1").contains("Dispatch-safe"));
    }
}
