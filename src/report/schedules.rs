//! The schedules as `status` shows them: each one valid or why not, its last slot that has a
//! request (queued or recorded, looked for over the last week) and its next slot.

use chrono::{Duration, Utc};
use git2::{Oid, Repository};
use serde_json::{Value as Json, json};

use crate::git::view::TreeView;
use crate::inbox::request::INBOX;
use crate::inbox::router::Catalog;
use crate::inbox::schedule;

/// One schedule's line.
pub(crate) struct Shown {
    pub name: String,
    pub error: Option<String>,
    pub last: Option<String>,
    pub next: Option<String>,
}

impl Shown {
    pub(crate) fn json(&self) -> Json {
        json!({
            "name": self.name,
            "valid": self.error.is_none(),
            "error": self.error,
            "last": self.last,
            "next": self.next,
        })
    }
}

/// The schedules at `tip`.
pub(crate) fn read(repo: &Repository, tip: Oid) -> Result<Vec<Shown>, git2::Error> {
    let tree = repo.find_commit(tip)?.tree()?;
    let catalog = Catalog::load(&TreeView {
        repo,
        tree: tree.clone(),
        commit: tip,
    });
    let now = Utc::now();
    Ok(schedule::of_tree(repo, &tree, &catalog)
        .into_iter()
        .map(|(name, _, parsed)| match parsed {
            Err(error) => Shown {
                name,
                error: Some(error),
                last: None,
                next: None,
            },
            Ok(s) => {
                let exists = |id: &str| {
                    tree.get_path(std::path::Path::new(&format!("{INBOX}/{id}.yml")))
                        .is_ok()
                        || crate::layout::is_recorded(&tree, id)
                };
                let last = s
                    .slots(now - Duration::days(7), now, 1000)
                    .into_iter()
                    .rev()
                    .map(|slot| s.slot_id(slot))
                    .find(|id| exists(id));
                Shown {
                    name,
                    error: None,
                    last,
                    next: s.next_after(now).map(|t| t.to_rfc3339()),
                }
            }
        })
        .collect())
}
