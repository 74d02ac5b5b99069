//! The dispatcher's own log, on standard error: one line per stage of a request, with its id. Human
//! text by default (`git-dispatch: ID: message`), JSON lines with `--log-format json`. Every line goes
//! through the secrets redactor first.

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
}

/// A line about the dispatcher as a whole.
pub(crate) fn say(message: &str) {
    event("dispatcher", None, message);
}

/// A line about one stage (`sync`, `take`, `run`, `record`, `push`, ...) of request `id`.
pub(crate) fn event(stage: &str, id: Option<&str>, message: &str) {
    if SILENT.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let message = crate::secrets::redact_global(message);
    let line = match FORMAT.get().copied().unwrap_or(LogFormat::Text) {
        LogFormat::Text => match id {
            Some(id) => format!("git-dispatch: {id}: {message}"),
            None => format!("git-dispatch: {message}"),
        },
        LogFormat::Json => serde_json::to_string(&Line {
            time: crate::clock::rfc3339(SystemTime::now()),
            stage,
            id,
            message: &message,
        })
        .expect("a log line serialises"),
    };
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}
