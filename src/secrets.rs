//! Secrets: `KEY=VALUE` lines in a file on the host (never in the repository), and the [`Redactor`]
//! that keeps their values out of everything the dispatcher writes: handler logs, `error` fields and
//! its own log lines.
//!
//! A value is replaced with `[REDACTED:NAME]` in the forms a handler commonly prints it: as is,
//! JSON-escaped, percent-encoded, hex, and base64 (standard and URL-safe, at each of the three byte
//! alignments it can have inside a longer encoded string), also when it is wrapped over lines (LF or
//! CRLF), as `base64` and `xxd -p` print it. The redactor works on a stream and holds back just
//! enough bytes to catch a value split across two reads.

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

/// The text of `path`, a file only the dispatcher's user may read: refused when group or others
/// could read it, or another user owns it (`--secrets-file`, `--webhook-secret-file`).
pub(crate) fn read_private(path: &Path) -> Result<String, SecretsError> {
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
    fs::read_to_string(path).map_err(|e| refused(e.to_string()))
}

impl Secrets {
    /// Reads `path`, refusing a file that others could read or that another user owns.
    pub(crate) fn load(path: &Path) -> Result<Self, SecretsError> {
        let refused = |message: String| SecretsError::Refused {
            path: path.to_owned(),
            message,
        };
        let text = read_private(path)?;
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
            last_written: None,
            joined: Vec::new(),
            joins: Vec::new(),
        }
    }
}

/// The state of one redacted stream: the bytes held back because a secret may start in them.
///
/// The matcher looks at them with the line breaks (LF or CRLF) inside an encoded run left out, so
/// that base64 and hex wrapped over lines (`base64`, `xxd -p`) are found as well; a match is
/// replaced in the output with the breaks inside it. Only a break between two characters that can
/// belong to such a run is left out, so each byte the matcher sees stands for at most three held
/// back, and the memory held stays bounded by the longest form.
pub(crate) struct RedactStream<'r> {
    redactor: &'r Redactor,
    /// Output not yet written: a secret may start in it.
    pending: Vec<u8>,
    /// The byte written just before `pending`: whether a line break that starts it is inside a run.
    last_written: Option<u8>,
    /// `pending` as the matcher sees it, rebuilt at each feed (kept to reuse its memory).
    joined: Vec<u8>,
    /// For each line break left out of `joined`: where in `joined` the byte after it is, and how
    /// many bytes of `pending` were left out up to there.
    joins: Vec<(usize, usize)>,
}

impl RedactStream<'_> {
    /// Redacts `input` and appends what is safe to write to `out`.
    pub(crate) fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let Some(matcher) = &self.redactor.matcher else {
            out.extend_from_slice(input);
            return;
        };
        self.pending.extend_from_slice(input);
        self.emit(matcher, false, out);
    }

    /// Flushes what was held back.
    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) {
        if let Some(matcher) = &self.redactor.matcher {
            self.emit(matcher, true, out);
        } else {
            out.append(&mut self.pending);
        }
    }

    /// Writes out what no secret can still start in (everything at the `end` of the stream).
    fn emit(&mut self, matcher: &AhoCorasick, end: bool, out: &mut Vec<u8>) {
        let settled = self.join(end);
        // A match starting before `safe` lies wholly in the settled part; one starting later may not.
        let safe = if end {
            settled
        } else {
            settled.saturating_sub(self.redactor.longest - 1)
        };
        let mut done = 0;
        for m in matcher.find_iter(&self.joined) {
            if m.start() >= safe {
                break;
            }
            let start = self.held_at(m.start());
            out.extend_from_slice(&self.pending[done..start]);
            out.extend_from_slice(&self.redactor.replacements[m.pattern().as_usize()]);
            done = self.held_at(m.end() - 1) + 1;
        }
        let keep_from = done.max(self.held_at(safe));
        out.extend_from_slice(&self.pending[done..keep_from]);
        if keep_from > 0 {
            self.last_written = Some(self.pending[keep_from - 1]);
        }
        self.pending.drain(..keep_from);
    }

    /// Rebuilds `joined` from `pending`; returns how much of it is settled: a line break at the very
    /// end is left out or not depending on the bytes still to come.
    fn join(&mut self, end: bool) -> usize {
        self.joined.clear();
        self.joins.clear();
        let held = &self.pending;
        let mut from = 0;
        let mut left_out = 0;
        for lf in memchr::memchr_iter(b'\n', held) {
            let brk = if lf > 0 && held[lf - 1] == b'\r' {
                lf - 1
            } else {
                lf
            };
            let before = brk
                .checked_sub(1)
                .map_or(self.last_written, |i| Some(held[i]));
            let Some(&after) = held.get(lf + 1) else {
                break;
            };
            if before.is_some_and(in_encoded_run) && in_encoded_run(after) {
                self.joined.extend_from_slice(&held[from..brk]);
                left_out += lf + 1 - brk;
                from = lf + 1;
                self.joins.push((self.joined.len(), left_out));
            }
        }
        self.joined.extend_from_slice(&held[from..]);
        let unsettled = match held.as_slice() {
            _ if end => 0,
            [.., b'\r', b'\n'] => 2,
            [.., b'\r' | b'\n'] => 1,
            _ => 0,
        };
        self.joined.len() - unsettled
    }

    /// Where the byte at `at` in `joined` is in `pending`.
    fn held_at(&self, at: usize) -> usize {
        let i = self.joins.partition_point(|(after, _)| *after <= at);
        at + i.checked_sub(1).map_or(0, |i| self.joins[i].1)
    }
}

/// Whether `byte` can be part of a base64 (standard or URL-safe) or hex run.
fn in_encoded_run(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'+' | b'/' | b'=' | b'-' | b'_')
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
    let hex = hex::encode(value);
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
            hex::encode(SECRET.as_bytes()),
            hex::encode(SECRET.as_bytes()).to_uppercase(),
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

    /// `text` with a line break (`eol`) after every `width` bytes, as `base64` (76) and `xxd -p`
    /// (60) wrap their output.
    fn wrapped(text: &str, width: usize, eol: &str) -> String {
        let lines: Vec<&str> = text
            .as_bytes()
            .chunks(width)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        lines.join(eol) + eol
    }

    /// A secret long enough that `base64` and `xxd -p` wrap it, wherever it starts on a line.
    const LONG_SECRET: &str = "s3cr3t/Pa55+w0rd-that-is-long-enough-to-wrap-0123456789-abcdefghij";

    #[test]
    fn base64_and_hex_wrapped_over_lines_are_replaced_with_lf_or_crlf() {
        let r = Redactor::new([("TOKEN", LONG_SECRET)]);
        let hex = hex::encode(LONG_SECRET.as_bytes());
        let cases = [
            ("base64", STANDARD.encode(LONG_SECRET), 76),
            (
                "base64 of user:",
                STANDARD.encode(format!("user:{LONG_SECRET}")),
                76,
            ),
            ("base64 -w 64", STANDARD.encode(LONG_SECRET), 64),
            ("xxd -p", hex.clone(), 60),
            ("HEX", hex.to_uppercase(), 60),
        ];
        for (name, encoded, width) in cases {
            for eol in ["\n", "\r\n"] {
                // At the start of the output and after a prefix that moves it along the line.
                for prefix in ["", "data: ", "x"] {
                    let text = wrapped(&format!("{prefix}{encoded}"), width, eol);
                    let out = r.redact(&text);
                    assert!(out.contains("[REDACTED:TOKEN]"), "{name} {eol:?}:\n{out}");
                    let joined: String = out.split(['\r', '\n']).collect();
                    assert!(!joined.contains(&encoded), "{name} {eol:?}:\n{out}");
                }
            }
        }
    }

    #[test]
    fn wrapped_base64_split_across_reads_is_still_replaced() {
        let r = Redactor::new([("TOKEN", LONG_SECRET)]);
        let text = format!(
            "a\r\n{}b\n",
            wrapped(&STANDARD.encode(LONG_SECRET), 76, "\r\n")
        );
        for cut in 0..text.len() {
            let mut out = Vec::new();
            let mut stream = r.stream();
            stream.feed(&text.as_bytes()[..cut], &mut out);
            stream.feed(&text.as_bytes()[cut..], &mut out);
            stream.finish(&mut out);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                "a\r\n[REDACTED:TOKEN]\r\nb\n",
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn line_breaks_between_ordinary_lines_are_kept() {
        let r = redactor();
        let text = "line one\nline two\r\n\n=end\n";
        assert_eq!(r.redact(text), text);
    }

    #[test]
    fn what_is_held_back_stays_bounded_whatever_the_output() {
        let r = Redactor::new([("TOKEN", LONG_SECRET)]);
        let mut stream = r.stream();
        let mut out = Vec::new();
        for chunk in [
            "ab\n".repeat(10_000),
            "\n".repeat(10_000),
            "a\r\n".repeat(10_000),
        ] {
            stream.feed(chunk.as_bytes(), &mut out);
            assert!(
                stream.pending.len() <= 3 * r.longest,
                "{}",
                stream.pending.len()
            );
        }
    }

    #[test]
    fn nothing_configured_passes_bytes_through() {
        let r = Redactor::default();
        assert_eq!(r.redact("anything"), "anything");
    }
}
