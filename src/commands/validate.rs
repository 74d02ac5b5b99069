//! `git-dispatch validate FILE... [--index]`: the dispatcher's checks, with its messages, against the
//! index and schemas of the working tree the command runs in. Nothing is committed or run.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::cli::ValidateArgs;
use crate::error::CommandError;
use crate::git::view::{DirView, EntryType, RepoView};
use crate::inbox::request::{self, Candidate};
use crate::inbox::router::Catalog;
use crate::layout::Place;

const DEFAULT_MAX_SIZE: u64 = 64 * 1024;

pub(crate) fn run(args: &ValidateArgs) -> Result<(), CommandError> {
    let root = match &args.repo.path {
        Some(repo) => repo.clone(),
        None => find_root().map_err(CommandError::config)?,
    };
    let view = DirView { root: root.clone() };
    let catalog = Catalog::load(&view);
    let mut errors = Vec::new();
    if args.index {
        errors.extend(catalog.problems());
        errors.extend(schedule_problems(&root, &catalog));
    }
    for file in &args.files {
        match check_file(&root, &view, &catalog, file) {
            Ok(()) => println!("ok: {}", file.display()),
            Err(e) => errors.push(e),
        }
    }
    for error in &errors {
        eprintln!("error: {error}");
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(CommandError::subject(anyhow::anyhow!(
            "{} problem(s) found",
            errors.len()
        )))
    }
}

/// Every schedule of `schedules/` on disk that does not read, or whose request would be rejected.
fn schedule_problems(root: &Path, catalog: &Catalog) -> Vec<String> {
    use crate::inbox::schedule::{SCHEDULES, check};
    let Ok(files) = std::fs::read_dir(root.join(SCHEDULES)) else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    let mut files: Vec<_> = files.flatten().map(|f| f.path()).collect();
    files.sort();
    for path in files {
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if file.starts_with('.') {
            continue;
        }
        let Some(name) = file.strip_suffix(".yml") else {
            problems.push(format!(
                "`{SCHEDULES}/{file}` is not a schedule: schedules are `{SCHEDULES}/NAME.yml` files"
            ));
            continue;
        };
        match std::fs::read(&path) {
            Ok(bytes) => {
                if let Err(e) = check(name, &bytes, catalog) {
                    problems.push(e);
                }
            }
            Err(e) => problems.push(format!("`{SCHEDULES}/{file}`: {e}")),
        }
    }
    problems
}

/// Checks one request file on disk exactly as the dispatcher would check it in `requests/`; the error
/// is the dispatcher's message. `submit` checks the file it writes with this too.
pub(crate) fn check_file(
    root: &Path,
    view: &DirView,
    catalog: &Catalog,
    file: &Path,
) -> Result<(), String> {
    let absolute = std::path::absolute(file).map_err(|e| format!("`{}`: {e}", file.display()))?;
    // Name the file as the dispatcher would: by its path in the repository where it is inside it.
    let shown = absolute
        .strip_prefix(root)
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| file.to_path_buf());
    let inbox_path = match shown.parent() {
        Some(parent) if parent == Path::new(request::INBOX) => shown.to_string_lossy().into_owned(),
        // A draft outside the inbox is checked as if it were there, under its own name.
        _ => format!(
            "{}/{}",
            request::INBOX,
            shown
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        ),
    };
    let meta = fs::symlink_metadata(&absolute)
        .map_err(|e| format!("request `{}`: {e}", file.display()))?;
    let entry = EntryType::of(&meta);
    let candidate = Candidate {
        path: &inbox_path,
        entry,
        size: meta.len(),
        max_size: DEFAULT_MAX_SIZE,
    };
    let stem_id = |id: &str| {
        Place::ALL
            .iter()
            .any(|place| view.exists(&place.status(id)).unwrap_or(false))
    };
    request::check(&candidate, || fs::read(&absolute), catalog, &stem_id)
        .map(|_| ())
        .map_err(|r| r.error)
}

/// The top of the working tree around the current directory.
fn find_root() -> anyhow::Result<PathBuf> {
    let cwd = std::env::current_dir().context("no current directory")?;
    let repo = git2::Repository::discover(&cwd).with_context(|| {
        format!(
            "`{}` is not inside a Git repository; pass --repo DIR",
            cwd.display()
        )
    })?;
    repo.workdir()
        .map(Path::to_path_buf)
        .context("the repository is bare; run `validate` in a clone, or pass --repo DIR")
}
