//! bytes -> [`Request`]: the checks every request passes before anything runs, in the order a reader
//! would make them: where the file is, what it is, its size, its encoding, its YAML (duplicate keys
//! rejected, the size it expands to bounded while it is read), its envelope, the envelope schema, its
//! id, its kind's route, its params schema, the size of its params, its timeout.
//!
//! A request that fails any check becomes a [`Rejection`] whose `error` names the file, the field and
//! what was expected. `run` records it; `validate` prints it: the same words either way.

use std::time::{Duration, SystemTime};

use serde_json::{Map, Value as Json};
use serde_yaml::{Mapping, Value as Yaml};

use crate::git::view::EntryType;
use crate::inbox::chain::{self, FollowUps};
use crate::inbox::router::{Catalog, Route, parse_duration};
use crate::inbox::yaml::{MAX_EXPANDED, describe_yaml, parse_yaml_mapping, too_large};
use crate::layout::is_valid_name;

pub(crate) const INBOX: &str = "requests";
const ENVELOPE_KEYS: [&str; 8] = [
    "kind",
    "id",
    "resource",
    "params",
    "timeout",
    "not_before",
    "then",
    "on_failure",
];

/// The most bytes `params` may take as JSON: the handler gets them in `DISPATCH_PARAMS`, one
/// environment string, which Linux caps at 128 KiB (`MAX_ARG_STRLEN`) with the name, the `=` and the
/// terminating NUL. Over it, `execve` fails with "Argument list too long".
const MAX_PARAMS_JSON: usize = 128 * 1024 - "DISPATCH_PARAMS=".len() - 1;

/// A request that passed every check: what the sandbox needs to run it.
#[derive(Clone)]
pub(crate) struct Request {
    pub id: String,
    pub kind: String,
    pub resource: String,
    pub params: Json,
    /// The whole request as JSON: the handler's standard input.
    pub json: Json,
    pub timeout: Duration,
    pub route: Route,
    /// It waits in the queue until then.
    pub not_before: Option<SystemTime>,
    /// What is enqueued when it ends (see [`crate::inbox::chain`]).
    pub follow_ups: FollowUps,
}

/// Why a request cannot run.
#[derive(Debug, Clone)]
pub(crate) struct Rejection {
    /// The request's id when it is well-formed (it may still be a duplicate).
    pub id: Option<String>,
    pub kind: Option<String>,
    pub error: String,
}

/// What the checks know of the inbox entry besides its bytes.
pub(crate) struct Candidate<'a> {
    /// `requests/<name>`.
    pub path: &'a str,
    pub entry: EntryType,
    pub size: u64,
    pub max_size: u64,
}

/// Checks one inbox entry. `bytes` are read only for an entry that is a regular file within the size
/// limit; `is_used` says whether an id already has an outcome (or is running).
pub(crate) fn check(
    candidate: &Candidate<'_>,
    bytes: impl FnOnce() -> std::io::Result<Vec<u8>>,
    catalog: &Catalog,
    is_used: &dyn Fn(&str) -> bool,
) -> Result<Request, Rejection> {
    let path = candidate.path;
    let reject = |id: Option<&str>, kind: Option<&str>, error: String| Rejection {
        id: id.map(str::to_owned),
        kind: kind.map(str::to_owned),
        error: format!("request `{path}`: {error}"),
    };
    let name = path.strip_prefix("requests/").unwrap_or(path);
    let stem = request_stem(name);
    if candidate.entry == EntryType::Dir {
        return Err(reject(
            None,
            None,
            "is a folder; requests must be `.yml`/`.yaml` files directly in `requests/`".into(),
        ));
    }
    if candidate.entry != (EntryType::File { executable: false })
        && candidate.entry != (EntryType::File { executable: true })
    {
        return Err(reject(
            None,
            None,
            format!(
                "is {}; requests must be regular `.yml`/`.yaml` files",
                candidate.entry.describe()
            ),
        ));
    }
    let Some(stem) = stem else {
        if name == ".yml" || name == ".yaml" {
            return Err(reject(
                None,
                None,
                "has no name before its extension; requests must be YAML files named `<id>.yml`"
                    .into(),
            ));
        }
        return Err(reject(
            None,
            None,
            "is not a `.yml` or `.yaml` file; requests must be YAML files named `<id>.yml`".into(),
        ));
    };
    if candidate.size > candidate.max_size {
        return Err(reject(
            None,
            None,
            format!(
                "is {} bytes, over the size limit of {} bytes",
                candidate.size, candidate.max_size
            ),
        ));
    }
    let bytes = bytes().map_err(|e| reject(None, None, format!("could not be read: {e}")))?;
    let mapping = parse_request_yaml(&bytes).map_err(|e| reject(None, None, e))?;
    let envelope = Envelope::from_mapping(mapping).map_err(|e| {
        let id = e.id.as_deref().filter(|id| is_valid_name(id));
        reject(id, e.kind.as_deref(), e.errors.join("; "))
    })?;
    let json_size = serde_json::to_string(&envelope.json)
        .expect("JSON values serialise")
        .len();
    if json_size > MAX_EXPANDED {
        return Err(reject(
            envelope.id.as_deref().filter(|id| is_valid_name(id)),
            Some(&envelope.kind),
            format!(
                "is {json_size} bytes as JSON (its strings escaped) and {}",
                too_large(MAX_EXPANDED)
            ),
        ));
    }
    let id = envelope.id.clone().unwrap_or_else(|| stem.to_owned());
    let kind = envelope.kind.as_str();
    let mut errors = match &catalog.request_schema {
        Ok(schema) => schema.violations(&envelope.json, ""),
        Err(e) => vec![e.clone()],
    };
    let id_ok = if is_valid_name(&id) {
        true
    } else {
        errors.push(format!(
            "`id`: `{id}` is not a valid id (expected [A-Za-z0-9][A-Za-z0-9._-]{{0,127}}{})",
            if envelope.id.is_none() {
                "; the id defaults to the file name without `.yml`"
            } else {
                ""
            }
        ));
        false
    };
    if !is_valid_name(kind) {
        errors.push(format!(
            "`kind`: `{kind}` is not a valid kind name (expected [A-Za-z0-9][A-Za-z0-9._-]{{0,127}})"
        ));
    }
    let valid_id = id_ok.then_some(id.as_str());
    if !errors.is_empty() {
        return Err(reject(valid_id, Some(kind), errors.join("; ")));
    }
    if is_used(&id) {
        return Err(reject(
            valid_id,
            Some(kind),
            format!(
                "`id`: `{id}` is already used by another request (duplicate); ids can be used once: \
                 submit with a new id"
            ),
        ));
    }
    let route = catalog
        .route(kind)
        .map_err(|e| reject(valid_id, Some(kind), e))?
        .clone();
    let params = envelope.params.clone().unwrap_or(Json::Object(Map::new()));
    if let Some(schema) = &route.params_schema {
        let violations = schema.violations(&params, "params");
        if !violations.is_empty() {
            return Err(reject(
                valid_id,
                Some(kind),
                format!("{} (schema `{}`)", violations.join("; "), schema.path),
            ));
        }
    }
    let params_size = serde_json::to_string(&params)
        .expect("JSON values serialise")
        .len();
    if params_size > MAX_PARAMS_JSON {
        return Err(reject(
            valid_id,
            Some(kind),
            format!(
                "`params`: its JSON form is {params_size} bytes, over the limit of {MAX_PARAMS_JSON} \
                 bytes: the handler gets it as `DISPATCH_PARAMS`, one environment string, which \
                 Linux caps at 128 KiB with its name; pass less data in `params`"
            ),
        ));
    }
    let resource = envelope
        .resource
        .clone()
        .or_else(|| route.spec.resource.clone())
        .unwrap_or_else(|| kind.to_owned());
    if !is_valid_name(&resource) {
        return Err(reject(
            valid_id,
            Some(kind),
            format!(
                "`resource`: `{resource}` is not a valid lock name (expected [A-Za-z0-9][A-Za-z0-9._-]{{0,127}})"
            ),
        ));
    }
    let timeout = match &envelope.timeout {
        None => route.spec.timeout,
        Some(text) => {
            let timeout = parse_duration(text)
                .map_err(|e| reject(valid_id, Some(kind), format!("`timeout`: {e}")))?;
            if timeout.is_zero() {
                return Err(reject(
                    valid_id,
                    Some(kind),
                    format!(
                        "`timeout`: `{text}` is zero; expected a duration longer than zero, at most \
                         the handler's timeout of {}",
                        humantime::format_duration(route.spec.timeout)
                    ),
                ));
            }
            if timeout > route.spec.timeout {
                return Err(reject(
                    valid_id,
                    Some(kind),
                    format!(
                        "`timeout`: `{text}` is longer than the handler's timeout of {}; a request may only shorten it",
                        humantime::format_duration(route.spec.timeout)
                    ),
                ));
            }
            timeout
        }
    };
    let not_before = match envelope.json.get("not_before") {
        None => None,
        Some(Json::String(text)) => Some(
            parse_time(text)
                .map_err(|e| reject(valid_id, Some(kind), format!("`not_before`: {e}")))?,
        ),
        Some(other) => {
            return Err(reject(
                valid_id,
                Some(kind),
                format!(
                    "`not_before` must be an RFC 3339 time as a string (got {}; quote it)",
                    describe_json(other)
                ),
            ));
        }
    };
    let object = envelope
        .json
        .as_object()
        .expect("the envelope is a mapping");
    let follow_ups = FollowUps::of(object).map_err(|e| reject(valid_id, Some(kind), e))?;
    for (list, i, child, request) in follow_ups.candidates(&id) {
        let at = |e: String| reject(valid_id, Some(kind), format!("`{list}[{i}]`: {e}"));
        if chain::depth(&child) > chain::MAX_DEPTH {
            return Err(at(format!(
                "follow-up `{child}` would be {} deep, over the limit of {}: a chain this long \
                 is taken for a runaway",
                chain::depth(&child),
                chain::MAX_DEPTH
            )));
        }
        let bytes = serde_yaml::to_string(&request).expect("JSON values serialise as YAML");
        let child_path = format!("{INBOX}/{child}.yml");
        let candidate = Candidate {
            path: &child_path,
            entry: EntryType::File { executable: false },
            size: bytes.len() as u64,
            max_size: candidate.max_size,
        };
        // Boxed: one instance of `check` serves every depth.
        let bytes: Box<dyn FnOnce() -> std::io::Result<Vec<u8>>> =
            Box::new(move || Ok(bytes.into_bytes()));
        check(&candidate, bytes, catalog, is_used).map_err(|r| {
            let prefix = format!("request `{child_path}`: ");
            at(r.error.strip_prefix(&prefix).unwrap_or(&r.error).to_owned())
        })?;
    }
    Ok(Request {
        id,
        kind: kind.to_owned(),
        resource,
        params,
        json: envelope.json,
        timeout,
        route,
        not_before,
        follow_ups,
    })
}

/// An RFC 3339 time (`2026-12-05T18:00:00Z`, `2026-12-05T19:00:00+01:00`).
fn parse_time(text: &str) -> Result<SystemTime, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(SystemTime::from)
        .map_err(|e| {
            format!("`{text}` is not an RFC 3339 time ({e}); expected e.g. `2026-12-05T18:00:00Z`")
        })
}

/// Whether the inbox leaves the entry `name` alone: a dotfile (`.gitkeep`) that is not named like a
/// request. One that is (`..yml`, `.draft.yml`) is taken, and rejected for its id, so nothing named
/// like a request stays in the inbox.
pub(crate) fn is_left_alone(name: &str) -> bool {
    name.starts_with('.') && !(name.ends_with(".yml") || name.ends_with(".yaml"))
}

/// The file name without `.yml`/`.yaml`, or `None` for any other name.
pub(crate) fn request_stem(name: &str) -> Option<&str> {
    name.strip_suffix(".yml")
        .or_else(|| name.strip_suffix(".yaml"))
        .filter(|stem| !stem.is_empty())
}

/// The envelope of the SPEC, read from the mapping by hand so each problem names its field.
struct Envelope {
    kind: String,
    id: Option<String>,
    resource: Option<String>,
    params: Option<Json>,
    timeout: Option<String>,
    json: Json,
}

struct EnvelopeErrors {
    kind: Option<String>,
    /// The id, when the file names one as a string: the request is recorded under it.
    id: Option<String>,
    errors: Vec<String>,
}

impl Envelope {
    fn from_mapping(mapping: Mapping) -> Result<Self, EnvelopeErrors> {
        let mut errors = Vec::new();
        let mut json = Map::new();
        for (key, value) in mapping {
            let Yaml::String(key) = key else {
                errors.push(format!(
                    "every top-level key must be a string, got {}",
                    describe_yaml(&key)
                ));
                continue;
            };
            if !ENVELOPE_KEYS.contains(&key.as_str()) {
                errors.push(format!(
                    "`{key}` is not a known key (expected one of: {})",
                    ENVELOPE_KEYS.join(", ")
                ));
                continue;
            }
            match yaml_to_json(value, &key) {
                Ok(value) => {
                    json.insert(key, value);
                }
                Err(e) => errors.push(e),
            }
        }
        let string = |field: &str, errors: &mut Vec<String>| match json.get(field) {
            None => None,
            Some(Json::String(s)) => Some(s.clone()),
            Some(other) => {
                errors.push(format!(
                    "`{field}` must be a string (got {}{})",
                    describe_json(other),
                    if field == "kind" { "" } else { "; quote it" }
                ));
                None
            }
        };
        let kind = string("kind", &mut errors);
        let id = string("id", &mut errors);
        let resource = string("resource", &mut errors);
        let timeout = string("timeout", &mut errors);
        let params = json.get("params").cloned();
        if let Some(p) = &params
            && !p.is_object()
        {
            errors.push(format!(
                "`params` must be a mapping (got {})",
                describe_json(p)
            ));
        }
        if kind.is_none() && !json.contains_key("kind") {
            errors.push(
                "`kind` is required (the kind of request, a key of `handlers/index.yml`)".into(),
            );
        }
        match (kind, errors.is_empty()) {
            (Some(kind), true) => Ok(Self {
                kind,
                id,
                resource,
                params,
                timeout,
                json: Json::Object(json),
            }),
            (kind, _) => Err(EnvelopeErrors { kind, id, errors }),
        }
    }
}

/// Decodes a request file: UTF-8 (a BOM is allowed), not empty, YAML, a mapping at the top level.
fn parse_request_yaml(bytes: &[u8]) -> Result<Mapping, String> {
    parse_yaml_mapping(bytes)
}

/// YAML -> JSON for a value under `at`; keys must be strings and numbers finite.
fn yaml_to_json(value: Yaml, at: &str) -> Result<Json, String> {
    Ok(match value {
        Yaml::Null => Json::Null,
        Yaml::Bool(b) => Json::Bool(b),
        Yaml::Number(n) => {
            if let Some(i) = n.as_i64() {
                Json::from(i)
            } else if let Some(u) = n.as_u64() {
                Json::from(u)
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                serde_json::Number::from_f64(f)
                    .map(Json::Number)
                    .ok_or_else(|| format!("`{at}`: {f} is not a finite number"))?
            }
        }
        Yaml::String(s) => Json::String(s),
        Yaml::Sequence(items) => Json::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, v)| yaml_to_json(v, &format!("{at}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        Yaml::Mapping(m) => {
            let mut map = Map::new();
            for (k, v) in m {
                let Yaml::String(k) = k else {
                    return Err(format!(
                        "`{at}`: keys must be strings, got {}",
                        describe_yaml(&k)
                    ));
                };
                let value = yaml_to_json(v, &format!("{at}.{k}"))?;
                map.insert(k, value);
            }
            Json::Object(map)
        }
        Yaml::Tagged(t) => {
            return Err(format!(
                "`{at}`: YAML tags such as `{}` are not supported",
                t.tag
            ));
        }
    })
}

fn describe_json(value: &Json) -> String {
    match value {
        Json::Null => "null".into(),
        Json::Bool(b) => format!("the boolean {b}"),
        Json::Number(n) => format!("the number {n}"),
        Json::String(s) => format!("the string {s:?}"),
        Json::Array(_) => "a list".into(),
        Json::Object(_) => "a mapping".into(),
    }
}
