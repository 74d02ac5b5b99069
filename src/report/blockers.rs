//! What keeps requests from starting, read from a clone's tip as the dispatchers read it: a pause
//! or drains in `control.yml` (with who set them and when: the commit that last changed the
//! file), a `control.yml` that does not read, an index or envelope schema that does not read. For
//! `status` (text and `--json`) and `doctor`.

use std::path::Path;

use git2::{Oid, Repository};
use serde_json::{Value as Json, json};

use crate::clock::rfc3339_seconds;
use crate::git::view::TreeView;
use crate::inbox::control::{CONTROL_PATH, Control};
use crate::inbox::router::Catalog;

/// How many commits are looked back for the one that set `control.yml`.
const MAX_WALK: usize = 100_000;

/// One reason nothing (or one dispatcher) starts requests.
pub(crate) struct Blocker {
    /// `paused`, `drained`, `control` or `index`.
    pub what: &'static str,
    /// The drained dispatcher.
    pub dispatcher: Option<String>,
    pub reason: String,
    /// Who changed `control.yml` to say so, and when (pause and drain).
    pub by: Option<(String, i64)>,
}

impl Blocker {
    pub(crate) fn json(&self) -> Json {
        json!({
            "what": self.what,
            "dispatcher": self.dispatcher,
            "reason": self.reason,
            "by": self.by.as_ref().map(|(who, _)| who),
            "since": self.by.as_ref().map(|(_, at)| rfc3339_seconds(*at)),
        })
    }

    /// `paused by Ada <ada@example.org> since 2026-12-05T10:00:00Z: migration`.
    pub(crate) fn line(&self) -> String {
        let what = match (&self.dispatcher, self.what) {
            (Some(d), _) => format!("dispatcher `{d}` is drained"),
            (None, "paused") => "paused".to_owned(),
            (None, "control") => format!("`{CONTROL_PATH}` does not read"),
            (None, _) => "the index does not read".to_owned(),
        };
        let by = self.by.as_ref().map_or_else(String::new, |(who, at)| {
            format!(" by {who} since {}", rfc3339_seconds(*at))
        });
        if self.reason.is_empty() {
            format!("{what}{by}")
        } else {
            format!("{what}{by}: {}", self.reason)
        }
    }
}

/// The blockers at commit `tip`.
pub(crate) fn read(repo: &Repository, tip: Oid) -> Result<Vec<Blocker>, git2::Error> {
    let commit = repo.find_commit(tip)?;
    let tree = commit.tree()?;
    let mut found = Vec::new();
    match Control::of_tree(repo, &tree) {
        Err(reason) => found.push(Blocker {
            what: "control",
            dispatcher: None,
            reason,
            by: None,
        }),
        Ok(control) => {
            let by = (control.paused.is_some() || !control.drained.is_empty())
                .then(|| last_change(repo, tip))
                .transpose()?
                .flatten();
            if let Some(reason) = control.paused {
                found.push(Blocker {
                    what: "paused",
                    dispatcher: None,
                    reason,
                    by: by.clone(),
                });
            }
            for (dispatcher, reason) in control.drained {
                found.push(Blocker {
                    what: "drained",
                    dispatcher: Some(dispatcher),
                    reason,
                    by: by.clone(),
                });
            }
        }
    }
    let view = TreeView {
        repo,
        tree,
        commit: tip,
    };
    if let Some(reason) = Catalog::load(&view).blocker() {
        found.push(Blocker {
            what: "index",
            dispatcher: None,
            reason,
            by: None,
        });
    }
    Ok(found)
}

/// The author and time of the commit that gave `control.yml` the content it has at `tip`, along
/// first parents.
fn last_change(repo: &Repository, tip: Oid) -> Result<Option<(String, i64)>, git2::Error> {
    let blob = |c: &git2::Commit<'_>| {
        c.tree()
            .ok()
            .and_then(|t| t.get_path(Path::new(CONTROL_PATH)).ok())
            .map(|e| e.id())
    };
    let mut commit = repo.find_commit(tip)?;
    let now = blob(&commit);
    for _ in 0..MAX_WALK {
        let Ok(parent) = commit.parent(0) else { break };
        if blob(&parent) != now {
            break;
        }
        commit = parent;
    }
    let who = commit.author();
    Ok(Some((
        format!(
            "{} <{}>",
            String::from_utf8_lossy(who.name_bytes()),
            String::from_utf8_lossy(who.email_bytes())
        ),
        commit.time().seconds(),
    )))
}
