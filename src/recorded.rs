//! The keys that have an outcome at the local tip (`processed/KEY.status.json`), as a set.
//!
//! Every request's checks ask whether its id is used, and `processed/` grows without bound; parsing
//! that tree for each question would make the cost per request grow with the history. The set is
//! built once from the tree and kept in step: the dispatcher adds the keys it records itself, and it
//! is rebuilt only when `processed/` changed some other way (a fetch brought outcomes, a rebase).

use std::collections::HashSet;

use git2::{Oid, Repository};

use crate::outcome::PROCESSED;

#[derive(Default)]
pub(crate) struct Recorded {
    /// The `processed/` tree the set describes.
    tree: Option<Oid>,
    keys: HashSet<String>,
}

impl Recorded {
    /// Whether `key` has an outcome at `tip`.
    pub(crate) fn contains(&mut self, repo: &Repository, tip: Oid, key: &str) -> bool {
        let tree = processed_tree(repo, tip);
        if tree != self.tree {
            self.rebuild(repo, tree);
        }
        self.keys.contains(key)
    }

    /// `key` was just recorded at `tip` by this dispatcher: no need to read the tree again.
    pub(crate) fn add(&mut self, repo: &Repository, tip: Oid, key: &str) {
        self.keys.insert(key.to_owned());
        self.tree = processed_tree(repo, tip);
    }

    fn rebuild(&mut self, repo: &Repository, tree: Option<Oid>) {
        self.keys.clear();
        self.tree = tree;
        let Some(tree) = tree.and_then(|oid| repo.find_tree(oid).ok()) else {
            return;
        };
        for entry in &tree {
            if let Some(key) = entry
                .name()
                .ok()
                .and_then(|name| name.strip_suffix(".status.json"))
            {
                self.keys.insert(key.to_owned());
            }
        }
    }
}

fn processed_tree(repo: &Repository, tip: Oid) -> Option<Oid> {
    repo.find_commit(tip)
        .ok()?
        .tree()
        .ok()?
        .get_name(PROCESSED)
        .map(|e| e.id())
}
