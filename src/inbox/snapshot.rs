//! What the dispatcher knows of one commit's configuration: the compiled [`Catalog`] and the handlers
//! written out to disk so they can be executed.
//!
//! A snapshot is rebuilt only when `handlers/` or `schemas/` change, and the handlers folder on disk
//! lives as long as the snapshot or a job that still runs from it (it is removed when the last
//! reference goes), so a handler is never changed under a running request.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use git2::{ObjectType, Oid, Repository, Tree};

use crate::git::view::{DirView, HostHandlers, RepoView, TreeView};
use crate::inbox::router::{Catalog, INDEX_PATH, parse_index};

/// The `handlers/` tree of a commit, written to disk; removed on drop.
#[derive(Debug)]
pub(crate) struct HandlersDir {
    pub path: PathBuf,
    /// Whether the folder was written out by the dispatcher (and so is removed), or is the host's
    /// `--handlers-dir`.
    written: bool,
}

impl Drop for HandlersDir {
    fn drop(&mut self) {
        if self.written {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

pub(crate) struct Snapshot {
    /// The trees of `handlers/` and `schemas/` this snapshot was built from.
    pub trees: (Option<Oid>, Option<Oid>),
    pub catalog: Catalog,
    /// `None` when the commit has no `handlers/` folder.
    pub handlers: Option<Arc<HandlersDir>>,
    /// With the host's handlers: the kinds the commit's own index lists (an index that does not
    /// read lists none), left for dispatchers that define them. `None` otherwise.
    pub repo_kinds: Option<BTreeSet<String>>,
}

impl Snapshot {
    /// The trees a snapshot of `commit` depends on.
    pub(crate) fn trees_of(
        repo: &Repository,
        commit: Oid,
    ) -> Result<(Option<Oid>, Option<Oid>), git2::Error> {
        let tree = repo.find_commit(commit)?.tree()?;
        let id = |name| tree.get_name(name).map(|e| e.id());
        Ok((id("handlers"), id("schemas")))
    }

    /// Loads the configuration of `commit`; with `host_handlers`, the index and the handlers come
    /// from that folder instead of the commit's `handlers/`.
    pub(crate) fn load(
        repo: &Repository,
        commit: Oid,
        scratch: &Path,
        host_handlers: Option<&Path>,
    ) -> io::Result<Self> {
        let tree = repo
            .find_commit(commit)
            .and_then(|c| c.tree())
            .map_err(io::Error::other)?;
        let trees = Self::trees_of(repo, commit).map_err(io::Error::other)?;
        let view = TreeView { repo, tree, commit };
        if let Some(dir) = host_handlers {
            let repo_kinds = view
                .read(INDEX_PATH)
                .ok()
                .flatten()
                .and_then(|bytes| parse_index(&bytes).ok())
                .map(|index| index.kinds.into_keys().collect())
                .unwrap_or_default();
            let view = HostHandlers {
                dir: DirView {
                    root: dir.to_owned(),
                },
                rest: &view,
            };
            return Ok(Self {
                trees,
                catalog: Catalog::load(&view),
                handlers: Some(Arc::new(HandlersDir {
                    path: dir.to_owned(),
                    written: false,
                })),
                repo_kinds: Some(repo_kinds),
            });
        }
        let catalog = Catalog::load(&view);
        let handlers = match trees.0 {
            Some(oid) => {
                let path = scratch.join(format!("handlers-{oid}"));
                if path.exists() {
                    fs::remove_dir_all(&path)?;
                }
                let tree = repo.find_tree(oid).map_err(io::Error::other)?;
                write_tree(repo, &tree, &path)?;
                Some(Arc::new(HandlersDir {
                    path,
                    written: true,
                }))
            }
            None => None,
        };
        Ok(Self {
            trees,
            catalog,
            handlers,
            repo_kinds: None,
        })
    }
}

/// Writes regular files and folders; links and submodules are left out (a handler path through one
/// is refused by the router anyway).
fn write_tree(repo: &Repository, tree: &Tree<'_>, dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    for entry in tree {
        let Ok(name) = entry.name() else { continue };
        let path = dir.join(name);
        match (entry.kind(), entry.filemode()) {
            (Some(ObjectType::Tree), _) => {
                let sub = repo.find_tree(entry.id()).map_err(io::Error::other)?;
                write_tree(repo, &sub, &path)?;
            }
            (Some(ObjectType::Blob), mode @ (0o100644 | 0o100755 | 0o100664)) => {
                let blob = repo.find_blob(entry.id()).map_err(io::Error::other)?;
                fs::write(&path, blob.content())?;
                let mode = if mode == 0o100755 { 0o755 } else { 0o644 };
                fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
            }
            _ => {}
        }
    }
    Ok(())
}
