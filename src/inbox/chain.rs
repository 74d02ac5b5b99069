//! Follow-ups: a request's `then:` (enqueued when it succeeds) and `on_failure:` (when it ends
//! `failed`, `timed_out` or `abandoned`) lists of requests without ids. When the parent ends, the
//! follow-ups its state calls for are committed into `requests/` in the same commit as its outcome,
//! as `ID.then-1`, `ID.on_failure-1`, ...; their status says `caused_by: ID`.
//!
//! They are checked with the parent ([`crate::inbox::request::check`] checks each one as a request
//! of its own): a follow-up that would be rejected rejects the parent before anything runs. A
//! follow-up's string values may use the parent's outcome: `${parent.id}`, `${parent.state}`,
//! `${parent.exit_code}` and `${parent.log_tail}` (the last lines of its log, as committed: redacted).
//! Chains end at [`MAX_DEPTH`] follow-ups deep.

use serde_json::{Map, Value as Json};

/// How deep follow-ups of follow-ups may go.
pub(crate) const MAX_DEPTH: usize = 8;

/// The envelope keys that hold follow-ups, in the order their ids are numbered.
pub(crate) const LISTS: [&str; 2] = ["then", "on_failure"];

/// How much of the parent's log `${parent.log_tail}` holds at most: its last lines, this many.
const LOG_TAIL_LINES: usize = 20;
/// ... and at most this many bytes of them.
const LOG_TAIL_BYTES: usize = 2048;

/// A request's follow-ups, as written (mappings without `id`).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct FollowUps {
    pub then: Vec<Map<String, Json>>,
    pub on_failure: Vec<Map<String, Json>>,
}

/// What a follow-up may take of its parent's outcome.
pub(crate) struct Parent<'a> {
    pub id: &'a str,
    pub state: &'a str,
    pub exit_code: Option<i32>,
    /// The parent's last log, as committed.
    pub log: &'a [u8],
}

impl FollowUps {
    /// The lists of `envelope`, checked for shape: each a list of mappings without `id`.
    pub(crate) fn of(envelope: &Map<String, Json>) -> Result<Self, String> {
        let mut follow_ups = Self::default();
        for list in LISTS {
            let Some(value) = envelope.get(list) else {
                continue;
            };
            let Json::Array(items) = value else {
                return Err(format!(
                    "`{list}` must be a list of requests (each a mapping with `kind`)"
                ));
            };
            let mut read = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let Json::Object(item) = item else {
                    return Err(format!(
                        "`{list}[{i}]` must be a request: a mapping with `kind`"
                    ));
                };
                if item.contains_key("id") {
                    return Err(format!(
                        "`{list}[{i}].id`: a follow-up has no `id` of its own; it is named after \
                         its parent (`ID.{list}-{}`)",
                        i + 1
                    ));
                }
                read.push(item.clone());
            }
            match list {
                "then" => follow_ups.then = read,
                _ => follow_ups.on_failure = read,
            }
        }
        Ok(follow_ups)
    }

    /// Every follow-up as the request it would be for a parent `id` ending in a state that calls
    /// for its list (placeholders filled with such a parent's values), for checking: (list, index,
    /// id, request).
    pub(crate) fn candidates(&self, id: &str) -> Vec<(&'static str, usize, String, Json)> {
        let mut all = Vec::new();
        for (list, items, state) in [
            ("then", &self.then, "succeeded"),
            ("on_failure", &self.on_failure, "failed"),
        ] {
            let parent = Parent {
                id,
                state,
                exit_code: Some(i32::from(state != "succeeded")),
                log: b"",
            };
            for (i, item) in items.iter().enumerate() {
                let child = child_id(id, list, i);
                all.push((list, i, child.clone(), instantiate(item, &child, &parent)));
            }
        }
        all
    }

    /// The follow-ups `parent`'s state calls for, as (id, YAML of the request).
    pub(crate) fn due(&self, parent: &Parent<'_>) -> Vec<(String, String)> {
        let (list, items) = match parent.state {
            "succeeded" => ("then", &self.then),
            "failed" | "timed_out" | "abandoned" => ("on_failure", &self.on_failure),
            _ => return Vec::new(),
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let child = child_id(parent.id, list, i);
                let request = instantiate(item, &child, parent);
                let yaml = serde_yaml::to_string(&request).expect("JSON values serialise as YAML");
                (child, yaml)
            })
            .collect()
    }
}

/// `ID.then-1` for the first of `then`.
fn child_id(parent: &str, list: &str, index: usize) -> String {
    format!("{parent}.{list}-{}", index + 1)
}

/// How many follow-ups deep `id` is: the `.then-N` / `.on_failure-N` it ends with, counted.
pub(crate) fn depth(id: &str) -> usize {
    let mut depth = 0;
    let mut rest = id;
    while let Some(parent) = caused_by(rest) {
        depth += 1;
        rest = parent;
    }
    depth
}

/// The parent a follow-up's id names: `nightly` for `nightly.on_failure-2`.
pub(crate) fn caused_by(id: &str) -> Option<&str> {
    LISTS.iter().find_map(|list| {
        let (parent, n) = id.rsplit_once(&format!(".{list}-"))?;
        let numbered =
            !n.is_empty() && !n.starts_with('0') && n.bytes().all(|b| b.is_ascii_digit());
        (numbered && !parent.is_empty()).then_some(parent)
    })
}

/// The follow-up `item` as request `id`, its string values' placeholders filled from `parent`.
fn instantiate(item: &Map<String, Json>, id: &str, parent: &Parent<'_>) -> Json {
    let mut request = Map::new();
    request.insert("id".to_owned(), Json::String(id.to_owned()));
    for (key, value) in item {
        // Its own follow-ups keep their placeholders: they are filled from their own parent.
        let own = LISTS.contains(&key.as_str());
        request.insert(
            key.clone(),
            if own {
                value.clone()
            } else {
                fill(value, parent)
            },
        );
    }
    Json::Object(request)
}

fn fill(value: &Json, parent: &Parent<'_>) -> Json {
    match value {
        Json::String(s) if s.contains("${parent.") => Json::String(fill_text(s, parent)),
        Json::Array(items) => Json::Array(items.iter().map(|v| fill(v, parent)).collect()),
        Json::Object(map) => Json::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), fill(v, parent)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn fill_text(text: &str, parent: &Parent<'_>) -> String {
    text.replace("${parent.id}", parent.id)
        .replace("${parent.state}", parent.state)
        .replace(
            "${parent.exit_code}",
            &parent.exit_code.map_or_else(String::new, |c| c.to_string()),
        )
        .replace("${parent.log_tail}", &log_tail(parent.log))
}

/// The last [`LOG_TAIL_LINES`] lines of `log`, at most [`LOG_TAIL_BYTES`], as text.
fn log_tail(log: &[u8]) -> String {
    let text = String::from_utf8_lossy(log);
    let text = text.trim_end();
    let start = text
        .rmatch_indices('\n')
        .nth(LOG_TAIL_LINES - 1)
        .map_or(0, |(i, _)| i + 1);
    let tail = &text[start..];
    let mut from = tail.len().saturating_sub(LOG_TAIL_BYTES);
    while !tail.is_char_boundary(from) {
        from += 1;
    }
    tail[from..].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn follow_ups(value: Json) -> Result<FollowUps, String> {
        FollowUps::of(value.as_object().unwrap())
    }

    #[test]
    fn a_follow_ups_id_names_its_parent_and_its_depth() {
        assert_eq!(caused_by("nightly.then-1"), Some("nightly"));
        assert_eq!(caused_by("nightly.on_failure-12"), Some("nightly"));
        assert_eq!(caused_by("a.then-1.on_failure-2"), Some("a.then-1"));
        for plain in [
            "nightly",
            "x.then-0",
            "x.then-01",
            "x.then-",
            ".then-1",
            "x.thenx-1",
        ] {
            assert_eq!(caused_by(plain), None, "{plain}");
        }
        assert_eq!(depth("a"), 0);
        assert_eq!(depth("a.then-1.on_failure-2.then-1"), 3);
    }

    #[test]
    fn the_state_picks_the_list_and_placeholders_take_the_parents_outcome() {
        let chain = follow_ups(json!({
            "then": [{"kind": "echo", "params": {"msg": "${parent.id} ${parent.state}"}}],
            "on_failure": [
                {"kind": "notify", "params": {"text": "${parent.id} ${parent.state} (exit ${parent.exit_code}): ${parent.log_tail}"},
                 "then": [{"kind": "echo", "params": {"msg": "${parent.id}"}}]},
                {"kind": "echo"}
            ]
        }))
        .unwrap();
        let log = (1..=30).map(|i| format!("line {i}\n")).collect::<String>();
        let failed = Parent {
            id: "db",
            state: "timed_out",
            exit_code: None,
            log: log.as_bytes(),
        };
        let due = chain.due(&failed);
        assert_eq!(
            due.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(),
            ["db.on_failure-1", "db.on_failure-2"]
        );
        let first: Json = serde_yaml::from_str(&due[0].1).unwrap();
        let text = first["params"]["text"].as_str().unwrap();
        assert!(
            text.starts_with("db timed_out (exit ): line 11\n"),
            "{text}"
        );
        assert!(text.ends_with("line 30"), "{text}");
        // The nested follow-up keeps its placeholder for its own parent.
        assert_eq!(first["then"][0]["params"]["msg"], "${parent.id}");
        assert_eq!(
            first["params"]["text"]
                .as_str()
                .map(|t| t.starts_with("db ")),
            Some(true)
        );
        assert_eq!(first["id"], "db.on_failure-1");
        let ok = Parent {
            id: "db",
            state: "succeeded",
            exit_code: Some(0),
            log: b"",
        };
        let due = chain.due(&ok);
        assert_eq!(due.len(), 1);
        assert!(due[0].1.contains("msg: db succeeded"), "{}", due[0].1);
        let cancelled = Parent {
            id: "db",
            state: "cancelled",
            exit_code: None,
            log: b"",
        };
        assert!(chain.due(&cancelled).is_empty());
    }

    #[test]
    fn a_follow_up_must_be_a_mapping_without_an_id() {
        assert!(
            follow_ups(json!({"then": {"kind": "echo"}}))
                .unwrap_err()
                .contains("must be a list")
        );
        assert!(
            follow_ups(json!({"then": ["echo"]}))
                .unwrap_err()
                .contains("`then[0]` must be a request")
        );
        let id = follow_ups(json!({"on_failure": [{"kind": "echo", "id": "x"}]})).unwrap_err();
        assert!(id.contains("`on_failure[0].id`"), "{id}");
    }
}
