//! `git-dispatch selftest`: an end-to-end run in a temporary directory (a bare remote, requests
//! committed with `git`, the dispatcher, a fresh clone) that checks the outcomes it must produce.
//! Silent on success; on failure it says what differed. Exit 0 or 1.

use std::fs;

use anyhow::{Context, bail, ensure};
use serde_json::Value;

use super::playground::{Playground, git_output};
use crate::error::CommandError;
use crate::layout::Place;

pub(crate) fn run() -> Result<(), CommandError> {
    crate::log::silence();
    check().map_err(CommandError::subject)
}

fn check() -> anyhow::Result<()> {
    let playground = Playground::new("git-dispatch-selftest-")?;
    playground.submit(&[
        ("ok.yml", "kind: echo\nparams:\n  message: selftest\n"),
        ("bad.yml", "kind: echo\nsurprise: true\n"),
        ("exit-4.yml", "kind: fail\nparams:\n  code: 4\n"),
    ])?;
    playground
        .drain()
        .map_err(|e| anyhow::anyhow!("the dispatcher failed: {e}"))?;
    let check = playground.fresh_clone()?;
    let status = |id: &str| -> anyhow::Result<Value> {
        let path = check.join(Place::Sharded.status(id));
        let bytes = fs::read(&path).with_context(|| format!("no outcome for `{id}`"))?;
        Ok(serde_json::from_slice(&bytes)?)
    };
    let ok = status("ok")?;
    ensure!(
        ok["state"] == "succeeded",
        "`ok` is {}, not succeeded",
        ok["state"]
    );
    let log =
        fs::read_to_string(check.join(Place::Sharded.log("ok", 1))).context("no log for `ok`")?;
    ensure!(
        log.contains("message: selftest"),
        "the log of `ok` lacks the request: {log}"
    );
    let bad = status("bad")?;
    ensure!(
        bad["state"] == "rejected"
            && bad["error"]
                .as_str()
                .is_some_and(|e| e.contains("surprise")),
        "`bad` should be rejected naming `surprise`: {bad}"
    );
    let failed = status("exit-4")?;
    ensure!(
        failed["state"] == "failed" && failed["exit_code"] == 4,
        "`exit-4` should have failed with exit code 4: {failed}"
    );
    let left = fs::read_dir(check.join("requests"))
        .map(|d| {
            d.flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .count()
        })
        .unwrap_or(0);
    if left > 0 {
        bail!("{left} request(s) left in the inbox");
    }
    let states = git_output(
        &check,
        &[
            "log",
            "--format=%(trailers:key=Dispatch-State,valueonly,separator=)",
        ],
    )?;
    let outcomes = states.lines().filter(|l| !l.is_empty()).count();
    ensure!(
        outcomes == 3,
        "expected 3 outcome commits, found {outcomes}"
    );
    Ok(())
}
