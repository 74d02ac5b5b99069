//! `git-dispatch show ID [--log] [--json]`: in a clone of an inbox, one request at the upstream's tip:
//! its status file, the commit that recorded it and, with `--log`, the log of each attempt. A request
//! still waiting in the inbox is reported as queued; an id that is neither is an error (exit 1).

use serde_json::{Value as Json, json};

use crate::cli::ShowArgs;
use crate::clock::{now_seconds, rfc3339_seconds};
use crate::commands::status::fetched_tip;
use crate::commands::table::{Paint, age, duration};
use crate::error::CommandError;
use crate::git::view::short;
use crate::layout::Place;
use crate::report::history::{History, Recorded, Waiting};
use crate::submitter::checkout::{Checkout, Tip};

pub(crate) fn run(args: &ShowArgs) -> Result<(), CommandError> {
    let id = args.id.as_str();
    // Record keys are ids, or for a duplicate or an invalid id `NAME~N`; nothing else can be a file
    // name inside `processed/`.
    if id.is_empty()
        || id.starts_with('.')
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'~'))
    {
        return Err(CommandError::config(anyhow::anyhow!(
            "`{id}` is not a request id (letters, digits, `.`, `_`, `-`; `~N` for a duplicate)"
        )));
    }
    let checkout = Checkout::open(args.clone.repo.path.as_deref()).map_err(CommandError::config)?;
    let tip = fetched_tip(&checkout, args.clone.no_fetch)?;
    let history = History::new(&checkout.repo, tip.oid);
    let status = history.status(id, tip.oid).map_err(CommandError::config)?;
    let Some((place, status)) = status else {
        return queued(&history, &tip, id, args.json);
    };
    let path = place.status(id);
    let recording = history.recording(id).map_err(CommandError::config)?;
    let logs = if args.log {
        let attempts = status["attempts"].as_u64().unwrap_or(1);
        history
            .logs(id, place, attempts)
            .map_err(CommandError::config)?
    } else {
        Vec::new()
    };
    if args.json {
        let report = json!({
            "id": id,
            "state": status["state"],
            "path": path,
            "status": status,
            "commit": recording.as_ref().map(commit_json),
            "logs": args.log.then(|| logs.iter().map(|(path, bytes)| json!({
                "path": path,
                "text": String::from_utf8_lossy(bytes),
            })).collect::<Vec<_>>()),
        });
        println!("{report:#}");
        return Ok(());
    }
    print_status(id, &path, &status, recording.as_ref(), Paint::stdout());
    for (path, bytes) in &logs {
        println!("\n--- {path} ---");
        let text = String::from_utf8_lossy(bytes);
        print!("{text}");
        if !text.ends_with('\n') {
            println!();
        }
    }
    if args.log && logs.is_empty() {
        println!("\n(no log recorded)");
    }
    Ok(())
}

/// No status: the request is waiting in the inbox (exit 0), or unknown (exit 1).
fn queued(history: &History<'_>, tip: &Tip, id: &str, json: bool) -> Result<(), CommandError> {
    let queue = history.queue().map_err(CommandError::config)?;
    let Some(waiting) = queue.iter().find(|w| w.id == id) else {
        return Err(CommandError::subject(anyhow::anyhow!(
            "no request `{id}` at `{}` ({}): neither an outcome (`{}`) nor a \
             request waiting in `requests/`; check the id (`git-dispatch status` lists recent ones), \
             or push it if it was submitted with --no-push",
            tip.name,
            short(tip.oid),
            Place::Sharded.status(id),
        )));
    };
    let now = now_seconds();
    let position = queue.iter().position(|w| w.id == id).unwrap_or(0) + 1;
    if json {
        println!("{:#}", queued_json(waiting, position, now));
    } else {
        let paint = Paint::stdout();
        println!("id         {id}");
        println!(
            "state      {} ({} of {} in the queue, waiting for {})",
            paint.state("queued"),
            position,
            queue.len(),
            age(now - waiting.entry.arrival.time)
        );
        println!("kind       {}", waiting.kind.as_deref().unwrap_or("?"));
        println!("request    {}", waiting.entry.path);
        println!(
            "arrived    {} (commit {})",
            rfc3339_seconds(waiting.entry.arrival.time),
            short(waiting.entry.arrival.commit)
        );
    }
    Ok(())
}

fn queued_json(waiting: &Waiting, position: usize, now: i64) -> Json {
    json!({
        "id": waiting.id,
        "state": "queued",
        "kind": waiting.kind,
        "position": position,
        "path": waiting.entry.path,
        "arrived_at": rfc3339_seconds(waiting.entry.arrival.time),
        "age_seconds": (now - waiting.entry.arrival.time).max(0),
        "commit": waiting.entry.arrival.commit.to_string(),
    })
}

fn commit_json(recorded: &Recorded) -> Json {
    json!({
        "hash": recorded.commit.to_string(),
        "subject": recorded.subject,
        "date": rfc3339_seconds(recorded.time),
    })
}

fn print_status(id: &str, path: &str, status: &Json, recording: Option<&Recorded>, paint: Paint) {
    let text = |key: &str| status[key].as_str().map(str::to_owned);
    let state = text("state").unwrap_or_else(|| "unknown".to_owned());
    let mut detail = Vec::new();
    if let Some(code) = status["exit_code"].as_i64() {
        detail.push(format!("exit {code}"));
    }
    if let Some(signal) = status["signal"].as_i64() {
        detail.push(format!("signal {signal}"));
    }
    if let Some(ms) = status["duration_ms"].as_u64() {
        detail.push(duration(ms));
    }
    let detail = if detail.is_empty() {
        String::new()
    } else {
        format!(" ({})", detail.join(", "))
    };
    println!("id         {id}");
    println!("state      {}{detail}", paint.state(&state));
    let submitter = &status["submitter"];
    let submitter = submitter
        .is_object()
        .then(|| match submitter["principal"].as_str() {
            Some(who) => format!(
                "{who} ({})",
                submitter["fingerprint"].as_str().unwrap_or_default()
            ),
            None => submitter["signature"]
                .as_str()
                .unwrap_or("unknown")
                .to_owned(),
        });
    let approvals = status["approvals"].as_array().map(|all| {
        all.iter()
            .map(|a| {
                format!(
                    "{} ({}, {})",
                    a["principal"].as_str().unwrap_or("?"),
                    a["fingerprint"].as_str().unwrap_or("?"),
                    a["at"].as_str().unwrap_or("?")
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    });
    let rows = [
        ("kind", text("kind")),
        ("rerun of", text("rerun_of")),
        ("caused by", text("caused_by")),
        ("cancelled", text("cancelled_by")),
        ("submitter", submitter),
        ("approvals", approvals),
        ("error", text("error")),
        (
            "attempts",
            status["attempts"].as_u64().map(|n| n.to_string()),
        ),
        ("request", text("request")),
        ("submitted", text("submitted_at")),
        ("started", text("started_at")),
        ("finished", text("finished_at")),
        ("handler", text("handler")),
        (
            "log",
            text("log").map(|log| match status["log_bytes"].as_u64() {
                Some(bytes) => format!("{log} ({bytes} bytes)"),
                None => log,
            }),
        ),
        ("dispatcher", text("dispatcher")),
        ("status", Some(path.to_owned())),
    ];
    for (label, value) in rows {
        if let Some(value) = value {
            println!("{label:<10} {value}");
        }
    }
    match recording {
        Some(r) => println!(
            "recorded   {} {} ({})",
            short(r.commit),
            r.subject,
            rfc3339_seconds(r.time)
        ),
        None => println!("recorded   (no commit with `Dispatch-Id: {id}` in the history)"),
    }
}
