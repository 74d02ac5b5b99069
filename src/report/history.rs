//! [`History`]: what one commit of an inbox repository says about its requests, read without checking
//! anything out: the queue (`requests/` in arrival order, from [`Inbox`]), the outcomes recorded in
//! the history (commits with a `Dispatch-Id` trailer, newest first), and one request's status file
//! and logs.
//!
//! Which request is running cannot be seen here: a request stays in `requests/` until its outcome is
//! pushed, so the one being run is still in the queue.

use git2::{Oid, Repository, Sort};
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;
use thiserror::Error;

use crate::git::sync::ID_TRAILER;
use crate::git::view::{RepoView, TreeView, short};
use crate::inbox::queue::{Inbox, InboxEntry};
use crate::inbox::request::request_stem;
use crate::inbox::yaml::parse_yaml_mapping;
use crate::layout::Place;

#[derive(Debug, Error)]
pub(crate) enum HistoryError {
    #[error("`{path}` at commit {commit} could not be read: {message}")]
    Unreadable {
        path: String,
        commit: String,
        message: String,
    },
    #[error("git: {0}")]
    Git(#[from] git2::Error),
}

/// A request waiting in the inbox.
#[derive(Debug, Clone)]
pub(crate) struct Waiting {
    /// Its `id`, or the file name without `.yml` (what it would be recorded under).
    pub id: String,
    /// Its `kind`, when the file says (the checks come later: it may still be rejected).
    pub kind: Option<String>,
    /// Its `not_before`, as written, when it has one.
    pub not_before: Option<String>,
    /// For a kind with `approvals: N`: (approval files filed for it, N). Who signed them is the
    /// dispatcher's to check (`--trust`).
    pub approvals: Option<(usize, u32)>,
    pub entry: InboxEntry,
}

/// An outcome commit: the `Dispatch-*` trailers of one commit.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    pub id: String,
    pub kind: Option<String>,
    pub state: String,
    pub commit: Oid,
    pub subject: String,
    /// Committer time (when the dispatcher recorded it), seconds since the epoch.
    pub time: i64,
}

pub(crate) struct History<'r> {
    repo: &'r Repository,
    tip: Oid,
}

impl<'r> History<'r> {
    pub(crate) fn new(repo: &'r Repository, tip: Oid) -> Self {
        Self { repo, tip }
    }

    /// The requests waiting at the tip, first in first out.
    pub(crate) fn queue(&self) -> Result<Vec<Waiting>, HistoryError> {
        let entries = std::rc::Rc::unwrap_or_clone(Inbox::default().list(self.repo, self.tip)?);
        let view = self.view(self.tip)?;
        let catalog = crate::inbox::router::Catalog::load(&view);
        let filed = |id: &str| {
            view.tree
                .get_path(std::path::Path::new(&format!(
                    "{}/{id}",
                    crate::inbox::approval::APPROVALS
                )))
                .ok()
                .and_then(|e| self.repo.find_tree(e.id()).ok())
                .map_or(0, |t| t.len())
        };
        Ok(entries
            .into_iter()
            .map(|entry| {
                let fields = view
                    .read(&entry.path)
                    .ok()
                    .flatten()
                    .and_then(|bytes| parse_yaml_mapping(&bytes).ok());
                let field = |key: &str| {
                    fields
                        .as_ref()
                        .and_then(|m| m.get(key))
                        .and_then(Yaml::as_str)
                        .map(str::to_owned)
                };
                let id = field("id")
                    .or_else(|| request_stem(&entry.name).map(str::to_owned))
                    .unwrap_or_else(|| entry.name.clone());
                let approvals = field("kind")
                    .and_then(|k| catalog.route(&k).ok().map(|r| r.spec.approvals))
                    .filter(|need| *need > 0)
                    .map(|need| (filed(&id), need));
                Waiting {
                    id,
                    kind: field("kind"),
                    not_before: field("not_before"),
                    approvals,
                    entry,
                }
            })
            .collect())
    }

    /// Every outcome commit reachable from the tip, newest first (a commit before its parents).
    pub(crate) fn outcomes(
        &self,
    ) -> Result<impl Iterator<Item = Result<Recorded, git2::Error>> + '_, HistoryError> {
        let mut walk = self.repo.revwalk()?;
        walk.set_sorting(Sort::TOPOLOGICAL | Sort::TIME)?;
        walk.push(self.tip)?;
        Ok(walk.filter_map(move |oid| {
            let read = || -> Result<Option<Recorded>, git2::Error> {
                let commit = self.repo.find_commit(oid?)?;
                Ok(recorded(&commit))
            };
            read().transpose()
        }))
    }

    /// The newest outcome commit for `id`.
    pub(crate) fn recording(&self, id: &str) -> Result<Option<Recorded>, HistoryError> {
        for recorded in self.outcomes()? {
            let recorded = recorded?;
            if recorded.id == id {
                return Ok(Some(recorded));
            }
        }
        Ok(None)
    }

    /// `processed/…/ID.status.json` at commit `at` (sharded, else flat as older versions wrote it),
    /// parsed, with the place it was found; `None` when there is none.
    pub(crate) fn status(&self, id: &str, at: Oid) -> Result<Option<(Place, Json)>, HistoryError> {
        for place in Place::ALL {
            let path = place.status(id);
            let Some(bytes) = self.read(at, &path)? else {
                continue;
            };
            return serde_json::from_slice(&bytes)
                .map(|json| Some((place, json)))
                .map_err(|e| HistoryError::Unreadable {
                    path,
                    commit: short(at),
                    message: e.to_string(),
                });
        }
        Ok(None)
    }

    /// The log of each attempt of `id` at the tip, oldest first, in `place`: `logs/…/ID.log`,
    /// `logs/…/ID@2.log` (or `ID.2.log`, as versions before named it), ...
    pub(crate) fn logs(
        &self,
        id: &str,
        place: Place,
        attempts: u64,
    ) -> Result<Vec<(String, Vec<u8>)>, HistoryError> {
        let mut logs = Vec::new();
        for attempt in 1..=attempts.max(1) {
            for path in place.log_names(id, attempt) {
                if let Some(bytes) = self.read(self.tip, &path)? {
                    logs.push((path, bytes));
                    break;
                }
            }
        }
        Ok(logs)
    }

    /// The bytes of the regular file `path` at commit `at`.
    fn read(&self, at: Oid, path: &str) -> Result<Option<Vec<u8>>, HistoryError> {
        self.view(at)?
            .read(path)
            .map_err(|e| HistoryError::Unreadable {
                path: path.to_owned(),
                commit: short(at),
                message: e.to_string(),
            })
    }

    fn view(&self, at: Oid) -> Result<TreeView<'r>, git2::Error> {
        Ok(TreeView {
            repo: self.repo,
            tree: self.repo.find_commit(at)?.tree()?,
            commit: at,
        })
    }
}

/// The outcome a commit records, from its `Dispatch-Id`, `Dispatch-Kind` and `Dispatch-State`
/// trailers; `None` for any other commit.
fn recorded(commit: &git2::Commit<'_>) -> Option<Recorded> {
    let message = commit.message_raw().ok()?;
    let trailers = git2::message_trailers_strs(message).ok()?;
    let value = |key: &str| {
        trailers
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.trim().to_owned())
    };
    Some(Recorded {
        id: value(ID_TRAILER)?,
        kind: value("Dispatch-Kind"),
        state: value("Dispatch-State").unwrap_or_else(|| "unknown".to_owned()),
        commit: commit.id(),
        subject: commit
            .summary()
            .ok()
            .flatten()
            .unwrap_or_default()
            .to_owned(),
        time: commit.time().seconds(),
    })
}
