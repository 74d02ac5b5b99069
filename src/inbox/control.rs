//! `control.yml`: the operators' switches, committed to the branch like everything else, so that
//! who paused or drained what, and when, is in the history.
//!
//! ```yaml
//! paused: true                # no dispatcher starts a request
//! reason: "deploy freeze"     # said by `status`, `/healthz` and the log
//! drained:                    # these dispatchers start nothing new
//!   ops-1: "disk swap"
//! ```
//!
//! A missing file means nothing is paused or drained. A file that does not read is a blocker: the
//! dispatchers start nothing until a readable one lands, since they cannot tell what was asked.

use std::collections::BTreeMap;

use git2::{Repository, Tree};
use serde_yaml::Value;

use crate::inbox::yaml::parse_yaml_mapping;

/// Where the switches live in the repository.
pub(crate) const CONTROL_PATH: &str = "control.yml";

/// What `control.yml` asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Control {
    /// `Some(reason)` while paused (the reason may be empty).
    pub paused: Option<String>,
    /// Drained dispatchers, by id, with the reason (may be empty).
    pub drained: BTreeMap<String, String>,
}

impl Control {
    /// Reads the file's bytes; the error names the key and what is expected.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, String> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        let map = parse_yaml_mapping(bytes).map_err(|e| format!("`{CONTROL_PATH}` {e}"))?;
        let mut control = Self::default();
        let mut reason = String::new();
        let mut paused = false;
        for (key, value) in &map {
            let key = key.as_str().unwrap_or_default();
            match (key, value) {
                ("paused", Value::Bool(b)) => paused = *b,
                ("paused", _) => return Err(expected("paused", "true or false")),
                ("reason", Value::String(s)) => reason = s.clone(),
                ("reason", Value::Null) => {}
                ("reason", _) => return Err(expected("reason", "a string")),
                ("drained", Value::Null) => {}
                ("drained", Value::Mapping(m)) => {
                    for (name, why) in m {
                        let Some(name) = name.as_str() else {
                            return Err(expected("drained", "dispatcher ids as keys"));
                        };
                        let why = match why {
                            Value::String(s) => s.clone(),
                            Value::Null => String::new(),
                            _ => return Err(expected(&format!("drained.{name}"), "a string")),
                        };
                        control.drained.insert(name.to_owned(), why);
                    }
                }
                ("drained", _) => {
                    return Err(expected("drained", "a mapping of dispatcher id to reason"));
                }
                (other, _) => {
                    return Err(format!(
                        "`{CONTROL_PATH}`: unknown key `{other}` (expected `paused`, `reason`, `drained`)"
                    ));
                }
            }
        }
        if paused {
            control.paused = Some(reason);
        }
        Ok(control)
    }

    /// The switches at a commit's tree: none when it has no `control.yml`.
    pub(crate) fn of_tree(repo: &Repository, tree: &Tree<'_>) -> Result<Self, String> {
        match tree.get_name(CONTROL_PATH) {
            None => Ok(Self::default()),
            Some(entry) => {
                let blob = repo
                    .find_blob(entry.id())
                    .map_err(|_| format!("`{CONTROL_PATH}` is not a file"))?;
                Self::parse(blob.content())
            }
        }
    }

    /// Why dispatcher `id` is drained, when it is.
    pub(crate) fn drained(&self, id: &str) -> Option<&str> {
        self.drained.get(id).map(String::as_str)
    }

    /// The file's text.
    pub(crate) fn to_yaml(&self) -> String {
        let mut text = String::from(
            "# Operators' switches: git-dispatch pause/resume/drain/undrain write this file.\n",
        );
        text.push_str(&format!("paused: {}\n", self.paused.is_some()));
        if let Some(reason) = self.paused.as_deref().filter(|r| !r.is_empty()) {
            text.push_str(&format!("reason: {}\n", quoted(reason)));
        }
        if !self.drained.is_empty() {
            text.push_str("drained:\n");
            for (name, why) in &self.drained {
                text.push_str(&format!("  {name}: {}\n", quoted(why)));
            }
        }
        text
    }
}

fn expected(key: &str, what: &str) -> String {
    format!("`{CONTROL_PATH}`: `{key}` must be {what}")
}

/// A string as a YAML scalar that reads back as itself.
fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_written_reads_back() {
        let mut control = Control {
            paused: Some("deploy \"freeze\": until 18:00\n".into()),
            ..Control::default()
        };
        control.drained.insert("ops-1".into(), String::new());
        control.drained.insert("ops.2".into(), "disk: swap".into());
        assert_eq!(Control::parse(control.to_yaml().as_bytes()), Ok(control));
        let resumed = Control::default();
        assert_eq!(Control::parse(resumed.to_yaml().as_bytes()), Ok(resumed));
    }

    #[test]
    fn an_empty_file_asks_for_nothing_and_a_wrong_one_says_what_is_expected() {
        assert_eq!(Control::parse(b"\n"), Ok(Control::default()));
        assert_eq!(
            Control::parse(b"paused: yes please\n"),
            Err("`control.yml`: `paused` must be true or false".into())
        );
        let unknown = Control::parse(b"pause: true\n").unwrap_err();
        assert!(unknown.contains("unknown key `pause`"), "{unknown}");
        let list = Control::parse(b"drained: [ops-1]\n").unwrap_err();
        assert!(list.contains("`drained` must be a mapping"), "{list}");
        let broken = Control::parse(b"paused: [\n").unwrap_err();
        assert!(broken.contains("is not valid YAML"), "{broken}");
    }

    #[test]
    fn reason_without_pause_is_not_a_pause() {
        assert_eq!(
            Control::parse(b"paused: false\nreason: old\n"),
            Ok(Control::default())
        );
    }
}
