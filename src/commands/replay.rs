//! `git-dispatch replay [DIR] [--bless] [--filter PATTERN] [-j N]`: runs the golden fixtures in DIR
//! (default `tests/fixtures`) through the real pipeline and reports every difference from their
//! expectations as a unified diff, then `N passed, N failed`. Exit 1 on any difference, and when DIR holds no fixture (a check that ran
//! nothing must not pass).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;

use crate::cli::ReplayArgs;
use crate::error::CommandError;
use crate::replay::{self, Fixture};

/// What one fixture came to.
enum Verdict {
    Passed,
    Blessed,
    Failed(Vec<String>),
}

pub(crate) fn run(args: &ReplayArgs) -> Result<(), CommandError> {
    crate::log::silence();
    let repo = match &args.repo.path {
        Some(repo) => repo.clone(),
        None => std::env::current_dir().context("no current directory")?,
    };
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("tests/fixtures"));
    let dir = if dir.is_absolute() {
        dir
    } else {
        repo.join(dir)
    };
    let fixtures = replay::discover(&dir, args.filter.as_deref()).map_err(CommandError::config)?;
    if fixtures.is_empty() {
        // A check that ran nothing has checked nothing: a CI job pointed at the wrong folder fails.
        let filter = match &args.filter {
            Some(f) => format!(" whose name contains `{f}`"),
            None => String::new(),
        };
        return Err(CommandError::subject(anyhow::anyhow!(
            "no fixtures in `{}`{filter} (a fixture is a folder holding `request.yml`)",
            dir.display()
        )));
    }
    let verdicts = run_all(&fixtures, &repo, args.bless, args.jobs.max(1));
    let (mut passed, mut failed) = (0, 0);
    for (fixture, verdict) in fixtures.iter().zip(verdicts) {
        match verdict {
            Verdict::Passed => passed += 1,
            Verdict::Blessed => {
                passed += 1;
                println!("blessed {}", fixture.name);
            }
            Verdict::Failed(diffs) => {
                failed += 1;
                println!("FAILED {}", fixture.name);
                for diff in diffs {
                    print!("{diff}");
                }
                println!();
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        return Err(CommandError::subject(anyhow::anyhow!(
            "{failed} fixture(s) differ from their expectations; if the change is intended, run `git-dispatch replay --bless` and review the diff"
        )));
    }
    Ok(())
}

/// Runs the fixtures on `jobs` threads; the verdicts come back in the fixtures' order.
fn run_all(fixtures: &[Fixture], repo: &Path, bless: bool, jobs: usize) -> Vec<Verdict> {
    let next = AtomicUsize::new(0);
    let verdicts: Mutex<Vec<Option<Verdict>>> = Mutex::new(fixtures.iter().map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(fixtures.len()) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(fixture) = fixtures.get(i) else {
                        return;
                    };
                    let verdict = judge(fixture, repo, bless);
                    verdicts.lock().expect("no thread panics holding it")[i] = Some(verdict);
                }
            });
        }
    });
    verdicts
        .into_inner()
        .expect("no thread panics holding it")
        .into_iter()
        .map(|v| v.expect("every fixture was judged"))
        .collect()
}

fn judge(fixture: &Fixture, repo: &Path, bless: bool) -> Verdict {
    let actual = match fixture.run(repo) {
        Ok(actual) => actual,
        Err(e) => return Verdict::Failed(vec![format!("{}: {e:#}\n", fixture.name)]),
    };
    if bless {
        return match fixture.bless(&actual) {
            Ok(()) => Verdict::Blessed,
            Err(e) => Verdict::Failed(vec![format!("{}: could not bless: {e:#}\n", fixture.name)]),
        };
    }
    let diffs = fixture.compare(&actual);
    if diffs.is_empty() {
        Verdict::Passed
    } else {
        Verdict::Failed(diffs)
    }
}
