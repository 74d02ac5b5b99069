//! `git-dispatch demo`: a self-contained demonstration. A temporary bare remote is seeded with the
//! example inbox; a submitter commits a handful of requests with plain `git` (succeeding, failing,
//! invalid, timing out); the dispatcher drains them; the outcomes and the remote's log are shown.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::cli::{DemoArgs, RunArgs};
use crate::config::RunConfig;
use crate::daemon::Daemon;
use crate::error::CommandError;
use crate::scaffold;

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
    let dir = tempfile::Builder::new()
        .prefix("git-dispatch-demo-")
        .tempdir()
        .context("could not create a temporary directory")?;
    let root = dir.path();
    println!("git-dispatch demo in {}\n", root.display());

    let remote = root.join("remote.git");
    let submit = root.join("submit");
    git(root, &["init", "-q", "--bare", "-b", "main", path(&remote)])?;
    git(root, &["clone", "-q", path(&remote), path(&submit)])?;
    git(&submit, &["checkout", "-q", "-b", "main"])?;
    scaffold::write(&submit).context("could not write the example inbox")?;
    git(&submit, &["add", "-A"])?;
    git(
        &submit,
        &["commit", "-q", "-m", "an inbox: handlers, schemas, folders"],
    )?;
    git(&submit, &["push", "-q", "origin", "main"])?;
    println!(
        "1. a bare remote seeded with the example inbox (handlers/index.yml: echo, greet, fail, sleep)"
    );

    for (name, body) in REQUESTS {
        std::fs::write(submit.join("requests").join(name), body)
            .with_context(|| format!("could not write requests/{name}"))?;
        git(&submit, &["add", &format!("requests/{name}")])?;
        git(&submit, &["commit", "-q", "-m", &format!("request {name}")])?;
    }
    git(&submit, &["push", "-q", "origin", "main"])?;
    println!(
        "2. a submitter commits {} requests with plain git and pushes",
        REQUESTS.len()
    );
    for (name, body) in REQUESTS {
        println!("     requests/{name}: {}", body.trim().replace('\n', "; "));
    }

    println!("3. the dispatcher drains the inbox (`git-dispatch run --until-empty`):\n");
    let config = RunConfig::from_args(&RunArgs {
        remote: path(&remote).to_owned(),
        branch: "main".into(),
        workdir: Some(root.join("work")),
        lock_dir: None,
        poll_interval: "15s".into(),
        once: false,
        until_empty: true,
        max_request_size: "64KiB".into(),
        push_attempts: 3,
        dispatcher_id: Some("demo".into()),
        run_as: None,
        secrets_file: None,
        handlers_dir: None,
        log_limit: "1MiB".into(),
        dry_run: false,
        log_format: crate::log::LogFormat::Text,
        metrics_addr: None,
        git_transport: crate::sync::Transport::Libgit2,
        ssh_key: None,
    })?;
    Daemon::open(config)
        .and_then(Daemon::serve)
        .map_err(|e| CommandError::config(anyhow::anyhow!(e)))?;

    let check = root.join("check");
    git(root, &["clone", "-q", path(&remote), path(&check)])?;
    println!("\n4. what a fresh clone of the remote shows:\n");
    print_outcomes(&check)?;
    println!("\n   git log --format='%h %s' (newest first):");
    let log = git_output(&check, &["log", "--format=   %h %s"])?;
    print!("{log}");
    let trailers = git_output(
        &check,
        &[
            "log",
            "--format=%(trailers:key=Dispatch-State,valueonly,separator=)",
        ],
    )?;
    let states: Vec<&str> = trailers.lines().filter(|l| !l.is_empty()).collect();
    println!(
        "\n   git log --format='%(trailers:key=Dispatch-State)' finds {} outcomes.",
        states.len()
    );
    if args.keep {
        let kept = dir.keep();
        println!("\nkept: {}", kept.display());
    }
    Ok(())
}

fn print_outcomes(check: &Path) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for entry in std::fs::read_dir(check.join("processed"))? {
        let path = entry?.path();
        if path.to_string_lossy().ends_with(".status.json") {
            let status: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
            rows.push(status);
        }
    }
    rows.sort_by_key(|s| s["finished_at"].as_str().unwrap_or_default().to_owned());
    println!(
        "   {:<16} {:<8} {:<10} {:>5} {:>7}  error",
        "id", "kind", "state", "exit", "ms"
    );
    for s in rows {
        let text = |k: &str| s[k].as_str().unwrap_or("-").to_owned();
        let num = |k: &str| s[k].as_i64().map_or("-".to_owned(), |n| n.to_string());
        let mut error = text("error");
        if error.len() > 90 {
            error.truncate(87);
            error.push_str("...");
        }
        println!(
            "   {:<16} {:<8} {:<10} {:>5} {:>7}  {}",
            text("id"),
            text("kind"),
            text("state"),
            num("exit_code"),
            num("duration_ms"),
            if error == "-" { "" } else { &error }
        );
    }
    Ok(())
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

/// Runs `git` as a user would, but without their configuration.
fn git_command(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("git");
    command
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "Demo Submitter")
        .env("GIT_AUTHOR_EMAIL", "submitter@example.org")
        .env("GIT_COMMITTER_NAME", "Demo Submitter")
        .env("GIT_COMMITTER_EMAIL", "submitter@example.org");
    command
}

fn git(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    git_output(dir, args).map(|_| ())
}

fn git_output(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let output = git_command(dir, args)
        .output()
        .context("could not run `git`; is it installed?")?;
    if !output.status.success() {
        bail!(
            "`git {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
