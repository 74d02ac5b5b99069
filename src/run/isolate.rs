//! What an isolated handler sees: a mount namespace in which the host is read-only, `/tmp` and
//! `/dev/shm` are private, the dispatcher's own state is hidden, and only the run's working directory
//! and its kind's `writable:` paths can be written; a PID namespace of its own (the handler is its
//! init, so when the handler ends every process it left is gone) and an IPC namespace of its own.
//!
//! The mechanism was chosen on measurements (a spawn loop of `/bin/sh -c true`, about 1.0 ms alone,
//! medians of 9): bubblewrap added 3.3 ms per run as root (5.2 ms with a network namespace) and, as
//! root, cannot drop to `nobody` without a user namespace that maps that user to root; `unshare(1)`
//! added 2.1 ms. The same namespaces made in the dispatcher's own `clone` and set up with a handful
//! of mount calls added 0.2 to 0.4 ms, needed no helper binary and no unprivileged user namespaces,
//! and kept the handler the dispatcher's child (its pidfd, its process group, its signals). So the
//! namespaces are made here, as root, before the handler's user is taken: no user namespace is
//! involved, and the handler, unprivileged, cannot undo any mount.
//!
//! Kinds are kept apart by these namespaces, not by users of their own: every run may be `nobody`,
//! yet no run sees another's processes (so neither their environment nor their signals), files
//! (other runs' folders lie under the hidden scratch folder), or SysV IPC.
//!
//! [`Isolation::prepare`] lays out, in the dispatcher, everything the child needs as plain C strings;
//! [`enter`] runs in the child between `clone` and `execve`, where only system calls are allowed.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::libc::{self, c_char, c_int, c_uint};

use crate::run::cgroup::Cgroups;

/// At most this many paths are bound into a run's view (its own three and its kind's `writable:`).
pub(crate) const MAX_BINDS: usize = 40;

/// The isolation this host gives, found once at start.
#[derive(Debug)]
pub(crate) struct Isolation {
    /// Why namespaces cannot be made here (`Ok`: they can).
    namespaces: Result<(), String>,
    /// What no handler sees, canonical: a `writable:` path may neither hold nor lie in one.
    hidden: Vec<PathBuf>,
    /// The outermost of them, as the child covers them: folders by an empty read-only folder,
    /// files by `/dev/null`. Laid out once, not per run.
    hidden_dirs: Vec<CString>,
    hidden_files: Vec<CString>,
    /// A cgroup per run, or why not (then `memory:` is an rlimit).
    cgroups: Result<Cgroups, String>,
}

/// A path to show inside the view, at the same place.
pub(crate) struct Bind<'a> {
    pub path: &'a Path,
    pub writable: bool,
    /// A kind's `writable:` path, which must neither lie in nor hold what is hidden.
    pub from_kind: bool,
}

/// Everything [`enter`] does, prepared in the dispatcher.
#[derive(Debug)]
pub(crate) struct Mounts<'a> {
    binds: Vec<PreparedBind>,
    hidden_dirs: &'a [CString],
    hidden_files: &'a [CString],
}

#[derive(Debug)]
struct PreparedBind {
    path: CString,
    /// Its ancestors from the top, made (if missing) under whatever covers them.
    parents: Vec<CString>,
    is_dir: bool,
    writable: bool,
}

impl Isolation {
    /// Namespaces need `CAP_SYS_ADMIN`: a dispatcher that is not root runs its handlers as itself,
    /// seeing what it sees.
    pub(crate) fn new(hidden: Vec<PathBuf>) -> Self {
        let namespaces = if nix::unistd::geteuid().is_root() {
            Ok(())
        } else {
            Err(
                "the dispatcher is not root, and namespaces need root: handlers see what the \
                 dispatcher's user sees"
                    .to_owned(),
            )
        };
        let mut hidden: Vec<PathBuf> = hidden
            .into_iter()
            .filter_map(|p| std::fs::canonicalize(p).ok())
            .collect();
        hidden.sort();
        hidden.dedup();
        // A hidden path inside another is covered with it; a bound path is shown again over it.
        let mut hidden_dirs = Vec::new();
        let mut hidden_files = Vec::new();
        for (i, path) in hidden.iter().enumerate() {
            if hidden[..i].iter().any(|outer| path.starts_with(outer)) {
                continue;
            }
            let (Ok(meta), Ok(c)) = (std::fs::metadata(path), c_path(path)) else {
                continue;
            };
            if meta.is_dir() {
                hidden_dirs.push(c);
            } else {
                hidden_files.push(c);
            }
        }
        Self {
            namespaces,
            hidden,
            hidden_dirs,
            hidden_files,
            cgroups: Cgroups::open(),
        }
    }

    /// The runs' cgroups, or why there are none.
    pub(crate) fn cgroups(&self) -> Result<&Cgroups, &str> {
        self.cgroups.as_ref().map_err(String::as_str)
    }

    /// What isolated kinds get on this host, one line per mechanism: (ok, text).
    pub(crate) fn report(&self) -> Vec<(bool, String)> {
        vec![
            match &self.namespaces {
                Ok(()) => (
                    true,
                    "namespaces: mount (host read-only, private /tmp, state hidden), pid, ipc; \
                     net for `network: none`"
                        .to_owned(),
                ),
                Err(why) => (false, format!("namespaces: none ({why})")),
            },
            match &self.cgroups {
                Ok(cgroups) => (
                    cgroups.complete(),
                    format!("cgroups: {}", cgroups.describe()),
                ),
                Err(why) => (
                    false,
                    format!(
                        "cgroups: none ({why}): `memory:` is an address-space rlimit, `pids:` and \
                         `cpu:` are not enforced"
                    ),
                ),
            },
        ]
    }

    /// The mounts of one run's view, or `None` where namespaces cannot be made. An error names the
    /// path that cannot be shown (a `writable:` path missing on this host).
    pub(crate) fn prepare(&self, binds: &[Bind<'_>]) -> io::Result<Option<Mounts<'_>>> {
        if self.namespaces.is_err() {
            return Ok(None);
        }
        if binds.len() > MAX_BINDS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("more than {MAX_BINDS} paths to show in the handler's view"),
            ));
        }
        let mut prepared = Vec::with_capacity(binds.len());
        for bind in binds {
            let path = std::fs::canonicalize(bind.path)
                .map_err(|e| io::Error::new(e.kind(), format!("`{}`: {e}", bind.path.display())))?;
            if bind.from_kind
                && let Some(hidden) = self
                    .hidden
                    .iter()
                    .find(|h| h.starts_with(&path) || path.starts_with(h))
            {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "`{}` would show the dispatcher's own state (`{}`) to the handler",
                        bind.path.display(),
                        hidden.display()
                    ),
                ));
            }
            let is_dir = path.is_dir();
            let parents = path
                .ancestors()
                .skip(1)
                .filter(|p| p.parent().is_some())
                .map(c_path)
                .collect::<io::Result<Vec<_>>>()?
                .into_iter()
                .rev()
                .collect();
            prepared.push(PreparedBind {
                path: c_path(&path)?,
                parents,
                is_dir,
                writable: bind.writable,
            });
        }
        // Outer paths first, so that one inside another is shown over it.
        prepared.sort_by_key(|b: &PreparedBind| b.parents.len());
        Ok(Some(Mounts {
            binds: prepared,
            hidden_dirs: &self.hidden_dirs,
            hidden_files: &self.hidden_files,
        }))
    }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("`{}` contains a NUL byte", path.display()),
        )
    })
}

/// The namespaces an isolated handler is cloned into.
pub(crate) const CLONE_FLAGS: c_int = libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWIPC;

/// The steps of [`enter`], in order; a failure names its step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MountStep {
    Private = 1,
    Detach,
    Hide,
    PrivateTmp,
    Bind,
    ReadOnly,
    Writable,
    Proc,
}

impl MountStep {
    const ALL: [MountStep; 8] = [
        MountStep::Private,
        MountStep::Detach,
        MountStep::Hide,
        MountStep::PrivateTmp,
        MountStep::Bind,
        MountStep::ReadOnly,
        MountStep::Writable,
        MountStep::Proc,
    ];

    pub(crate) fn from_index(index: usize) -> Option<Self> {
        Self::ALL.get(index.checked_sub(1)?).copied()
    }

    pub(crate) fn describe(self) -> &'static str {
        match self {
            MountStep::Private => "make its mounts private",
            MountStep::Detach => "copy a path to show (Linux 5.2 or later)",
            MountStep::Hide => "hide the dispatcher's state",
            MountStep::PrivateTmp => "mount a private /tmp",
            MountStep::Bind => "show its working directory, request, handler or a `writable:` path",
            MountStep::ReadOnly => "make the host read-only (Linux 5.12 or later)",
            MountStep::Writable => "make its writable paths writable",
            MountStep::Proc => "mount its own /proc",
        }
    }
}

/// The `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const OPEN_TREE_CLONE: c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: c_uint = 0x4;

/// Sets up the view in the child, which is root in fresh mount, PID and IPC namespaces.
///
/// # Safety
/// System calls only, on `mounts` and the stack: callable in the child between `clone` and
/// `execve` (see `spawn`).
pub(crate) unsafe fn enter(mounts: &Mounts<'_>) -> Result<(), (MountStep, c_int)> {
    let errno = || io::Error::last_os_error().raw_os_error().unwrap_or(0);
    macro_rules! step {
        ($step:expr, $call:expr) => {
            if ($call as i64) < 0 {
                return Err(($step, errno()));
            }
        };
    }
    let c = |s: &'static [u8]| s.as_ptr().cast::<c_char>();
    let (root, tmp, shm, proc_, tmpfs, null) = (
        c(b"/\0"),
        c(b"/tmp\0"),
        c(b"/dev/shm\0"),
        c(b"/proc\0"),
        c(b"tmpfs\0"),
        c(b"/dev/null\0"),
    );
    let mut trees: [c_int; MAX_BINDS] = [-1; MAX_BINDS];
    // SAFETY (whole block): system calls on NUL-terminated strings that outlive the child's use of
    // them, and on this stack's `trees` and attribute structs.
    unsafe {
        step!(
            MountStep::Private,
            libc::mount(
                std::ptr::null(),
                root,
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null()
            )
        );
        // Copies of what is shown, taken before anything covers them.
        for (tree, bind) in trees.iter_mut().zip(&mounts.binds) {
            *tree = libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                bind.path.as_ptr(),
                OPEN_TREE_CLONE | libc::O_CLOEXEC as c_uint | libc::AT_RECURSIVE as c_uint,
            ) as c_int;
            step!(MountStep::Detach, *tree);
        }
        for dir in mounts.hidden_dirs {
            step!(
                MountStep::Hide,
                libc::mount(
                    tmpfs,
                    dir.as_ptr(),
                    tmpfs,
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    c(b"mode=755,size=64k\0").cast()
                )
            );
        }
        for file in mounts.hidden_files {
            step!(
                MountStep::Hide,
                libc::mount(
                    null,
                    file.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null()
                )
            );
        }
        for dir in [tmp, shm] {
            let mounted = libc::mount(
                tmpfs,
                dir,
                tmpfs,
                libc::MS_NOSUID | libc::MS_NODEV,
                c(b"mode=1777\0").cast(),
            );
            // A host without /dev/shm has nothing to make private there.
            if mounted < 0 && !(dir == shm && errno() == libc::ENOENT) {
                return Err((MountStep::PrivateTmp, errno()));
            }
        }
        for (tree, bind) in trees.iter().zip(&mounts.binds) {
            for parent in &bind.parents {
                if libc::mkdir(parent.as_ptr(), 0o755) < 0 && errno() != libc::EEXIST {
                    return Err((MountStep::Bind, errno()));
                }
            }
            if bind.is_dir {
                if libc::mkdir(bind.path.as_ptr(), 0o755) < 0 && errno() != libc::EEXIST {
                    return Err((MountStep::Bind, errno()));
                }
            } else {
                let fd = libc::open(
                    bind.path.as_ptr(),
                    libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC,
                    0o644,
                );
                if fd < 0 && errno() != libc::EISDIR {
                    return Err((MountStep::Bind, errno()));
                }
                if fd >= 0 {
                    libc::close(fd);
                }
            }
            step!(
                MountStep::Bind,
                libc::syscall(
                    libc::SYS_move_mount,
                    *tree,
                    c(b"\0"),
                    libc::AT_FDCWD,
                    bind.path.as_ptr(),
                    MOVE_MOUNT_F_EMPTY_PATH,
                )
            );
            libc::close(*tree);
        }
        let read_only = MountAttr {
            attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        step!(
            MountStep::ReadOnly,
            mount_setattr(root, libc::AT_RECURSIVE as c_uint, &read_only)
        );
        let writable = MountAttr {
            attr_set: 0,
            attr_clr: MOUNT_ATTR_RDONLY,
            propagation: 0,
            userns_fd: 0,
        };
        for dir in [tmp, shm] {
            if mount_setattr(dir, 0, &writable) < 0 && !(dir == shm && errno() == libc::ENOENT) {
                return Err((MountStep::Writable, errno()));
            }
        }
        for bind in mounts.binds.iter().filter(|b| b.writable) {
            step!(
                MountStep::Writable,
                mount_setattr(bind.path.as_ptr(), 0, &writable)
            );
        }
        step!(
            MountStep::Proc,
            libc::mount(
                c(b"proc\0"),
                proc_,
                c(b"proc\0"),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null()
            )
        );
    }
    Ok(())
}

/// `mount_setattr(AT_FDCWD, path, flags, attr)`.
///
/// # Safety
/// `path` is a NUL-terminated string.
unsafe fn mount_setattr(path: *const c_char, flags: c_uint, attr: &MountAttr) -> libc::c_long {
    // SAFETY: a system call on a valid path and attribute struct of the size it is told.
    unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path,
            flags,
            attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    }
}

/// The paths a run shows: its handler's folder and request copy, read-only; its working directory
/// and its kind's `writable:` paths, writable.
pub(crate) fn run_binds<'a>(
    handlers: &'a Path,
    request_copy: &'a Path,
    work: &'a Path,
    writable: &'a [String],
) -> Vec<Bind<'a>> {
    let own = |path, writable| Bind {
        path,
        writable,
        from_kind: false,
    };
    let mut binds = vec![
        own(handlers, false),
        own(request_copy, false),
        own(work, true),
    ];
    binds.extend(writable.iter().map(|p| Bind {
        path: Path::new(OsStr::new(p)),
        writable: true,
        from_kind: true,
    }));
    binds
}
