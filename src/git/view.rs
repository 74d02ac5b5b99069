//! A read-only view of an inbox repository: the tree of a fetched commit (what `run` sees) or a working
//! tree on disk (what `validate` sees). Both answer the same two questions, so the checks that use them
//! give the same verdicts and the same messages.
//!
//! Paths are relative and `/`-separated. Neither view follows symbolic links: a path that passes
//! through one is reported as such, never resolved.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use git2::{ObjectType, Oid, Repository, Tree};

/// What kind of thing stands at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryType {
    File {
        executable: bool,
    },
    Symlink,
    Dir,
    /// A Git submodule (gitlink), or on disk anything that is neither file, link nor folder.
    Other,
}

impl EntryType {
    /// The type of a file on disk, from its `symlink_metadata` (links are not followed).
    pub(crate) fn of(meta: &fs::Metadata) -> Self {
        let ft = meta.file_type();
        if ft.is_symlink() {
            EntryType::Symlink
        } else if ft.is_dir() {
            EntryType::Dir
        } else if ft.is_file() {
            EntryType::File {
                executable: meta.permissions().mode() & 0o111 != 0,
            }
        } else {
            EntryType::Other
        }
    }

    pub(crate) fn describe(self) -> &'static str {
        match self {
            EntryType::File { .. } => "a regular file",
            EntryType::Symlink => "a symbolic link",
            EntryType::Dir => "a folder",
            EntryType::Other => "neither a file nor a folder",
        }
    }
}

pub(crate) trait RepoView {
    /// The type of the entry at `path`, without following links; `None` when nothing is there or a
    /// parent is not a folder.
    fn entry(&self, path: &str) -> io::Result<Option<EntryType>>;

    /// The bytes of the regular file at `path`; `None` when it is absent or not a regular file.
    fn read(&self, path: &str) -> io::Result<Option<Vec<u8>>>;

    /// The Git object id of the file at `path`, where the view is a commit.
    fn oid(&self, path: &str) -> Option<Oid>;

    /// What this view shows, for messages: `commit 1a2b3c4` or `/srv/inbox`.
    fn describe(&self) -> String;

    /// Whether `path` exists, whatever it is.
    fn exists(&self, path: &str) -> io::Result<bool> {
        Ok(self.entry(path)?.is_some())
    }

    /// Checks each component of `path` in turn: every parent must be a real folder. Returns the type of
    /// the last component, or the first component that is a link or not a folder, as an error text.
    fn walk(&self, path: &str) -> Result<EntryType, String> {
        let mut prefix = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            let kind = self
                .entry(&prefix)
                .map_err(|e| format!("`{prefix}` could not be read: {e}"))?
                .ok_or_else(|| format!("`{prefix}` does not exist"))?;
            let last = i + 1 == parts.len();
            match kind {
                EntryType::Dir if !last => {}
                _ if last => return Ok(kind),
                other => return Err(format!("`{prefix}` is {}, not a folder", other.describe())),
            }
        }
        Err("empty path".to_owned())
    }
}

/// The tree of one commit.
pub(crate) struct TreeView<'r> {
    pub repo: &'r Repository,
    pub tree: Tree<'r>,
    pub commit: Oid,
}

impl TreeView<'_> {
    fn tree_entry(&self, path: &str) -> Option<git2::TreeEntry<'static>> {
        self.tree.get_path(Path::new(path)).ok()
    }
}

pub(crate) fn entry_type(mode: i32, kind: Option<ObjectType>) -> EntryType {
    match (mode, kind) {
        (0o040000, _) => EntryType::Dir,
        (0o120000, _) => EntryType::Symlink,
        (0o100755, _) => EntryType::File { executable: true },
        (0o100644 | 0o100664, _) => EntryType::File { executable: false },
        _ => EntryType::Other,
    }
}

impl RepoView for TreeView<'_> {
    fn entry(&self, path: &str) -> io::Result<Option<EntryType>> {
        Ok(self
            .tree_entry(path)
            .map(|e| entry_type(e.filemode(), e.kind())))
    }

    fn read(&self, path: &str) -> io::Result<Option<Vec<u8>>> {
        let Some(entry) = self.tree_entry(path) else {
            return Ok(None);
        };
        if !matches!(
            entry_type(entry.filemode(), entry.kind()),
            EntryType::File { .. }
        ) {
            return Ok(None);
        }
        let blob = self.repo.find_blob(entry.id()).map_err(io::Error::other)?;
        Ok(Some(blob.content().to_vec()))
    }

    fn oid(&self, path: &str) -> Option<Oid> {
        self.tree_entry(path).map(|e| e.id())
    }

    fn describe(&self) -> String {
        format!("commit {}", short(self.commit))
    }
}

/// A working tree on disk.
pub(crate) struct DirView {
    pub root: PathBuf,
}

impl RepoView for DirView {
    fn entry(&self, path: &str) -> io::Result<Option<EntryType>> {
        match fs::symlink_metadata(self.root.join(path)) {
            Ok(meta) => Ok(Some(EntryType::of(&meta))),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn read(&self, path: &str) -> io::Result<Option<Vec<u8>>> {
        match self.walk(path) {
            Ok(EntryType::File { .. }) => fs::read(self.root.join(path)).map(Some),
            _ => Ok(None),
        }
    }

    fn oid(&self, _path: &str) -> Option<Oid> {
        None
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }
}

/// A commit's view with `handlers/` replaced by a folder on the host (`run --handlers-dir`).
pub(crate) struct HostHandlers<'a> {
    pub dir: DirView,
    pub rest: &'a dyn RepoView,
}

impl HostHandlers<'_> {
    /// The path inside the host folder, for a path under `handlers/`.
    fn on_host(path: &str) -> Option<&str> {
        path.strip_prefix("handlers/")
            .or_else(|| (path == "handlers").then_some("."))
    }
}

impl RepoView for HostHandlers<'_> {
    fn entry(&self, path: &str) -> io::Result<Option<EntryType>> {
        match Self::on_host(path) {
            Some(p) => self.dir.entry(p),
            None => self.rest.entry(path),
        }
    }

    fn read(&self, path: &str) -> io::Result<Option<Vec<u8>>> {
        match Self::on_host(path) {
            Some(p) => self.dir.read(p),
            None => self.rest.read(path),
        }
    }

    fn oid(&self, path: &str) -> Option<Oid> {
        match Self::on_host(path) {
            Some(_) => None,
            None => self.rest.oid(path),
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} with handlers from `{}`",
            self.rest.describe(),
            self.dir.describe()
        )
    }
}

/// The seven-character abbreviation Git shows.
pub(crate) fn short(oid: Oid) -> String {
    let mut s = oid.to_string();
    s.truncate(7);
    s
}
