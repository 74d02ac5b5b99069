//! `git-dispatch demo`: a self-contained demonstration. A temporary bare remote is seeded with the
//! example inbox; a submitter commits a handful of requests with plain `git` (succeeding, failing,
//! invalid, timing out); the dispatcher drains them; the outcomes and the remote's log are shown.

use std::path::Path;

use serde_json::Value;

use super::playground::{Playground, git_output};
use crate::cli::DemoArgs;
use crate::error::CommandError;
use crate::layout;

const REQUESTS: &[(&str, &str)] = &[
    (
        "hello.yml",
        "kind: echo\nparams:\n  message: hello from the demo\n",
    ),
    (
        "greet-ada.yml",
        "kind: greet\nparams:\n  name: Ada\n  times: 2\n",
    ),
    ("exit-3.yml", "kind: fail\nparams:\n  code: 3\n"),
    ("too-slow.yml", "kind: sleep\nparams:\n  seconds: 30\n"),
    (
        "bad-params.yml",
        "kind: greet\nparams:\n  name: Bob\n  times: ten\n",
    ),
    ("no-such-kind.yml", "kind: reboot-the-world\n"),
    ("dup-keys.yml", "kind: echo\nkind: greet\n"),
];

pub(crate) fn run(args: &DemoArgs) -> Result<(), CommandError> {
    let playground = Playground::new("git-dispatch-demo-")?;
    println!("git-dispatch demo in {}\n", playground.root().display());
    println!(
        "1. a bare remote seeded with the example inbox (handlers/index.yml: echo, greet, fail, sleep)"
    );
    playground.submit(REQUESTS)?;
    println!(
        "2. a submitter commits {} requests with plain git and pushes",
        REQUESTS.len()
    );
    for (name, body) in REQUESTS {
        println!("     requests/{name}: {}", body.trim().replace('\n', "; "));
    }
    println!(
        "3. the dispatcher drains the inbox (`git-dispatch run --until-empty`; its own log is on \
         standard error):"
    );
    let summary = playground
        .drain()
        .map_err(|e| CommandError::config(anyhow::anyhow!(e)))?;
    // Standard output may be a file while the log goes to the terminal (or nowhere): the step says
    // what it came to here too.
    let states: Vec<String> = summary
        .by_state
        .iter()
        .map(|(state, n)| format!("{n} {state}"))
        .collect();
    println!(
        "     recorded {} outcome(s) and pushed them: {}",
        summary.recorded,
        states.join(", ")
    );
    let check = playground.fresh_clone()?;
    println!("\n4. what a fresh clone of the remote shows:\n");
    print_outcomes(&check)?;
    println!("\n   git log --format='%h %s' (newest first):");
    print!("{}", git_output(&check, &["log", "--format=   %h %s"])?);
    let trailers = git_output(
        &check,
        &[
            "log",
            "--format=%(trailers:key=Dispatch-State,valueonly,separator=)",
        ],
    )?;
    let states = trailers.lines().filter(|l| !l.is_empty()).count();
    println!("\n   git log --format='%(trailers:key=Dispatch-State)' finds {states} outcomes.");
    if args.keep {
        println!("\nkept: {}", playground.keep().display());
    }
    Ok(())
}

fn print_outcomes(check: &Path) -> anyhow::Result<()> {
    let repo = git2::Repository::open(check)?;
    let mut rows = Vec::new();
    for (_, _, blob) in layout::statuses(&repo, &repo.head()?.peel_to_tree()?)? {
        let status: Value = serde_json::from_slice(repo.find_blob(blob)?.content())?;
        rows.push(status);
    }
    rows.sort_by_key(|s| s["finished_at"].as_str().unwrap_or_default().to_owned());
    let text = |s: &Value, k: &str| s[k].as_str().unwrap_or("-").to_owned();
    // Each column as wide as its longest cell, so a long kind or id does not shift the others.
    let width = |k: &str, head: &str| {
        rows.iter()
            .map(|s| text(s, k).chars().count())
            .chain([head.len()])
            .max()
            .unwrap_or(0)
    };
    let (id_w, kind_w, state_w) = (
        width("id", "id"),
        width("kind", "kind"),
        width("state", "state"),
    );
    println!(
        "   {:<id_w$} {:<kind_w$} {:<state_w$} {:>5} {:>7}  error",
        "id", "kind", "state", "exit", "ms"
    );
    for s in &rows {
        let num = |k: &str| s[k].as_i64().map_or("-".to_owned(), |n| n.to_string());
        let mut error = text(s, "error");
        if error.chars().count() > 90 {
            error = error.chars().take(87).collect();
            error.push_str("...");
        }
        let row = format!(
            "   {:<id_w$} {:<kind_w$} {:<state_w$} {:>5} {:>7}  {}",
            text(s, "id"),
            text(s, "kind"),
            text(s, "state"),
            num("exit_code"),
            num("duration_ms"),
            if error == "-" { "" } else { &error }
        );
        println!("{}", row.trim_end());
    }
    Ok(())
}
