//! A request that left `requests/` without an outcome was withdrawn: `git-dispatch cancel` removes
//! its file, and so does a `git rm` by hand. [`find`] reads from the history who removed it, why, and
//! when it had arrived, so that its `cancelled` outcome can name them.
//!
//! The history is walked along first parents from the tip back to the last commit that still holds
//! the file: the commit after it removed it. A withdrawal is rare, and the walk stops at
//! [`MAX_WALK`] commits, so its cost is bounded whatever the history's length.

use std::path::Path;

use git2::{Commit, Oid, Repository};

/// How many commits [`find`] looks back at most.
pub(crate) const MAX_WALK: usize = 100_000;

/// The trailer `git-dispatch cancel` writes with `--reason`.
pub(crate) const REASON_TRAILER: &str = "Dispatch-Reason:";

/// What the history says of a withdrawn request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Withdrawal {
    /// The commit that removed the file, and its author as `Name <email>`.
    pub commit: Option<Oid>,
    pub by: String,
    /// The `Dispatch-Reason:` trailer of that commit, else its subject line.
    pub reason: String,
    /// The first commit (along first parents) whose tree holds the file with this blob, and its
    /// committer time.
    pub arrival: Option<(Oid, i64)>,
}

impl Withdrawal {
    /// `cancelled by Ada <ada@example.org>: the window closed`.
    pub(crate) fn describe(&self) -> String {
        if self.reason.is_empty() {
            format!("cancelled by {}", self.by)
        } else {
            format!("cancelled by {}: {}", self.by, self.reason)
        }
    }
}

/// Who removed `path` (holding `blob`) from the first-parent history that ends at `tip`, and
/// when it arrived. Without a removal in reach (a rewritten branch, a walk over [`MAX_WALK`]), the
/// author is unknown.
pub(crate) fn find(
    repo: &Repository,
    tip: Oid,
    path: &str,
    blob: Oid,
) -> Result<Withdrawal, git2::Error> {
    let mut found = Withdrawal {
        commit: None,
        by: "someone (the commit that removed it is not in the history)".to_owned(),
        reason: String::new(),
        arrival: None,
    };
    let holds = |commit: &Commit<'_>| {
        commit
            .tree()
            .ok()
            .and_then(|t| t.get_path(Path::new(path)).ok())
            .is_some_and(|e| e.id() == blob)
    };
    let mut child: Option<Commit<'_>> = None;
    let mut current = repo.find_commit(tip)?;
    for _ in 0..MAX_WALK {
        if holds(&current) {
            if found.arrival.is_none()
                && let Some(remover) = &child
            {
                found.commit = Some(remover.id());
                found.by = author(remover);
                found.reason = reason(remover);
            }
            found.arrival = Some((current.id(), current.time().seconds()));
        } else if found.arrival.is_some() {
            break;
        }
        let Ok(parent) = current.parent(0) else { break };
        child = Some(current);
        current = parent;
    }
    Ok(found)
}

fn author(commit: &Commit<'_>) -> String {
    let who = commit.author();
    format!(
        "{} <{}>",
        String::from_utf8_lossy(who.name_bytes()),
        String::from_utf8_lossy(who.email_bytes())
    )
}

/// The reason given with `--reason` (a trailer), else the commit's subject.
fn reason(commit: &Commit<'_>) -> String {
    let message = String::from_utf8_lossy(commit.message_bytes());
    message
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix(REASON_TRAILER))
        .map(|r| r.trim().to_owned())
        .unwrap_or_else(|| message.lines().next().unwrap_or_default().trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use git2::Signature;

    fn commit(repo: &Repository, files: &[(&str, &str)], message: &str, who: &str) -> Oid {
        let mut root = repo.treebuilder(None).unwrap();
        let mut inbox = repo.treebuilder(None).unwrap();
        for (name, text) in files {
            let blob = repo.blob(text.as_bytes()).unwrap();
            inbox.insert(name, blob, 0o100644).unwrap();
        }
        let inbox = inbox.write().unwrap();
        root.insert("requests", inbox, 0o040000).unwrap();
        let tree = repo.find_tree(root.write().unwrap()).unwrap();
        let sig = Signature::now(who, &format!("{}@example.org", who.to_lowercase())).unwrap();
        let parent = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
        let parents: Vec<&Commit<'_>> = parent.iter().collect();
        repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &parents)
            .unwrap()
    }

    #[test]
    fn the_commit_that_removed_the_file_names_who_and_why() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        commit(&repo, &[("keep.yml", "k")], "first", "Bot");
        let added = commit(&repo, &[("keep.yml", "k"), ("x.yml", "x")], "add x", "Ada");
        commit(
            &repo,
            &[("keep.yml", "k"), ("x.yml", "x"), ("y.yml", "y")],
            "add y",
            "Bob",
        );
        commit(
            &repo,
            &[("keep.yml", "k"), ("y.yml", "y")],
            "cancel x\n\nDispatch-Reason: the window closed\n",
            "Cy",
        );
        let tip = commit(&repo, &[("keep.yml", "k")], "git rm y", "Dee");
        let blob = repo.blob(b"x").unwrap();
        let x = find(&repo, tip, "requests/x.yml", blob).unwrap();
        assert_eq!(x.by, "Cy <cy@example.org>");
        assert_eq!(x.reason, "the window closed");
        assert_eq!(x.arrival.map(|(c, _)| c), Some(added));
        assert_eq!(
            x.describe(),
            "cancelled by Cy <cy@example.org>: the window closed"
        );
        let y = find(&repo, tip, "requests/y.yml", repo.blob(b"y").unwrap()).unwrap();
        assert_eq!(
            (y.by.as_str(), y.reason.as_str()),
            ("Dee <dee@example.org>", "git rm y")
        );
        assert_eq!(y.commit, Some(tip));
        // A file the history never held: nobody known.
        let z = find(&repo, tip, "requests/z.yml", repo.blob(b"z").unwrap()).unwrap();
        assert_eq!((z.commit, z.arrival), (None, None));
    }
}
