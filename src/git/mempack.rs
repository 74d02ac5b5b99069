//! libgit2's in-memory object store (the mempack backend), written to directly: the one place of the
//! Git layer that reaches into a C struct by hand.
//!
//! In: objects (id, type, bytes), which the repository's object database then finds here first (the
//! backend sits above the loose and pack ones). Out: nothing but [`MemoryStore::reset`], which drops
//! them all once [`crate::git::staging::Staging`] has written them out as a pack.
//!
//! Why by hand: `git_odb_write` would first look for a new object in every backend and, as it is in
//! none, list the pack folder again for each one (`git_odb__freshen`), a tenth of the main thread's
//! time; git2 offers no write to one backend, so the backend's own `write` is called through the
//! head of libgit2's `git_odb_backend`, whose layout [`MemoryStore::attach`] checks.
//!
//! The invariant: a `MemoryStore` is used only while the repository it was attached to lives (its
//! object database owns and frees the backend); `Sync` replaces the two together.

use git2::{Binding, ObjectType, Oid, Repository};

/// The mempack backend of one repository's object database.
pub(crate) struct MemoryStore {
    /// Owned and freed by the repository's object database, which lives as long as `Sync::repo`.
    backend: <git2::Mempack<'static> as Binding>::Raw,
}

/// The head of libgit2's `git_odb_backend` (`git2/sys/odb_backend.h`), as far as `write`; the layout
/// is libgit2's public interface for object database backends, at version 1 since libgit2 0.20.
#[repr(C)]
struct BackendHead {
    version: std::ffi::c_uint,
    odb: *mut std::ffi::c_void,
    read: *const std::ffi::c_void,
    read_prefix: *const std::ffi::c_void,
    read_header: *const std::ffi::c_void,
    write: Option<
        unsafe extern "C" fn(
            <git2::Mempack<'static> as Binding>::Raw,
            <Oid as Binding>::Raw,
            *const std::ffi::c_void,
            usize,
            std::ffi::c_int,
        ) -> std::ffi::c_int,
    >,
}

impl MemoryStore {
    /// Adds a mempack backend to `repo`'s object database, at `priority` among its backends.
    pub(crate) fn attach(repo: &Repository, priority: i32) -> Result<Self, git2::Error> {
        let backend = repo.odb()?.add_new_mempack_backend(priority)?.raw();
        // SAFETY: the mempack backend is a live `git_odb_backend`, which begins as `BackendHead`.
        let head = unsafe { &*backend.cast::<BackendHead>() };
        if head.version != 1 || head.write.is_none() {
            return Err(git2::Error::from_str(
                "libgit2's in-memory object store has an unknown layout",
            ));
        }
        Ok(Self { backend })
    }

    /// Stores an object under `oid` (which the caller computed from `kind` and `bytes`).
    pub(crate) fn write(
        &self,
        oid: Oid,
        kind: ObjectType,
        bytes: &[u8],
    ) -> Result<(), git2::Error> {
        // SAFETY: as in `attach`, which checked that `write` is set; the backend copies the bytes.
        let rc = unsafe {
            let write = (*self.backend.cast::<BackendHead>())
                .write
                .expect("checked in attach");
            write(
                self.backend,
                oid.raw(),
                bytes.as_ptr().cast(),
                bytes.len(),
                kind.raw(),
            )
        };
        if rc < 0 {
            return Err(git2::Error::last_error(rc));
        }
        Ok(())
    }

    /// Drops every object stored here.
    pub(crate) fn reset(&self) -> Result<(), git2::Error> {
        self.mempack().reset()
    }

    fn mempack(&self) -> git2::Mempack<'_> {
        // SAFETY: the backend belongs to the object database of `Sync::repo`, which owns it until the
        // repository is freed; the returned value borrows `self`, which `Sync` drops first.
        unsafe { git2::Mempack::from_raw(self.backend) }
    }
}
