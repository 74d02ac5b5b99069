//! `schedules/NAME.yml`: a recurring request.
//!
//! ```yaml
//! cron: "*/15 * * * *"     # five fields; or `every: 15m`
//! timezone: Europe/Madrid  # IANA name, default UTC
//! request: {kind: backup, params: {database: main}}   # a request without id
//! catch_up: latest         # latest (default) | all | none
//! overlap: skip            # skip (default) | queue
//! ```
//!
//! Each slot is one request, `NAME.<slot in UTC as YYYYMMDDTHHMMZ>` (`...THHMMSSZ` when the period
//! is under a minute): the id is the slot, so two dispatchers, or one restarted, agree on it and the
//! inbox's "an id is used once" makes it run once. Cron patterns are read by `croner` in the
//! schedule's zone (`chrono-tz`): a local time a spring-forward skips fires once, at the first
//! instant after the change; one a fall-back repeats fires once, at its first occurrence.
//! `every:` slots are multiples of the period since the Unix epoch, so every dispatcher computes the
//! same ones.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use serde_json::{Map, Value as Json};
use serde_yaml::Value as Yaml;

use crate::inbox::router::parse_duration;
use crate::inbox::yaml::parse_yaml_mapping;
use crate::layout::is_valid_name;

/// The folder of schedules.
pub(crate) const SCHEDULES: &str = "schedules";

/// How many missed slots `catch_up: all` makes at most in one look.
pub(crate) const MAX_CATCH_UP: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CatchUp {
    /// One request for all the slots missed: the latest.
    Latest,
    /// One request per missed slot (at most [`MAX_CATCH_UP`]).
    All,
    /// None for missed slots; only slots that come while a dispatcher looks.
    None,
}

#[derive(Debug, Clone)]
enum Timing {
    Cron(Box<Cron>),
    Every(Duration),
}

/// A schedule that reads.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    pub name: String,
    timing: Timing,
    zone: Tz,
    /// The request, without `id`.
    pub request: Map<String, Json>,
    pub catch_up: CatchUp,
    /// `overlap: skip`: no new slot while one of this schedule's requests is queued or running.
    pub skip_overlap: bool,
}

impl Schedule {
    /// Reads `schedules/<name>.yml`; the error names the file, the key and what is expected.
    pub(crate) fn parse(name: &str, bytes: &[u8]) -> Result<Self, String> {
        let file = format!("{SCHEDULES}/{name}.yml");
        let at = |e: String| format!("schedule `{file}`: {e}");
        if !is_valid_name(name) {
            return Err(at(
                "the file name is not a valid schedule name (expected [A-Za-z0-9][A-Za-z0-9._-]{0,127}.yml)"
                    .into(),
            ));
        }
        let map = parse_yaml_mapping(bytes).map_err(&at)?;
        let text = |key: &str| -> Result<Option<String>, String> {
            match map.get(key) {
                None => Ok(None),
                Some(Yaml::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(at(format!("`{key}` must be a string"))),
            }
        };
        for key in map.keys() {
            let key = key.as_str().unwrap_or_default();
            if ![
                "cron", "every", "timezone", "request", "catch_up", "overlap",
            ]
            .contains(&key)
            {
                return Err(at(format!(
                    "`{key}` is not a known key (expected cron or every, timezone, request, \
                     catch_up, overlap)"
                )));
            }
        }
        let timing = match (text("cron")?, text("every")?) {
            (Some(pattern), None) => {
                let parser = CronParser::builder().seconds(Seconds::Disallowed).build();
                let cron = parser.parse(&pattern).map_err(|e| {
                    at(format!(
                        "`cron`: `{pattern}` is not a five-field cron pattern ({e})"
                    ))
                })?;
                Timing::Cron(Box::new(cron))
            }
            (None, Some(every)) => {
                let period = parse_duration(&every).map_err(|e| at(format!("`every`: {e}")))?;
                if period < Duration::from_secs(1) || period.subsec_nanos() != 0 {
                    return Err(at(format!(
                        "`every`: `{every}` must be whole seconds, at least 1s"
                    )));
                }
                Timing::Every(period)
            }
            (Some(_), Some(_)) => return Err(at("has both `cron` and `every`; give one".into())),
            (None, None) => return Err(at("needs `cron: \"...\"` or `every: 15m`".into())),
        };
        let zone = match text("timezone")? {
            None => Tz::UTC,
            Some(zone) => Tz::from_str(&zone).map_err(|_| {
                at(format!(
                    "`timezone`: `{zone}` is not an IANA time zone name (like `Europe/Madrid`)"
                ))
            })?,
        };
        let request = match map.get("request") {
            Some(Yaml::Mapping(request)) => {
                let json =
                    serde_json::to_value(request).map_err(|e| at(format!("`request`: {e}")))?;
                let Json::Object(request) = json else {
                    return Err(at("`request` must be a mapping".into()));
                };
                if request.contains_key("id") {
                    return Err(at(
                        "`request.id`: a scheduled request has no id of its own; each is named \
                         after its slot"
                            .into(),
                    ));
                }
                request
            }
            _ => return Err(at("needs `request:`, a request without `id`".into())),
        };
        let catch_up = match text("catch_up")?.as_deref() {
            None | Some("latest") => CatchUp::Latest,
            Some("all") => CatchUp::All,
            Some("none") => CatchUp::None,
            Some(other) => {
                return Err(at(format!(
                    "`catch_up`: `{other}` is not a policy (expected latest, all or none)"
                )));
            }
        };
        let skip_overlap = match text("overlap")?.as_deref() {
            None | Some("skip") => true,
            Some("queue") => false,
            Some(other) => {
                return Err(at(format!(
                    "`overlap`: `{other}` is not a policy (expected skip or queue)"
                )));
            }
        };
        Ok(Self {
            name: name.to_owned(),
            timing,
            zone,
            request,
            catch_up,
            skip_overlap,
        })
    }

    /// The first slot strictly after `t`.
    pub(crate) fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.timing {
            Timing::Every(period) => {
                let p = i64::try_from(period.as_secs()).ok()?;
                let next = (t.timestamp().div_euclid(p) + 1) * p;
                Utc.timestamp_opt(next, 0).single()
            }
            Timing::Cron(cron) => {
                let local = t.with_timezone(&self.zone);
                let mut next = cron.find_next_occurrence(&local, false).ok()?;
                // A fall-back repeats an hour: its second pass of the same wall-clock time is the
                // same slot.
                if next.naive_local() == local.naive_local() {
                    next = cron.find_next_occurrence(&next, false).ok()?;
                }
                Some(next.with_timezone(&Utc))
            }
        }
    }

    /// The slots in `(after, now]`, oldest first: all of them, at most `limit` (the newest).
    pub(crate) fn slots(
        &self,
        after: DateTime<Utc>,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Vec<DateTime<Utc>> {
        let mut slots = std::collections::VecDeque::new();
        let mut t = after;
        while let Some(next) = self.next_after(t).filter(|n| *n <= now) {
            slots.push_back(next);
            if slots.len() > limit {
                slots.pop_front();
            }
            t = next;
        }
        slots.into()
    }

    /// `NAME.20261205T1430Z`, with seconds when the period is under a minute.
    pub(crate) fn slot_id(&self, slot: DateTime<Utc>) -> String {
        let seconds = matches!(self.timing, Timing::Every(p) if p < Duration::from_secs(60));
        let format = if seconds {
            "%Y%m%dT%H%M%SZ"
        } else {
            "%Y%m%dT%H%MZ"
        };
        format!("{}.{}", self.name, slot.format(format))
    }

    /// The request of a slot, as YAML.
    pub(crate) fn request_yaml(&self, id: &str) -> String {
        let mut request = Map::new();
        request.insert("id".to_owned(), Json::String(id.to_owned()));
        request.extend(self.request.clone());
        serde_yaml::to_string(&Json::Object(request)).expect("JSON values serialise as YAML")
    }
}

/// The schedule a request id names: `nightly` for `nightly.20261205T0200Z` (or `...T020000Z`).
pub(crate) fn schedule_of(id: &str) -> Option<&str> {
    let (name, slot) = id.rsplit_once('.')?;
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let slot = slot.strip_suffix('Z')?;
    let (date, time) = slot.split_once('T')?;
    let ok =
        date.len() == 8 && digits(date) && (time.len() == 4 || time.len() == 6) && digits(time);
    (ok && !name.is_empty()).then_some(name)
}

/// Reads schedule `name` and checks its request as the dispatcher would check a slot's request
/// (envelope, kind, params against their schemas): a schedule whose requests would be rejected
/// is invalid.
pub(crate) fn check(
    name: &str,
    bytes: &[u8],
    catalog: &crate::inbox::router::Catalog,
) -> Result<Schedule, String> {
    let schedule = Schedule::parse(name, bytes)?;
    let id = schedule.slot_id(Utc::now());
    let yaml = schedule.request_yaml(&id);
    let path = format!("requests/{id}.yml");
    let candidate = crate::inbox::request::Candidate {
        path: &path,
        entry: crate::git::view::EntryType::File { executable: false },
        size: yaml.len() as u64,
        max_size: u64::MAX,
    };
    crate::inbox::request::check(&candidate, || Ok(yaml.into_bytes()), catalog, &|_| false)
        .map_err(|r| {
            let error = r
                .error
                .strip_prefix(&format!("request `{path}`: "))
                .unwrap_or(&r.error);
            format!("schedule `{SCHEDULES}/{name}.yml`: its `request` would be rejected: {error}")
        })?;
    Ok(schedule)
}

/// The schedules of a commit's tree: (name, blob, what it reads as), in name order. A file that
/// is not `NAME.yml` is reported as such.
pub(crate) fn of_tree(
    repo: &git2::Repository,
    tree: &git2::Tree<'_>,
    catalog: &crate::inbox::router::Catalog,
) -> Vec<(String, git2::Oid, Result<Schedule, String>)> {
    let Some(folder) = tree
        .get_name(SCHEDULES)
        .and_then(|e| repo.find_tree(e.id()).ok())
    else {
        return Vec::new();
    };
    folder
        .iter()
        .filter_map(|entry| {
            let file = entry.name().ok()?.to_owned();
            if file.starts_with('.') {
                return None;
            }
            let Some(name) = file.strip_suffix(".yml") else {
                return Some((
                    file.clone(),
                    entry.id(),
                    Err(format!(
                        "`{SCHEDULES}/{file}` is not a schedule: schedules are `{SCHEDULES}/NAME.yml` files"
                    )),
                ));
            };
            let parsed = match repo.find_blob(entry.id()) {
                Ok(blob) => check(name, blob.content(), catalog),
                Err(_) => Err(format!("`{SCHEDULES}/{file}` is not a file")),
            };
            Some((name.to_owned(), entry.id(), parsed))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn schedule(yaml: &str) -> Schedule {
        Schedule::parse("nightly", yaml.as_bytes()).unwrap()
    }

    #[test]
    fn a_spring_forward_and_a_fall_back_day_each_run_a_0230_job_once() {
        let s =
            schedule("cron: \"30 2 * * *\"\ntimezone: Europe/Madrid\nrequest: {kind: backup}\n");
        // 2026-03-29: 02:00 becomes 03:00 in Madrid; 02:30 does not exist.
        let spring = s.slots(at("2026-03-28T12:00:00Z"), at("2026-03-30T12:00:00Z"), 10);
        assert_eq!(
            spring,
            [at("2026-03-29T01:00:00Z"), at("2026-03-30T00:30:00Z")],
            "one run on the 29th (03:00 local, the first instant after the change)"
        );
        // 2026-10-25: 03:00 becomes 02:00 again; 02:30 happens twice.
        let autumn = s.slots(at("2026-10-24T12:00:00Z"), at("2026-10-26T12:00:00Z"), 10);
        assert_eq!(
            autumn,
            [at("2026-10-25T00:30:00Z"), at("2026-10-26T01:30:00Z")],
            "one run on the 25th, at the first 02:30"
        );
        assert_eq!(s.slot_id(autumn[0]), "nightly.20261025T0030Z");
    }

    #[test]
    fn every_slots_are_multiples_of_the_period_and_sub_minute_ones_name_their_seconds() {
        let s = schedule("every: 1s\nrequest: {kind: echo}\n");
        let slots = s.slots(
            at("2026-12-05T10:00:00.500Z"),
            at("2026-12-05T10:00:03Z"),
            10,
        );
        assert_eq!(
            slots.iter().map(|t| s.slot_id(*t)).collect::<Vec<_>>(),
            [
                "nightly.20261205T100001Z",
                "nightly.20261205T100002Z",
                "nightly.20261205T100003Z"
            ]
        );
        assert_eq!(
            s.slots(at("2026-12-05T10:00:00Z"), at("2026-12-05T10:00:03Z"), 2)
                .len(),
            2
        );
        let quarter = schedule("every: 15m\nrequest: {kind: echo}\n");
        assert_eq!(
            quarter.next_after(at("2026-12-05T10:07:00Z")),
            Some(at("2026-12-05T10:15:00Z"))
        );
        assert_eq!(
            quarter.slot_id(at("2026-12-05T10:15:00Z")),
            "nightly.20261205T1015Z"
        );
        assert_eq!(schedule_of("nightly.20261205T1015Z"), Some("nightly"));
        assert_eq!(schedule_of("a.b.20261205T101502Z"), Some("a.b"));
        assert_eq!(schedule_of("nightly.then-1"), None);
        assert_eq!(schedule_of("x.2026T10Z"), None);
    }

    #[test]
    fn a_schedule_that_does_not_read_says_which_key_and_what_is_expected() {
        let err = |yaml: &str| Schedule::parse("n", yaml.as_bytes()).unwrap_err();
        assert!(err("cron: \"61 * * * *\"\nrequest: {kind: e}\n").contains("`cron`"));
        assert!(err("cron: \"* * * * * *\"\nrequest: {kind: e}\n").contains("five-field"));
        assert!(err("every: 1s\ntimezone: Mars/Base\nrequest: {kind: e}\n").contains("IANA"));
        assert!(err("every: 1s\nrequest: {kind: e, id: x}\n").contains("`request.id`"));
        assert!(err("every: 1s\nrequest: {kind: e}\ncatch_up: some\n").contains("`catch_up`"));
        assert!(err("every: 1s\ncron: \"* * * * *\"\nrequest: {kind: e}\n").contains("both"));
        assert!(err("every: 1s\nrequest: {kind: e}\nextra: 1\n").contains("`extra`"));
        assert!(err("request: {kind: e}\n").contains("needs `cron"));
    }
}
