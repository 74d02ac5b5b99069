//! The dispatcher's own log, on standard error: one line per stage of a request, with its id. Human
//! text by default (`git-dispatch: ID: message`), JSON lines with `--log-format json`. Every line goes
//! through the secrets redactor first. A line about an outcome carries its `kind`, `state`,
//! `exit_code`, `duration_ms` (JSON only); the error that ends the process is a line too (`fatal`).

use std::io::Write;
use std::sync::OnceLock;
use std::time::SystemTime;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

static FORMAT: OnceLock<LogFormat> = OnceLock::new();
/// Set by `selftest`, which is silent on success.
static SILENT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Drops every line from now on.
pub(crate) fn silence() {
    SILENT.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Chooses the format; the first choice holds for the life of the process.
pub(crate) fn set_format(format: LogFormat) {
    let _ = FORMAT.set(format);
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    stage: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    message: &'a str,
    #[serde(flatten)]
    fields: Fields<'a>,
}

/// What a line about an outcome (or a fatal error) carries besides its message, in JSON only.
#[derive(Default, Serialize)]
pub(crate) struct Fields<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u128>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Whether the process's command line asks for JSON lines, read before (or without) parsing it, so
/// that even a usage error is a JSON line: `--log-format json`, `--log-format=json` or
/// `GIT_DISPATCH_LOG_FORMAT=json`.
pub fn json_requested(args: &[std::ffi::OsString]) -> bool {
    let flag = args
        .windows(2)
        .any(|w| w[0] == "--log-format" && w[1] == "json")
        || args.iter().any(|a| a == "--log-format=json");
    flag || std::env::var_os("GIT_DISPATCH_LOG_FORMAT").is_some_and(|v| v == "json")
}

/// The error that ends the process, as the last line of the log: plain
/// `git-dispatch: error: MESSAGE`, or a JSON line with stage `fatal` and the exit code.
pub fn fatal(message: &str, exit_code: i32) {
    let message = crate::secrets::redact_global(message);
    let line = match FORMAT.get().copied().unwrap_or(LogFormat::Text) {
        LogFormat::Text => format!("git-dispatch: error: {message}"),
        LogFormat::Json => json_line(
            "fatal",
            None,
            &message,
            Fields {
                exit_code: Some(exit_code),
                ..Fields::default()
            },
        ),
    };
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

fn json_line(stage: &str, id: Option<&str>, message: &str, fields: Fields<'_>) -> String {
    serde_json::to_string(&Line {
        time: crate::clock::rfc3339(SystemTime::now()),
        stage,
        id,
        message,
        fields,
    })
    .expect("a log line serialises")
}

/// A line about the dispatcher as a whole.
pub(crate) fn say(message: &str) {
    event("dispatcher", None, message);
}

/// A line about one stage (`sync`, `take`, `run`, `record`, `push`, ...) of request `id`.
pub(crate) fn event(stage: &str, id: Option<&str>, message: &str) {
    event_with(stage, id, message, Fields::default());
}

/// [`event`] with the fields of an outcome (shown in JSON lines only).
pub(crate) fn event_with(stage: &str, id: Option<&str>, message: &str, fields: Fields<'_>) {
    if SILENT.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let message = crate::secrets::redact_global(&crate::error::user_text(message));
    let line = match FORMAT.get().copied().unwrap_or(LogFormat::Text) {
        LogFormat::Text => match id {
            Some(id) => format!("git-dispatch: {id}: {message}"),
            None => format!("git-dispatch: {message}"),
        },
        LogFormat::Json => json_line(stage, id, &message, fields),
    };
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}
