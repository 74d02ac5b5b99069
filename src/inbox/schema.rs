//! JSON Schemas: compiled once per version of the file, with format checks on and no network.
//!
//! Violations are reported one per line as ``path`: what is wrong`` where the path is written the way a
//! request's author reads it (`params.size`, `params.hosts[2]`), not as a JSON pointer.

use std::fmt::Write as _;

use jsonschema::Validator;
use serde_json::Value;

/// A compiled schema and the file it came from.
pub(crate) struct Schema {
    pub path: String,
    validator: Validator,
}

impl Schema {
    /// Compiles `bytes`, the contents of `path`. The error names the file and what is wrong with it.
    pub(crate) fn compile(path: &str, bytes: &[u8]) -> Result<Self, String> {
        let json: Value = serde_json::from_slice(bytes)
            .map_err(|e| format!("schema `{path}` is not valid JSON: {e}"))?;
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&json)
            .map_err(|e| format!("schema `{path}` does not compile: {e}"))?;
        Ok(Self {
            path: path.to_owned(),
            validator,
        })
    }

    /// Every violation of `instance`, each as ``prefix.path`: message``, in document order.
    pub(crate) fn violations(&self, instance: &Value, prefix: &str) -> Vec<String> {
        self.validator
            .iter_errors(instance)
            .map(|error| {
                let mut at = prefix.to_owned();
                for segment in error.instance_path().segments() {
                    match segment {
                        jsonschema::paths::LocationSegment::Index(i) => {
                            let _ = write!(at, "[{i}]");
                        }
                        jsonschema::paths::LocationSegment::Property(p) => {
                            if !at.is_empty() {
                                at.push('.');
                            }
                            at.push_str(&p);
                        }
                    }
                }
                if at.is_empty() {
                    format!("{error}")
                } else {
                    format!("`{at}`: {error}")
                }
            })
            .collect()
    }
}
