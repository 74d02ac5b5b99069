//! Tree edits made on the bytes of the trees: a new tree is its base with entries cut out and new
//! ones spliced in, in Git's order.
//!
//! An outcome changes a handful of folders: it takes one entry out of `requests/` (a tree of up to
//! tens of kilobytes while a backlog waits) and adds a few under the shard folders of `processed/`
//! and `logs/`. libgit2's `git_tree_create_updated` parses every entry of each of those trees into
//! a tree builder, sorts them again and writes the new trees through the object database, which
//! first looks for each one in every backend and, not finding it, lists the pack folder again
//! (`git_odb__freshen`). On the 1000-request bench that was a quarter of the main thread's time.
//! Here a new tree costs a scan of its base, a copy and one hash, and it is stored where the caller
//! says. [`diff`] tells how a tree is made of another, entry by entry, which is what a delta needs.

use std::cmp::Ordering;

use git2::{FileMode, Oid};

/// One change to a tree.
#[derive(Debug, Clone)]
pub(crate) enum Edit {
    Upsert {
        path: String,
        oid: Oid,
        mode: FileMode,
    },
    Remove {
        path: String,
    },
}

/// The mode Git writes for a folder.
const TREE_MODE: u32 = 0o040000;
/// Bytes of a SHA-1 object id.
const OID_LEN: usize = 20;

/// A tree made by [`apply`], to be stored by the caller.
pub(crate) struct NewTree {
    pub oid: Oid,
    pub bytes: Vec<u8>,
    /// The tree it was made from; `None` for a folder that did not exist.
    pub base: Option<Oid>,
}

/// A run of a new tree's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Piece {
    /// `len` bytes of the base, from `start`.
    Copy { start: usize, len: usize },
    /// Bytes the base does not have.
    Insert(Vec<u8>),
}

/// Applies `edits` to the tree `base` (none: an empty tree) and returns the new root. `read` gives
/// the bytes of a tree; `store` receives every tree that changed, folders before the folder holding
/// them. Removing a path that is not there changes nothing (the goal is its absence); a folder left
/// empty is removed, as Git stores no empty folder. Paths must not nest in one another.
pub(crate) fn apply<R: AsRef<[u8]>>(
    base: Option<Oid>,
    edits: &[Edit],
    read: &mut dyn FnMut(Oid) -> Result<R, git2::Error>,
    store: &mut dyn FnMut(NewTree) -> Result<(), git2::Error>,
) -> Result<Oid, git2::Error> {
    let mut root = Node::default();
    for edit in edits {
        let (path, change) = match edit {
            Edit::Upsert { path, oid, mode } => (path, Change::Upsert(*oid, u32::from(*mode))),
            Edit::Remove { path } => (path, Change::Remove),
        };
        root.insert(path, change)?;
    }
    match edit_tree(base, &mut root.children, "", read, store)? {
        Some(oid) => Ok(oid),
        None => {
            let oid = tree_oid(&[]);
            store(NewTree {
                oid,
                bytes: Vec::new(),
                base: None,
            })?;
            Ok(oid)
        }
    }
}

enum Change {
    Upsert(Oid, u32),
    Remove,
}

/// The edits below one folder, by name.
#[derive(Default)]
struct Node<'e> {
    name: &'e str,
    change: Option<Change>,
    children: Vec<Node<'e>>,
}

impl<'e> Node<'e> {
    fn only_removes(&self) -> bool {
        match &self.change {
            Some(Change::Remove) => true,
            Some(Change::Upsert(..)) => false,
            None => self.children.iter().all(Node::only_removes),
        }
    }

    fn insert(&mut self, path: &'e str, change: Change) -> Result<(), git2::Error> {
        let nested =
            || git2::Error::from_str(&format!("tree edit: `{path}` nests in another edit"));
        let mut node = self;
        for name in path.split('/') {
            if name.is_empty() || name == "." || name == ".." {
                return Err(git2::Error::from_str(&format!(
                    "tree edit: `{path}` is not a path of a file in the repository"
                )));
            }
            if node.change.is_some() {
                return Err(nested());
            }
            let i = match node.children.iter().position(|c| c.name == name) {
                Some(i) => i,
                None => {
                    node.children.push(Node {
                        name,
                        ..Node::default()
                    });
                    node.children.len() - 1
                }
            };
            node = &mut node.children[i];
        }
        if !node.children.is_empty() {
            return Err(nested());
        }
        node.change = Some(change);
        Ok(())
    }
}

/// One entry of a tree's bytes.
struct Entry {
    /// Where the entry starts and ends in the tree's bytes.
    start: usize,
    end: usize,
    mode: u32,
    name: std::ops::Range<usize>,
}

impl Entry {
    fn is_tree(&self) -> bool {
        self.mode == TREE_MODE
    }

    fn oid(&self, bytes: &[u8]) -> Oid {
        Oid::from_bytes(&bytes[self.end - OID_LEN..self.end]).expect("20 bytes make an oid")
    }
}

/// Returns the new folder, or `None` when it is left empty.
fn edit_tree<R: AsRef<[u8]>>(
    base: Option<Oid>,
    children: &mut [Node<'_>],
    path: &str,
    read: &mut dyn FnMut(Oid) -> Result<R, git2::Error>,
    store: &mut dyn FnMut(NewTree) -> Result<(), git2::Error>,
) -> Result<Option<Oid>, git2::Error> {
    let base_bytes = base.map(&mut *read).transpose()?;
    let bytes = base_bytes.as_ref().map_or(&[][..], AsRef::as_ref);
    let entries = parse(bytes, path)?;
    let mut dropped = vec![false; entries.len()];
    let mut added: Vec<(Vec<u8>, bool)> = Vec::new();
    for child in children.iter_mut() {
        let name = child.name.as_bytes();
        let existing = entries.iter().position(|e| &bytes[e.name.clone()] == name);
        let new = match &child.change {
            Some(Change::Upsert(oid, mode)) => {
                // As libgit2: a file does not silently replace a folder, nor a folder a file.
                if let Some(e) = existing.map(|i| &entries[i])
                    && e.is_tree() != (*mode == TREE_MODE)
                {
                    return Err(git2::Error::from_str(&format!(
                        "tree edit: `{path}{}` is a {}, not a {}",
                        child.name,
                        if e.is_tree() { "folder" } else { "file" },
                        if e.is_tree() { "file" } else { "folder" },
                    )));
                }
                Some((*mode, *oid))
            }
            Some(Change::Remove) => None,
            None => {
                let child_path = format!("{path}{}/", child.name);
                let sub = match existing.map(|i| &entries[i]) {
                    Some(e) if e.is_tree() => Some(e.oid(bytes)),
                    // Removing what would be below a file: it is not there.
                    Some(_) if child.only_removes() => continue,
                    Some(_) => {
                        return Err(git2::Error::from_str(&format!(
                            "tree edit: `{}` is a file, not a folder",
                            child_path.trim_end_matches('/')
                        )));
                    }
                    None => None,
                };
                edit_tree(sub, &mut child.children, &child_path, read, store)?
                    .map(|oid| (TREE_MODE, oid))
            }
        };
        if let Some(i) = existing {
            if new == Some((entries[i].mode, entries[i].oid(bytes))) {
                continue;
            }
            dropped[i] = true;
        }
        if let Some((mode, oid)) = new {
            let mut entry = format!("{mode:o} {}\0", child.name).into_bytes();
            entry.extend_from_slice(oid.as_bytes());
            added.push((entry, mode == TREE_MODE));
        }
    }
    if added.is_empty() && !dropped.contains(&true) {
        return Ok(base);
    }
    added.sort_by(|a, b| git_order(entry_name(&a.0), a.1, entry_name(&b.0), b.1));

    let mut out = Vec::with_capacity(bytes.len() + added.iter().map(|a| a.0.len()).sum::<usize>());
    let mut added = added.into_iter().peekable();
    for (entry, dropped) in entries.iter().zip(dropped) {
        if dropped {
            continue;
        }
        let name = &bytes[entry.name.clone()];
        while let Some((new, _)) = added.next_if(|(new, is_tree)| {
            git_order(entry_name(new), *is_tree, name, entry.is_tree()) == Ordering::Less
        }) {
            out.extend_from_slice(&new);
        }
        out.extend_from_slice(&bytes[entry.start..entry.end]);
    }
    for (new, _) in added {
        out.extend_from_slice(&new);
    }
    if out.is_empty() {
        return Ok(None);
    }
    let oid = tree_oid(&out);
    store(NewTree {
        oid,
        bytes: out,
        base,
    })?;
    Ok(Some(oid))
}

/// A tree with its entries found once, for [`diff`]s against it (a delta base serves many).
pub(crate) struct Parsed {
    pub bytes: Vec<u8>,
    entries: Vec<Entry>,
}

impl Parsed {
    pub(crate) fn new(bytes: Vec<u8>) -> Result<Self, git2::Error> {
        let entries = parse(&bytes, "(delta base)")?;
        Ok(Self { bytes, entries })
    }
}

/// How `new` is made of `base`, both trees: runs of `base`'s bytes for the entries both hold, the
/// bytes of the others. One walk over each, as both are in Git's order.
pub(crate) fn diff(base: &Parsed, new: &[u8]) -> Result<Vec<Piece>, git2::Error> {
    let (old, base) = (&base.entries, &base.bytes);
    let mut pieces: Vec<Piece> = Vec::new();
    let mut i = 0;
    for entry in parse(new, "(delta target)")? {
        let bytes = &new[entry.start..entry.end];
        let name = &new[entry.name.clone()];
        while old.get(i).is_some_and(|o| {
            git_order(&base[o.name.clone()], o.is_tree(), name, entry.is_tree()) == Ordering::Less
        }) {
            i += 1;
        }
        match (old.get(i), pieces.last_mut()) {
            (Some(o), last) if &base[o.start..o.end] == bytes => {
                i += 1;
                match last {
                    Some(Piece::Copy { start, len }) if *start + *len == o.start => {
                        *len += o.end - o.start;
                    }
                    _ => pieces.push(Piece::Copy {
                        start: o.start,
                        len: o.end - o.start,
                    }),
                }
            }
            (_, Some(Piece::Insert(run))) => run.extend_from_slice(bytes),
            _ => pieces.push(Piece::Insert(bytes.to_vec())),
        }
    }
    Ok(pieces)
}

/// A tree's id: the SHA-1 of `tree <length>\0` and its bytes, by OpenSSL (linked already, for
/// HTTPS), which uses the processor's SHA-1 instructions: 45 KB took 120 µs with libgit2's hash
/// with collision detection and 33 µs here (200 rounds, warm), and `requests/` is that large with
/// 1000 requests queued. A tree's bytes are names the dispatcher checked and ids, leaving no room
/// for the blocks a collision needs; blobs, whose bytes handlers choose, are still hashed by
/// libgit2.
fn tree_oid(bytes: &[u8]) -> Oid {
    let mut hasher = openssl::sha::Sha1::new();
    hasher.update(format!("tree {}\0", bytes.len()).as_bytes());
    hasher.update(bytes);
    Oid::from_bytes(&hasher.finish()).expect("a SHA-1 is 20 bytes")
}

/// The name in an entry's bytes (`mode name\0oid`).
fn entry_name(entry: &[u8]) -> &[u8] {
    let space = entry.iter().position(|&b| b == b' ').unwrap_or(0);
    let nul = entry.len() - OID_LEN - 1;
    &entry[space + 1..nul]
}

/// Git's order of tree entries: by name, a folder's name as if it ended in `/`.
fn git_order(a: &[u8], a_tree: bool, b: &[u8], b_tree: bool) -> Ordering {
    let n = a.len().min(b.len());
    a[..n].cmp(&b[..n]).then_with(|| {
        let end =
            |name: &[u8], tree: bool| name.get(n).copied().unwrap_or(if tree { b'/' } else { 0 });
        end(a, a_tree).cmp(&end(b, b_tree))
    })
}

fn parse(bytes: &[u8], path: &str) -> Result<Vec<Entry>, git2::Error> {
    let corrupt = || git2::Error::from_str(&format!("tree edit: the tree at `/{path}` is corrupt"));
    let mut entries = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        // The mode: octal digits up to a space (at most 7 of them in a valid tree).
        let mut mode = 0u32;
        let mut space = 0;
        loop {
            match rest.get(space) {
                Some(b' ') if space > 0 => break,
                Some(&digit @ b'0'..=b'7') if space < 7 => {
                    mode = mode * 8 + u32::from(digit - b'0')
                }
                _ => return Err(corrupt()),
            }
            space += 1;
        }
        let nul = space
            + rest[space..]
                .iter()
                .position(|&b| b == 0)
                .ok_or_else(corrupt)?;
        if nul + 1 + OID_LEN > rest.len() {
            return Err(corrupt());
        }
        let end = pos + nul + 1 + OID_LEN;
        entries.push(Entry {
            start: pos,
            end,
            mode,
            name: pos + space + 1..pos + nul,
        });
        pos = end;
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use git2::build::TreeUpdateBuilder;
    use git2::{FileMode, ObjectType, Repository};

    use super::*;

    /// What `pieces` make of `base`.
    fn rebuild(base: &[u8], pieces: &[Piece]) -> Vec<u8> {
        let mut rebuilt = Vec::new();
        for piece in pieces {
            match piece {
                Piece::Copy { start, len } => rebuilt.extend_from_slice(&base[*start..start + len]),
                Piece::Insert(bytes) => rebuilt.extend_from_slice(bytes),
            }
        }
        rebuilt
    }

    /// Applies `edits` to `base` both here and with libgit2's `git_tree_create_updated`, checks that
    /// the two agree and that [`diff`] against its base rebuilds every new tree, and returns the new
    /// root.
    fn both(repo: &Repository, base: Oid, edits: &[Edit]) -> Oid {
        let odb = repo.odb().unwrap();
        let mut stored = HashMap::new();
        let ours = apply(
            Some(base),
            edits,
            &mut |oid| Ok(odb.read(oid)?.data().to_vec()),
            &mut |tree| {
                let base = tree
                    .base
                    .map(|b| odb.read(b).unwrap().data().to_vec())
                    .unwrap_or_default();
                let pieces = diff(&Parsed::new(base.clone()).unwrap(), &tree.bytes).unwrap();
                assert_eq!(rebuild(&base, &pieces), tree.bytes, "diff for {}", tree.oid);
                odb.write(ObjectType::Tree, &tree.bytes)?;
                stored.insert(tree.oid, tree.bytes);
                Ok(())
            },
        )
        .unwrap();
        // libgit2 refuses to remove what is not there, which the dispatcher's callers allow.
        let base = repo.find_tree(base).unwrap();
        let mut builder = TreeUpdateBuilder::new();
        for edit in edits {
            match edit {
                Edit::Upsert { path, oid, mode } => {
                    builder.upsert(path.as_str(), *oid, *mode);
                }
                Edit::Remove { path } if base.get_path(std::path::Path::new(path)).is_ok() => {
                    builder.remove(path.as_str());
                }
                Edit::Remove { .. } => {}
            }
        }
        let theirs = builder.create_updated(repo, &base).unwrap();
        assert_eq!(ours, theirs, "edits {edits:?}");
        ours
    }

    fn upsert(path: &str, oid: Oid) -> Edit {
        Edit::Upsert {
            path: path.to_owned(),
            oid,
            mode: FileMode::Blob,
        }
    }

    fn remove(path: &str) -> Edit {
        Edit::Remove {
            path: path.to_owned(),
        }
    }

    #[test]
    fn edits_match_libgit2_in_git_order_and_diffs_rebuild_each_tree() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let blob = repo.blob(b"one\n").unwrap();
        let other = repo.blob(b"two\n").unwrap();
        let empty = repo.treebuilder(None).unwrap().write().unwrap();
        // Names that sort differently as a file and as a folder: `a` < `a.b` < `a/` as Git orders.
        let first = both(
            &repo,
            empty,
            &[
                upsert("a.b", blob),
                upsert("a/x", blob),
                upsert("a-", blob),
                upsert("requests/r-2.yml", blob),
                upsert("requests/r-1.yml", blob),
                upsert("requests/r-3.yml", blob),
                upsert("processed/f/0/1/k.yml", blob),
            ],
        );
        let mut root = first;
        for edits in [
            // An outcome: one request leaves, its files go to shard folders old and new.
            vec![
                remove("requests/r-2.yml"),
                upsert("processed/f/0/1/r-2.yml", blob),
                upsert("processed/9/e/c/r-2.status.json", other),
                upsert("logs/9/e/c/r-2.log", other),
            ],
            // Replacing a file with another blob, and a file becoming executable.
            vec![
                upsert("a.b", other),
                Edit::Upsert {
                    path: "a-".to_owned(),
                    oid: blob,
                    mode: FileMode::BlobExecutable,
                },
            ],
            // Removing what is not there changes nothing; an upsert of the same blob neither.
            vec![remove("requests/nothing.yml"), upsert("a/x", blob)],
            // A folder left empty goes, and its parents with it.
            vec![
                remove("processed/f/0/1/k.yml"),
                remove("processed/f/0/1/r-2.yml"),
            ],
            // A whole folder removed at once.
            vec![remove("a")],
        ] {
            root = both(&repo, root, &edits);
        }
        let names: Vec<String> = repo
            .find_tree(root)
            .unwrap()
            .iter()
            .map(|e| e.name().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["a-", "a.b", "logs", "processed", "requests"]);
        // A tree against one several versions older, as the packs store them: shared runs are
        // copied, the rest inserted.
        let requests = |root: Oid| {
            let id = repo
                .find_tree(root)
                .unwrap()
                .get_name("requests")
                .unwrap()
                .id();
            repo.odb().unwrap().read(id).unwrap().data().to_vec()
        };
        let (old, new) = (requests(first), requests(root));
        let pieces = diff(&Parsed::new(old.clone()).unwrap(), &new).unwrap();
        assert_eq!(rebuild(&old, &pieces), new);
        assert!(
            pieces.iter().any(|p| matches!(p, Piece::Copy { .. })),
            "{pieces:?}"
        );
        // Everything removed: the empty tree.
        let all: Vec<Edit> = names.iter().map(|n| remove(n)).collect();
        assert_eq!(both(&repo, root, &all), empty);
    }

    #[test]
    fn a_file_in_the_way_of_a_folder_and_nested_edits_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let blob = repo.blob(b"one\n").unwrap();
        let root = both(
            &repo,
            repo.treebuilder(None).unwrap().write().unwrap(),
            &[upsert("logs", blob), upsert("dir/x", blob)],
        );
        let odb = repo.odb().unwrap();
        let run = |edits: &[Edit]| {
            apply(
                Some(root),
                edits,
                &mut |oid| Ok(odb.read(oid)?.data().to_vec()),
                &mut |_| Ok(()),
            )
            .unwrap_err()
            .message()
            .to_owned()
        };
        assert_eq!(
            run(&[upsert("logs/a/b.log", blob)]),
            "tree edit: `logs` is a file, not a folder"
        );
        assert_eq!(
            run(&[Edit::Upsert {
                path: "logs".to_owned(),
                oid: repo.treebuilder(None).unwrap().write().unwrap(),
                mode: FileMode::Tree,
            }]),
            "tree edit: `logs` is a file, not a folder"
        );
        assert_eq!(
            run(&[upsert("dir", blob)]),
            "tree edit: `dir` is a folder, not a file"
        );
        // Removing what would be below a file changes nothing.
        let unchanged = apply(
            Some(root),
            &[remove("logs/a/b.log")],
            &mut |oid| Ok(odb.read(oid)?.data().to_vec()),
            &mut |_| Ok(()),
        );
        assert_eq!(unchanged.unwrap(), root);
        assert_eq!(
            run(&[upsert("x/y", blob), remove("x")]),
            "tree edit: `x` nests in another edit"
        );
        assert_eq!(
            run(&[upsert("x//y", blob)]),
            "tree edit: `x//y` is not a path of a file in the repository"
        );
    }
}
