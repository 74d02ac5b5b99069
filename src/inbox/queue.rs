//! The inbox: the entries of `requests/` at a commit, in arrival order.
//!
//! A request arrives with the first commit on the branch's first-parent history whose `requests/`
//! holds it (the same name with the same blob) while that commit's first parent does not. Order is
//! that commit's time; commits of the same second in their order on the first-parent chain; ties
//! (one commit adding several requests) by name. Arrivals are cached by name and blob, so the history
//! is walked once per request, not once per look at the inbox; only `requests/` is read, never
//! `processed/` or `logs/`, so the cost does not grow with the number of recorded outcomes. The last
//! listing is kept too: when `requests/` only lost entries since (what an outcome does), they are
//! taken out of it, which spares sorting a long backlog again after every request.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use git2::{Commit, Oid, Repository, Tree};

use crate::git::view::{EntryType, entry_type};
use crate::inbox::request::{INBOX, is_left_alone};

/// The commit a request arrived with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Arrival {
    pub commit: Oid,
    /// Committer time, seconds since the epoch.
    pub time: i64,
}

/// One entry of `requests/`.
#[derive(Debug, Clone)]
pub(crate) struct InboxEntry {
    pub name: String,
    /// `requests/<name>`.
    pub path: String,
    pub kind: EntryType,
    pub oid: Oid,
    pub arrival: Arrival,
}

#[derive(Default)]
pub(crate) struct Inbox {
    /// Arrival of each (name, blob) seen in the inbox; pruned to what the inbox holds now.
    arrivals: HashMap<(String, Oid), Arrival>,
    /// Distance from the root along first parents, of arrival commits whose order was needed.
    generations: HashMap<Oid, u64>,
    /// The last listing, and the `requests/` tree it lists.
    last: Option<(Oid, Rc<Vec<InboxEntry>>)>,
}

impl Inbox {
    /// The entries of `requests/` at `tip`, oldest arrival first; dotfiles not named like requests
    /// (`.gitkeep`) are left out.
    pub(crate) fn list(
        &mut self,
        repo: &Repository,
        tip: Oid,
    ) -> Result<Rc<Vec<InboxEntry>>, git2::Error> {
        let commit = repo.find_commit(tip)?;
        let Some(tree_id) = requests_tree_id(&commit)? else {
            self.arrivals.clear();
            self.last = None;
            return Ok(Rc::default());
        };
        if let Some((listed, entries)) = &self.last
            && *listed == tree_id
        {
            return Ok(Rc::clone(entries));
        }
        let tree = repo.find_tree(tree_id)?;
        if let Some((listed, _)) = &self.last
            && let Some(gone) = only_removed(&repo.find_tree(*listed)?, &tree)
        {
            let gone: HashSet<(&str, Oid)> = gone.iter().map(|(n, o)| (n.as_str(), *o)).collect();
            self.take_out(tree_id, |e| gone.contains(&(e.name.as_str(), e.oid)));
            return Ok(Rc::clone(&self.last.as_ref().expect("listed above").1));
        }
        let present: Vec<(String, Oid, EntryType)> = tree
            .iter()
            .filter_map(|e| {
                let name = String::from_utf8_lossy(e.name_bytes()).into_owned();
                (!is_left_alone(&name)).then(|| (name, e.id(), entry_type(e.filemode(), e.kind())))
            })
            .collect();
        let pending: Vec<(String, Oid)> = present
            .iter()
            .filter(|(name, oid, _)| !self.arrivals.contains_key(&(name.clone(), *oid)))
            .map(|(name, oid, _)| (name.clone(), *oid))
            .collect();
        if !pending.is_empty() {
            self.resolve(repo, commit, pending)?;
        }
        let keep: std::collections::HashSet<(&str, Oid)> =
            present.iter().map(|(n, o, _)| (n.as_str(), *o)).collect();
        self.arrivals
            .retain(|(name, oid), _| keep.contains(&(name.as_str(), *oid)));
        let mut entries: Vec<InboxEntry> = present
            .into_iter()
            .map(|(name, oid, kind)| {
                let arrival = self.arrivals[&(name.clone(), oid)];
                InboxEntry {
                    path: format!("{INBOX}/{name}"),
                    name,
                    kind,
                    oid,
                    arrival,
                }
            })
            .collect();
        entries.sort_by(|a, b| (a.arrival.time, &a.name).cmp(&(b.arrival.time, &b.name)));
        self.order_same_second(repo, &mut entries)?;
        let entries = Rc::new(entries);
        self.last = Some((tree.id(), Rc::clone(&entries)));
        Ok(entries)
    }

    /// Notes that `commit`, made by this dispatcher on `parent`, took the entry at `path` out of
    /// `requests/` and changed nothing else there (an outcome commit): the kept listing follows, so
    /// that the next [`Inbox::list`] reads neither folder. Reading and comparing them took about a
    /// tenth of the main thread's time on the 1000-request benchmark, whose folder holds 40 KB of
    /// entries at first. Nothing changes when the listing is of another tree than `parent`'s.
    pub(crate) fn taken_out(
        &mut self,
        repo: &Repository,
        parent: Oid,
        commit: Oid,
        path: &str,
    ) -> Result<(), git2::Error> {
        let Some((listed, _)) = &self.last else {
            return Ok(());
        };
        if requests_tree_id(&repo.find_commit(parent)?)? != Some(*listed) {
            return Ok(());
        }
        match requests_tree_id(&repo.find_commit(commit)?)? {
            Some(after) => self.take_out(after, |e| e.path == path),
            None => {
                self.arrivals.clear();
                self.last = None;
            }
        }
        Ok(())
    }

    /// Takes the entries `gone` picks out of the kept listing, which becomes that of `tree`.
    fn take_out(&mut self, tree: Oid, gone: impl Fn(&InboxEntry) -> bool) {
        let Some((listed, entries)) = &mut self.last else {
            return;
        };
        Rc::make_mut(entries).retain(|e| {
            if gone(e) {
                self.arrivals.remove(&(e.name.clone(), e.oid));
                return false;
            }
            true
        });
        *listed = tree;
    }

    /// Commit times have a resolution of one second: requests that arrived in different commits of
    /// the same second are put in the order of those commits in the history.
    fn order_same_second(
        &mut self,
        repo: &Repository,
        entries: &mut [InboxEntry],
    ) -> Result<(), git2::Error> {
        let mut start = 0;
        while start < entries.len() {
            let time = entries[start].arrival.time;
            let end = start
                + entries[start..]
                    .iter()
                    .take_while(|e| e.arrival.time == time)
                    .count();
            let group = &mut entries[start..end];
            if group
                .iter()
                .any(|e| e.arrival.commit != group[0].arrival.commit)
            {
                for entry in group.iter() {
                    self.generation(repo, entry.arrival.commit)?;
                }
                group.sort_by(|a, b| {
                    (self.generations[&a.arrival.commit], &a.name)
                        .cmp(&(self.generations[&b.arrival.commit], &b.name))
                });
            }
            start = end;
        }
        Ok(())
    }

    /// The first-parent distance of `oid` from the root, memoised.
    fn generation(&mut self, repo: &Repository, oid: Oid) -> Result<u64, git2::Error> {
        let mut chain = Vec::new();
        let mut next = Some(oid);
        let mut base = 0;
        while let Some(oid) = next {
            if let Some(g) = self.generations.get(&oid) {
                base = *g + 1;
                break;
            }
            chain.push(oid);
            next = repo.find_commit(oid)?.parent_id(0).ok();
        }
        for (i, oid) in chain.iter().rev().enumerate() {
            self.generations.insert(*oid, base + i as u64);
        }
        Ok(self.generations[&oid])
    }

    /// Walks the first-parent history from `commit` until every pending entry's arrival is found.
    fn resolve(
        &mut self,
        repo: &Repository,
        mut commit: Commit<'_>,
        mut pending: Vec<(String, Oid)>,
    ) -> Result<(), git2::Error> {
        let mut here = requests_tree(repo, &commit)?;
        loop {
            let parent = commit.parent(0).ok();
            let there = match &parent {
                Some(p) => requests_tree(repo, p)?,
                None => None,
            };
            let arrival = Arrival {
                commit: commit.id(),
                time: commit.time().seconds(),
            };
            if here.as_ref().map(Tree::id) != there.as_ref().map(Tree::id) {
                pending.retain(|(name, oid)| {
                    let in_parent = there
                        .as_ref()
                        .and_then(|t| t.get_name(name).map(|e| e.id()))
                        == Some(*oid);
                    if !in_parent {
                        self.arrivals.insert((name.clone(), *oid), arrival);
                    }
                    in_parent
                });
            }
            match parent {
                Some(p) if !pending.is_empty() => {
                    commit = p;
                    here = there;
                }
                _ => {
                    for key in pending {
                        self.arrivals.insert(key, arrival);
                    }
                    return Ok(());
                }
            }
        }
    }
}

/// The entries (name and blob) `old` has and `new` does not, when that is all that changed: `None`
/// when `new` has an entry `old` does not have, or the same name with another blob or mode. Both are
/// in Git's order, so one walk over each tells.
fn only_removed(old: &Tree<'_>, new: &Tree<'_>) -> Option<Vec<(String, Oid)>> {
    let mut gone = Vec::new();
    let mut next = new.iter().peekable();
    for entry in old.iter() {
        match next.peek() {
            Some(kept) if kept.name_bytes() == entry.name_bytes() => {
                if kept.id() != entry.id() || kept.filemode() != entry.filemode() {
                    return None;
                }
                next.next();
            }
            _ => gone.push((
                String::from_utf8_lossy(entry.name_bytes()).into_owned(),
                entry.id(),
            )),
        }
    }
    next.peek().is_none().then_some(gone)
}

fn requests_tree<'r>(
    repo: &'r Repository,
    commit: &Commit<'r>,
) -> Result<Option<Tree<'r>>, git2::Error> {
    requests_tree_id(commit)?
        .map(|id| repo.find_tree(id))
        .transpose()
}

/// The id of `requests/` at `commit`, without reading the folder.
fn requests_tree_id(commit: &Commit<'_>) -> Result<Option<Oid>, git2::Error> {
    let tree = commit.tree()?;
    Ok(tree
        .get_name(INBOX)
        .filter(|entry| entry.kind() == Some(git2::ObjectType::Tree))
        .map(|entry| entry.id()))
}

#[cfg(test)]
mod tests {
    use git2::{Repository, Signature, Time};

    use super::*;

    /// Commits `requests/` holding `names` (each with its own content, `name@version`) at `time`.
    fn commit_inbox(repo: &Repository, names: &[(&str, u32)], time: i64) -> Oid {
        let mut requests = repo.treebuilder(None).unwrap();
        for (name, version) in names {
            let blob = repo.blob(format!("{name}@{version}").as_bytes()).unwrap();
            requests.insert(name, blob, 0o100644).unwrap();
        }
        let mut root = repo.treebuilder(None).unwrap();
        root.insert(INBOX, requests.write().unwrap(), 0o040000)
            .unwrap();
        let tree = repo.find_tree(root.write().unwrap()).unwrap();
        let signature = Signature::new("t", "t@example.org", &Time::new(time, 0)).unwrap();
        let parents: Vec<_> = repo
            .head()
            .ok()
            .and_then(|h| h.target())
            .map(|oid| repo.find_commit(oid).unwrap())
            .into_iter()
            .collect();
        let parents: Vec<_> = parents.iter().collect();
        repo.commit(
            Some("HEAD"),
            &signature,
            &signature,
            "inbox",
            &tree,
            &parents,
        )
        .unwrap()
    }

    fn names(entries: &[InboxEntry]) -> Vec<(String, Oid, i64)> {
        entries
            .iter()
            .map(|e| (e.name.clone(), e.oid, e.arrival.time))
            .collect()
    }

    #[test]
    fn a_listing_kept_across_commits_is_the_listing_made_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let mut kept = Inbox::default();
        let mut check = |tip: Oid, expected: &[&str]| {
            let listed = kept.list(&repo, tip).unwrap();
            let fresh = Inbox::default().list(&repo, tip).unwrap();
            assert_eq!(names(&listed), names(&fresh));
            let order: Vec<&str> = listed.iter().map(|e| e.name.as_str()).collect();
            assert_eq!(order, expected);
        };
        // Two commits in the same second, then a later one: arrival order, not name order.
        commit_inbox(&repo, &[("b.yml", 1), ("d.yml", 1)], 100);
        commit_inbox(&repo, &[("b.yml", 1), ("d.yml", 1), ("a.yml", 1)], 100);
        let tip = commit_inbox(
            &repo,
            &[("b.yml", 1), ("d.yml", 1), ("a.yml", 1), ("c.yml", 1)],
            200,
        );
        check(tip, &["b.yml", "d.yml", "a.yml", "c.yml"]);
        // Requests leave: the kept listing loses them.
        let tip = commit_inbox(&repo, &[("d.yml", 1), ("a.yml", 1), ("c.yml", 1)], 300);
        check(tip, &["d.yml", "a.yml", "c.yml"]);
        let tip = commit_inbox(&repo, &[("a.yml", 1)], 301);
        check(tip, &["a.yml"]);
        // One arrives and one is replaced by another blob: listed afresh.
        let tip = commit_inbox(&repo, &[("a.yml", 2), ("e.yml", 1)], 400);
        check(tip, &["a.yml", "e.yml"]);
        let tip = commit_inbox(&repo, &[("e.yml", 1)], 401);
        check(tip, &["e.yml"]);
        let tip = commit_inbox(&repo, &[], 500);
        check(tip, &[]);
    }

    #[test]
    fn a_listing_told_of_an_outcome_commit_follows_it_without_listing_again() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let mut kept = Inbox::default();
        let requests_at = |tip: Oid| requests_tree_id(&repo.find_commit(tip).unwrap()).unwrap();
        commit_inbox(&repo, &[("a.yml", 1), ("b.yml", 1)], 100);
        let first = commit_inbox(&repo, &[("a.yml", 1), ("b.yml", 1), ("c.yml", 1)], 200);
        kept.list(&repo, first).unwrap();
        // An outcome commit takes `b.yml` out: the listing is of its tree before it is asked for.
        let second = commit_inbox(&repo, &[("a.yml", 1), ("c.yml", 1)], 300);
        kept.taken_out(&repo, first, second, "requests/b.yml")
            .unwrap();
        assert_eq!(kept.last.as_ref().unwrap().0, requests_at(second).unwrap());
        assert!(
            !kept
                .arrivals
                .contains_key(&("b.yml".to_owned(), { repo.blob(b"b.yml@1").unwrap() }))
        );
        let listed = kept.list(&repo, second).unwrap();
        let fresh = Inbox::default().list(&repo, second).unwrap();
        assert_eq!(names(&listed), names(&fresh));
        assert_eq!(names(&listed).len(), 2);
        // Told of a commit on another parent than the listed tree's: nothing changes.
        let third = commit_inbox(&repo, &[("c.yml", 1), ("d.yml", 1)], 400);
        let fourth = commit_inbox(&repo, &[("d.yml", 1)], 500);
        kept.taken_out(&repo, third, fourth, "requests/c.yml")
            .unwrap();
        assert_eq!(kept.last.as_ref().unwrap().0, requests_at(second).unwrap());
        let listed = kept.list(&repo, fourth).unwrap();
        assert_eq!(
            names(&listed),
            names(&Inbox::default().list(&repo, fourth).unwrap())
        );
        // The last request taken out: the folder goes, and so does the listing.
        let empty = repo
            .find_tree(repo.treebuilder(None).unwrap().write().unwrap())
            .unwrap();
        let signature = Signature::new("t", "t@example.org", &Time::new(600, 0)).unwrap();
        let parent = repo.find_commit(fourth).unwrap();
        let fifth = repo
            .commit(
                Some("HEAD"),
                &signature,
                &signature,
                "out",
                &empty,
                &[&parent],
            )
            .unwrap();
        kept.taken_out(&repo, fourth, fifth, "requests/d.yml")
            .unwrap();
        assert!(kept.last.is_none());
        assert!(kept.list(&repo, fifth).unwrap().is_empty());
    }
}
