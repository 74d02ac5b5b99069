//! Secrets: `KEY=VALUE` lines in a file on the host (never in the repository), and the [`Redactor`]
//! that keeps their values out of everything the dispatcher writes: handler logs, `error` fields and
//! its own log lines.
//!
//! A value is replaced with `[REDACTED:NAME]` in the forms a handler commonly prints it: as is,
//! JSON-escaped, percent-encoded, hex, and base64 (standard and URL-safe, at each of the three byte
//! alignments it can have inside a longer encoded string). The redactor works on a stream and holds
//! back just enough bytes to catch a value split across two reads.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use thiserror::Error;

/// Encoded forms shorter than this are not redacted: they would match ordinary text.
const MIN_ENCODED_LEN: usize = 4;
/// Percent-encoding as URLs do it: everything but the unreserved characters.
const URL_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
/// As in a URL path (and Python's `urllib.parse.quote` by default): `/` stays too.
const URL_PATH: &AsciiSet = &URL_COMPONENT.remove(b'/');

#[derive(Debug, Error)]
pub(crate) enum SecretsError {
    #[error("secrets file `{path}`: {message}")]
    Refused { path: PathBuf, message: String },
}

/// The host's secrets, by name.
#[derive(Default)]
pub(crate) struct Secrets {
    values: BTreeMap<String, String>,
}

impl std::fmt::Debug for Secrets {
    // Names only: a value must never reach a debug print.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.values.keys()).finish()
    }
}

impl Secrets {
    /// Reads `path`, refusing a file that others could read or that another user owns.
    pub(crate) fn load(path: &Path) -> Result<Self, SecretsError> {
        let refused = |message: String| SecretsError::Refused {
            path: path.to_owned(),
            message,
        };
        let meta = fs::metadata(path).map_err(|e| refused(e.to_string()))?;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(refused(format!(
                "is readable by group or others (mode {:o}); run `chmod 600 {}`",
                mode & 0o777,
                path.display()
            )));
        }
        let euid = nix::unistd::geteuid().as_raw();
        if meta.uid() != euid {
            return Err(refused(format!(
                "is owned by uid {}, not by the dispatcher's user (uid {euid})",
                meta.uid()
            )));
        }
        let text = fs::read_to_string(path).map_err(|e| refused(e.to_string()))?;
        let mut values = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(refused(format!("line {}: expected `NAME=value`", n + 1)));
            };
            let key = key.trim();
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(refused(format!(
                    "line {}: `{key}` is not a variable name",
                    n + 1
                )));
            }
            values.insert(key.to_owned(), value.to_owned());
        }
        Ok(Self { values })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.values.len()
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// A redactor for every value in the file.
    pub(crate) fn redactor(&self) -> Redactor {
        Redactor::new(self.values.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }
}

/// Replaces secret values, in their common encodings, with `[REDACTED:NAME]`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Redactor {
    matcher: Option<AhoCorasick>,
    replacements: Vec<Vec<u8>>,
    longest: usize,
}

impl Redactor {
    pub(crate) fn new<'a>(secrets: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut patterns: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for (name, value) in secrets {
            if value.is_empty() {
                continue;
            }
            let replacement = format!("[REDACTED:{name}]").into_bytes();
            for form in encodings(value.as_bytes()) {
                if !patterns.iter().any(|(p, _)| *p == form) {
                    patterns.push((form, replacement.clone()));
                }
            }
        }
        if patterns.is_empty() {
            return Self::default();
        }
        let matcher = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(patterns.iter().map(|(p, _)| p))
            .expect("literal patterns always build");
        Self {
            matcher: Some(matcher),
            longest: patterns.iter().map(|(p, _)| p.len()).max().unwrap_or(0),
            replacements: patterns.into_iter().map(|(_, r)| r).collect(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.matcher.is_none()
    }

    /// Redacts a whole text (an error message, a log line).
    pub(crate) fn redact(&self, text: &str) -> String {
        let mut out = Vec::with_capacity(text.len());
        let mut stream = self.stream();
        stream.feed(text.as_bytes(), &mut out);
        stream.finish(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// A redacting stream: feed it the output as it comes.
    pub(crate) fn stream(&self) -> RedactStream<'_> {
        RedactStream {
            redactor: self,
            pending: Vec::new(),
        }
    }
}

/// The state of one redacted stream: the bytes held back because a secret may start in them.
pub(crate) struct RedactStream<'r> {
    redactor: &'r Redactor,
    pending: Vec<u8>,
}

impl RedactStream<'_> {
    /// Redacts `input` and appends what is safe to write to `out`.
    pub(crate) fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let Some(matcher) = &self.redactor.matcher else {
            out.extend_from_slice(input);
            return;
        };
        self.pending.extend_from_slice(input);
        // A match starting before `safe` lies wholly in the buffer; one starting later may not.
        let safe = self.pending.len().saturating_sub(self.redactor.longest - 1);
        self.emit(matcher, safe, out);
    }

    /// Flushes what was held back.
    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) {
        if let Some(matcher) = &self.redactor.matcher {
            let all = self.pending.len();
            self.emit(matcher, all, out);
        } else {
            out.append(&mut self.pending);
        }
    }

    fn emit(&mut self, matcher: &AhoCorasick, safe: usize, out: &mut Vec<u8>) {
        let mut done = 0;
        for m in matcher.find_iter(&self.pending) {
            if m.start() >= safe {
                break;
            }
            out.extend_from_slice(&self.pending[done..m.start()]);
            out.extend_from_slice(&self.redactor.replacements[m.pattern().as_usize()]);
            done = m.end();
        }
        let keep_from = done.max(safe);
        out.extend_from_slice(&self.pending[done..keep_from]);
        self.pending.drain(..keep_from);
    }
}

/// The forms of `value` to look for.
fn encodings(value: &[u8]) -> Vec<Vec<u8>> {
    let mut forms = vec![value.to_vec()];
    if let Ok(text) = std::str::from_utf8(value) {
        let json = serde_json::to_string(text).expect("strings serialise");
        forms.push(json.as_bytes()[1..json.len() - 1].to_vec());
        for set in [NON_ALPHANUMERIC, URL_COMPONENT, URL_PATH] {
            let encoded = utf8_percent_encode(text, set).to_string();
            forms.push(encoded.to_ascii_lowercase().into_bytes());
            forms.push(encoded.into_bytes());
        }
    }
    let hex = crate::run::capture::hex(value);
    forms.push(hex.to_ascii_uppercase().into_bytes());
    forms.push(hex.into_bytes());
    for engine in [&STANDARD, &URL_SAFE] {
        // Inside a longer encoded string the value starts at byte offset 0, 1 or 2 of a 3-byte
        // group: encode it at each offset and keep the characters that depend on the value alone.
        for offset in 0..3usize {
            let mut padded = vec![0u8; offset];
            padded.extend_from_slice(value);
            let encoded = engine.encode(&padded).into_bytes();
            let skip = if offset == 0 { 0 } else { 4 };
            let whole_groups = padded.len() / 3 * 4;
            let middle = &encoded[skip.min(whole_groups)..whole_groups];
            if middle.len() >= MIN_ENCODED_LEN {
                forms.push(middle.to_vec());
            }
        }
    }
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        forms.push(engine.encode(value).into_bytes());
    }
    forms.retain(|f| !f.is_empty() && (f.as_slice() == value || f.len() >= MIN_ENCODED_LEN));
    forms
}

static GLOBAL: OnceLock<Redactor> = OnceLock::new();

/// Installs the redactor the dispatcher's own log lines go through.
pub(crate) fn install_global(redactor: Redactor) {
    let _ = GLOBAL.set(redactor);
}

/// Redacts a line of the dispatcher's own log.
pub(crate) fn redact_global(text: &str) -> String {
    match GLOBAL.get() {
        Some(r) if !r.is_empty() => r.redact(text),
        _ => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "s3cr3t/Pa55+w0rd";

    fn redactor() -> Redactor {
        Redactor::new([("TOKEN", SECRET)])
    }

    #[test]
    fn plain_value_is_replaced_with_its_name() {
        assert_eq!(
            redactor().redact(&format!("token={SECRET}.")),
            "token=[REDACTED:TOKEN]."
        );
    }

    #[test]
    fn every_common_encoding_is_replaced() {
        let r = redactor();
        let forms = [
            STANDARD.encode(SECRET),
            URL_SAFE_NO_PAD.encode(SECRET),
            STANDARD.encode(format!("user:{SECRET}")),
            STANDARD.encode(format!("xy{SECRET}")),
            utf8_percent_encode(SECRET, NON_ALPHANUMERIC).to_string(),
            crate::run::capture::hex(SECRET.as_bytes()),
            crate::run::capture::hex(SECRET.as_bytes()).to_uppercase(),
            serde_json::to_string(SECRET).unwrap(),
        ];
        for form in forms {
            let out = r.redact(&format!("<{form}>"));
            assert!(out.contains("[REDACTED:TOKEN]"), "{form} -> {out}");
            assert!(!out.contains(SECRET), "{out}");
        }
    }

    #[test]
    fn a_value_split_across_reads_is_still_replaced() {
        let r = redactor();
        let text = format!("a{SECRET}b");
        for cut in 0..text.len() {
            let mut out = Vec::new();
            let mut stream = r.stream();
            stream.feed(&text.as_bytes()[..cut], &mut out);
            stream.feed(&text.as_bytes()[cut..], &mut out);
            stream.finish(&mut out);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                "a[REDACTED:TOKEN]b",
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn nothing_configured_passes_bytes_through() {
        let r = Redactor::default();
        assert_eq!(r.redact("anything"), "anything");
    }
}
