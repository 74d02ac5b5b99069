//! A request being written by `submit`: KIND, an optional YAML file to start from, `--param` pairs and
//! an id -> the YAML text of `requests/ID.yml` (`kind`, `id`, `params`, then anything else the file
//! had).
//!
//! A draft is not checked here beyond what is needed to build it: `submit` writes it out and runs the
//! dispatcher's own checks on the file, so an invalid draft gets the same message `run` would record.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_yaml::{Mapping, Value as Yaml};
use thiserror::Error;

use crate::inbox::yaml::{describe_yaml, parse_yaml_mapping};

#[derive(Debug, Error)]
pub(crate) enum DraftError {
    #[error("`--file {}`: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a YAML mapping (or has duplicate keys): the request itself is invalid.
    #[error("request `{}` {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "`--file {}` is a request of kind `{found}`, not `{wanted}`; pass the same kind, or remove `kind` from the file",
        path.display()
    )]
    OtherKind {
        path: PathBuf,
        found: String,
        wanted: String,
    },
    #[error("`--param {given}`: {reason}")]
    Param { given: String, reason: String },
}

impl DraftError {
    /// Whether the request's content is at fault (exit 1), rather than how the command was called.
    pub(crate) fn is_invalid_request(&self) -> bool {
        matches!(self, DraftError::Invalid { .. })
    }
}

/// The request `submit` is about to write.
#[derive(Debug)]
pub(crate) struct Draft {
    pub kind: String,
    /// `--id`, the file's `id`, or a new ULID.
    pub id: String,
    params: Mapping,
    /// Keys of the file other than `kind`, `id` and `params`, in their order (checked later, with
    /// the dispatcher's messages).
    rest: Mapping,
}

impl Draft {
    /// Starts from `file` (if any) for `kind`; the file's `kind` must agree or be absent.
    pub(crate) fn new(kind: &str, file: Option<&Path>) -> Result<Self, DraftError> {
        let mut draft = Self {
            kind: kind.to_owned(),
            id: String::new(),
            params: Mapping::new(),
            rest: Mapping::new(),
        };
        let Some(path) = file else {
            return Ok(draft);
        };
        let bytes = std::fs::read(path).map_err(|source| DraftError::Unreadable {
            path: path.to_owned(),
            source,
        })?;
        let mapping = parse_yaml_mapping(&bytes).map_err(|reason| DraftError::Invalid {
            path: path.to_owned(),
            reason,
        })?;
        draft.start_from(path, mapping)?;
        Ok(draft)
    }

    /// Starts from a request already in the inbox, read from `path` (for `rerun`): its kind, id,
    /// params and every other key.
    pub(crate) fn from_request(path: &Path, mapping: Mapping) -> Result<Self, DraftError> {
        let kind = match mapping.get("kind") {
            Some(Yaml::String(kind)) => kind.clone(),
            Some(other) => {
                return Err(DraftError::Invalid {
                    path: path.to_owned(),
                    reason: format!("has `kind` {}; it must be a string", describe_yaml(other)),
                });
            }
            None => {
                return Err(DraftError::Invalid {
                    path: path.to_owned(),
                    reason: "has no `kind`".to_owned(),
                });
            }
        };
        let mut draft = Self::new(&kind, None)?;
        draft.start_from(path, mapping)?;
        Ok(draft)
    }

    /// Takes `mapping`'s keys; its `kind` must agree with the draft's or be absent.
    fn start_from(&mut self, path: &Path, mapping: Mapping) -> Result<(), DraftError> {
        let kind = self.kind.clone();
        let draft = self;
        for (key, value) in mapping {
            match (key.as_str(), value) {
                (Some("kind"), Yaml::String(found)) if found != kind => {
                    return Err(DraftError::OtherKind {
                        path: path.to_owned(),
                        found,
                        wanted: kind.to_owned(),
                    });
                }
                (Some("kind"), Yaml::String(_)) => {}
                (Some("kind"), other) => {
                    return Err(DraftError::Invalid {
                        path: path.to_owned(),
                        reason: format!(
                            "has `kind` {}; it must be a string",
                            describe_yaml(&other)
                        ),
                    });
                }
                (Some("id"), Yaml::String(id)) => draft.id = id,
                // The id names the file, so it is needed before the checks run.
                (Some("id"), other) => {
                    return Err(DraftError::Invalid {
                        path: path.to_owned(),
                        reason: format!(
                            "has `id` {}; it must be a string (quote it)",
                            describe_yaml(&other)
                        ),
                    });
                }
                (Some("params"), Yaml::Mapping(params)) => draft.params = params,
                // Anything else (a non-string id, a list as params, an unknown key) is kept as
                // written, so the dispatcher's checks name it.
                (_, value) => {
                    draft.rest.insert(key, value);
                }
            }
        }
        Ok(())
    }

    /// Sets the id: `--id` wins over the file's; with neither, a new ULID (time-sortable, lowercase).
    pub(crate) fn identify(&mut self, id: Option<&str>) {
        if let Some(id) = id {
            id.clone_into(&mut self.id);
        }
        if self.id.is_empty() {
            self.id = id_at(SystemTime::now());
        }
    }

    /// Applies one `--param KEY=VALUE`: the value is a YAML scalar (`3` a number, `true` a boolean,
    /// `"3"` a string); dots in KEY make nested mappings (`db.name=main`).
    pub(crate) fn set_param(&mut self, given: &str) -> Result<(), DraftError> {
        let fail = |reason: String| DraftError::Param {
            given: given.to_owned(),
            reason,
        };
        let (key, text) = given
            .split_once('=')
            .ok_or_else(|| fail("expected KEY=VALUE, e.g. `--param name=main`".into()))?;
        let keys: Vec<&str> = key.split('.').collect();
        if keys.iter().any(|k| k.trim().is_empty()) {
            return Err(fail(format!(
                "`{key}` is not a key; use names separated by dots, e.g. `db.name`"
            )));
        }
        let value = scalar(text);
        let (last, parents) = keys.split_last().expect("split always yields a part");
        let mut map = &mut self.params;
        let mut at = String::from("params");
        for part in parents {
            at.push('.');
            at.push_str(part);
            let entry = map
                .entry(Yaml::String((*part).to_owned()))
                .or_insert_with(|| Yaml::Mapping(Mapping::new()));
            map = match entry {
                Yaml::Mapping(m) => m,
                other => {
                    return Err(fail(format!(
                        "`{at}` is already {}, not a mapping",
                        describe_yaml(other)
                    )));
                }
            };
        }
        map.insert(Yaml::String((*last).to_owned()), value);
        Ok(())
    }

    /// The YAML text of `requests/ID.yml`: `kind`, `id`, `params` (when any), then the other keys.
    pub(crate) fn to_yaml(&self) -> String {
        let mut out = Mapping::new();
        out.insert("kind".into(), Yaml::String(self.kind.clone()));
        out.insert("id".into(), Yaml::String(self.id.clone()));
        if !self.params.is_empty() {
            out.insert("params".into(), Yaml::Mapping(self.params.clone()));
        }
        for (key, value) in &self.rest {
            out.insert(key.clone(), value.clone());
        }
        // A mapping of YAML values always serialises.
        serde_yaml::to_string(&out).expect("a YAML mapping serialises")
    }
}

/// `--param` text -> a YAML scalar; anything that is not a plain scalar (a list, a mapping, a tag,
/// text YAML cannot parse) is kept as the string it was given.
fn scalar(text: &str) -> Yaml {
    match serde_yaml::from_str::<Yaml>(text) {
        Ok(v @ (Yaml::Null | Yaml::Bool(_) | Yaml::Number(_) | Yaml::String(_))) => v,
        _ => Yaml::String(text.to_owned()),
    }
}

/// A ULID, lowercase: 48 bits of milliseconds since the epoch then 80 random bits, so ids made at
/// different milliseconds sort by time.
fn id_at(time: SystemTime) -> String {
    ulid::Ulid::from_datetime(time).to_string().to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(params: &[&str]) -> Draft {
        let mut d = Draft::new("backup", None).unwrap();
        d.identify(Some("b1"));
        for p in params {
            d.set_param(p).unwrap();
        }
        d
    }

    #[test]
    fn params_are_typed_as_yaml_scalars_and_nested_by_dots() {
        let d = draft(&[
            "n=3",
            "flag=true",
            "name=main",
            "x=\"3\"",
            "db.name=main",
            "db.port=5432",
        ]);
        assert_eq!(
            d.to_yaml(),
            "kind: backup\nid: b1\nparams:\n  n: 3\n  flag: true\n  name: main\n  x: '3'\n  db:\n    name: main\n    port: 5432\n"
        );
    }

    #[test]
    fn a_later_param_overrides_an_earlier_one() {
        let d = draft(&["n=3", "n=4"]);
        assert_eq!(d.to_yaml(), "kind: backup\nid: b1\nparams:\n  n: 4\n");
    }

    #[test]
    fn a_param_without_equals_or_nested_into_a_scalar_is_refused() {
        let mut d = draft(&["db=main"]);
        assert!(
            d.set_param("db.name=x")
                .unwrap_err()
                .to_string()
                .contains("`params.db` is already the string \"main\"")
        );
        assert!(d.set_param("oops").is_err());
        assert!(d.set_param("a..b=1").is_err());
    }

    #[test]
    fn non_scalar_values_stay_strings() {
        let d = draft(&["list=[1, 2]", "map=a: b"]);
        assert_eq!(
            d.to_yaml(),
            "kind: backup\nid: b1\nparams:\n  list: '[1, 2]'\n  map: 'a: b'\n"
        );
    }

    #[test]
    fn a_file_is_the_start_and_its_kind_must_agree() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("r.yml");
        std::fs::write(
            &file,
            "timeout: 5m\nparams:\n  db: main\n  n: 1\nid: from-file\n",
        )
        .unwrap();
        let mut d = Draft::new("backup", Some(&file)).unwrap();
        d.identify(None);
        d.set_param("n=2").unwrap();
        assert_eq!(
            d.to_yaml(),
            "kind: backup\nid: from-file\nparams:\n  db: main\n  n: 2\ntimeout: 5m\n"
        );
        d.identify(Some("from-flag"));
        assert!(d.to_yaml().contains("id: from-flag\n"));

        std::fs::write(&file, "kind: restore\n").unwrap();
        assert!(matches!(
            Draft::new("backup", Some(&file)),
            Err(DraftError::OtherKind { .. })
        ));
        std::fs::write(&file, "kind: backup\nkind: backup\n").unwrap();
        assert!(
            Draft::new("backup", Some(&file))
                .unwrap_err()
                .is_invalid_request()
        );
    }

    #[test]
    fn new_ids_are_valid_and_sort_by_time() {
        let now = SystemTime::now();
        let a = id_at(now);
        let b = id_at(now + std::time::Duration::from_millis(1));
        assert!(crate::layout::is_valid_name(&a), "{a}");
        assert_eq!(a.len(), 26);
        assert!(a < b, "{a} !< {b}");
    }
}
