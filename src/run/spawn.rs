//! Starts a handler process the way `posix_spawn` does, with `clone(CLONE_VM | CLONE_VFORK)`: the
//! child runs in the dispatcher's memory until it executes the handler, where a `fork` would copy the
//! page tables of all of it, tear the copy down again at the `exec`, and make every page the
//! dispatcher writes in between fault to copy itself (16 % of the dispatcher's CPU time while it
//! drained a backlog of trivial requests). Unlike `posix_spawn`, the child confines itself before the
//! `exec`: resource limits, another user, `no_new_privs`, death with the dispatcher.
//!
//! The child runs on a stack of its own while the thread that started it waits. It shares every
//! other byte with the dispatcher's threads, so it must not allocate, take a lock or call into libc
//! beyond thin system-call wrappers: it only makes system calls, on data laid out before the clone,
//! and reports a failure in a shared word before it exits. The user change uses the raw system calls,
//! because glibc's `setuid` would also change the credentials of every thread in the dispatcher.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

use nix::libc::{self, c_char, c_int, c_uint, c_ulong, c_void};
use nix::unistd::{Gid, Pid, Uid};

use crate::run::isolate::{self, MountStep, Mounts};

/// The child's stack: it runs a few dozen system calls and no Rust code that allocates.
const CHILD_STACK: usize = 64 * 1024;

// The system calls with 32-bit ids (the plain ones take 16-bit ids on these two).
#[cfg(not(any(target_arch = "x86", target_arch = "arm")))]
use libc::{SYS_setgid as SYS_SETGID, SYS_setgroups as SYS_SETGROUPS, SYS_setuid as SYS_SETUID};
#[cfg(any(target_arch = "x86", target_arch = "arm"))]
use libc::{
    SYS_setgid32 as SYS_SETGID, SYS_setgroups32 as SYS_SETGROUPS, SYS_setuid32 as SYS_SETUID,
};

/// The user a handler runs as.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub uid: Uid,
    pub gid: Gid,
    pub groups: Vec<Gid>,
}

/// Resource limits applied in the child before it executes the handler.
#[derive(Debug, Clone, Default)]
pub(crate) struct Limits {
    /// `RLIMIT_AS`, bytes.
    pub address_space: Option<u64>,
    /// `RLIMIT_NPROC`: processes of the handler's user.
    pub processes: Option<u64>,
    /// `RLIMIT_NOFILE`.
    pub open_files: Option<u64>,
    /// `RLIMIT_FSIZE`, bytes.
    pub file_size: Option<u64>,
    /// A network namespace of its own, with only loopback (up): needs `CAP_SYS_ADMIN`.
    pub no_network: bool,
}

/// What to start and how to confine it.
pub(crate) struct Spec<'a> {
    /// Executed as is (no search of `PATH`).
    pub program: &'a Path,
    /// After `argv[0]`, which is the program.
    pub args: &'a [&'a OsStr],
    /// The whole environment.
    pub env: &'a [(String, String)],
    pub cwd: &'a Path,
    /// Becomes standard input.
    pub stdin: BorrowedFd<'a>,
    /// Becomes standard output and standard error.
    pub output: BorrowedFd<'a>,
    pub limits: &'a Limits,
    /// `None`: keep the dispatcher's user.
    pub user: Option<&'a Identity>,
    /// Confined, the child reads one byte from this before it executes the handler, and executes
    /// it only if the byte is 1: a run's process is made while the run waits for its slot (see
    /// `sandbox::Job::admit`).
    pub gate: Option<BorrowedFd<'a>>,
    /// Namespaces of its own, with this view of the file system (see [`isolate`]).
    pub mounts: Option<&'a Mounts<'a>>,
    /// `cgroup.procs` files (opened for writing) the child moves itself into first.
    pub cgroups: &'a [BorrowedFd<'a>],
}

/// A started handler: the leader of a process group of its own.
#[derive(Debug)]
pub(crate) struct Child {
    pub pid: Pid,
    /// Readable once the process has exited (it is not reaped).
    pub pidfd: OwnedFd,
}

/// `close_range(2)` (Linux 5.9), by its system call: 0, or -1 with `errno` set.
unsafe fn close_range(first: c_uint, last: c_uint) -> c_int {
    // SAFETY: the system call takes three integers and touches no memory of the caller.
    unsafe { libc::syscall(libc::SYS_close_range, first, last, 0 as c_uint) as c_int }
}

/// The steps the child takes, in order; a failure names its step.
#[derive(Clone, Copy)]
enum Step {
    Stdio = 1,
    Chdir,
    ProcessGroup,
    Limit,
    Groups,
    Gid,
    Uid,
    NoNewPrivs,
    DeathSignal,
    Orphaned,
    Gate,
    Exec,
    Network,
    Isolate,
    Cgroup,
}

impl Step {
    const ALL: [Step; 15] = [
        Step::Stdio,
        Step::Chdir,
        Step::ProcessGroup,
        Step::Limit,
        Step::Groups,
        Step::Gid,
        Step::Uid,
        Step::NoNewPrivs,
        Step::DeathSignal,
        Step::Orphaned,
        Step::Gate,
        Step::Exec,
        Step::Network,
        Step::Isolate,
        Step::Cgroup,
    ];

    fn describe(self) -> &'static str {
        match self {
            Step::Stdio => "redirect standard input and output",
            Step::Chdir => "enter the working directory",
            Step::ProcessGroup => "start a process group",
            Step::Limit => "set a resource limit",
            Step::Groups => "set the supplementary groups",
            Step::Gid => "set the group id",
            Step::Uid => "set the user id",
            Step::NoNewPrivs => "set no_new_privs",
            Step::DeathSignal => "set the parent-death signal",
            Step::Orphaned => "start: the dispatcher exited",
            Step::Gate => "start: the run was not admitted",
            Step::Exec => "execute",
            Step::Network => "enter a network of its own (`network: none`)",
            Step::Isolate => "isolate",
            Step::Cgroup => "enter its cgroup",
        }
    }
}

/// Everything the child reads, laid out before the clone; `failed`, `detail` and `errno` are its
/// only writes.
struct Context<'a> {
    program: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    cwd: *const c_char,
    stdin: RawFd,
    output: RawFd,
    limits: Vec<(libc::__rlimit_resource_t, libc::rlim_t)>,
    user: Option<(libc::uid_t, libc::gid_t, Vec<libc::gid_t>)>,
    parent: libc::pid_t,
    /// [`Spec::gate`], -1 for none.
    gate: RawFd,
    /// [`Limits::no_network`].
    no_network: bool,
    /// [`Spec::mounts`].
    mounts: Option<&'a Mounts<'a>>,
    /// [`Spec::cgroups`].
    cgroups: Vec<RawFd>,
    /// A pidfd of the dispatcher, -1 for none: an isolated child, whose parent is outside its PID
    /// namespace, cannot ask `getppid` whether the dispatcher still lives.
    dispatcher: RawFd,
    /// The `Step` that failed, 0 while none has.
    failed: AtomicUsize,
    /// The [`MountStep`] that failed, when `failed` is [`Step::Isolate`].
    detail: AtomicUsize,
    errno: AtomicI32,
}

/// Starts `spec.program`, confined. An error means it never ran; the message names the step.
pub(crate) fn spawn(spec: &Spec<'_>) -> io::Result<Child> {
    let program = c_string(spec.program.as_os_str())?;
    let args = spec
        .args
        .iter()
        .map(|a| c_string(a))
        .collect::<io::Result<Vec<_>>>()?;
    let env = spec
        .env
        .iter()
        .map(|(k, v)| c_string(OsStr::new(&format!("{k}={v}"))))
        .collect::<io::Result<Vec<_>>>()?;
    let cwd = c_string(spec.cwd.as_os_str())?;
    let argv = pointers(std::iter::once(&program).chain(&args));
    let envp = pointers(&env);
    // Both must survive the dup2 onto 0, 1 and 2 of each other: keep them above 2.
    let stdin = above_stdio(spec.stdin)?;
    let output = above_stdio(spec.output)?;
    let limit = |resource, value: Option<u64>| value.map(|v| (resource, v));
    let context = Context {
        program: program.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        cwd: cwd.as_ptr(),
        stdin: stdin
            .as_ref()
            .map_or(spec.stdin.as_raw_fd(), |fd| fd.as_raw_fd()),
        output: output
            .as_ref()
            .map_or(spec.output.as_raw_fd(), |fd| fd.as_raw_fd()),
        limits: [
            limit(libc::RLIMIT_CORE, Some(0)),
            limit(libc::RLIMIT_AS, spec.limits.address_space),
            limit(libc::RLIMIT_NPROC, spec.limits.processes),
            limit(libc::RLIMIT_NOFILE, spec.limits.open_files),
            limit(libc::RLIMIT_FSIZE, spec.limits.file_size),
        ]
        .into_iter()
        .flatten()
        .collect(),
        user: spec.user.map(|u| {
            (
                u.uid.as_raw(),
                u.gid.as_raw(),
                u.groups.iter().map(|g| g.as_raw()).collect(),
            )
        }),
        parent: nix::unistd::getpid().as_raw(),
        gate: spec.gate.map_or(-1, |fd| fd.as_raw_fd()),
        no_network: spec.limits.no_network,
        mounts: spec.mounts,
        cgroups: spec.cgroups.iter().map(|fd| fd.as_raw_fd()).collect(),
        dispatcher: if spec.mounts.is_some() {
            dispatcher_pidfd()
        } else {
            -1
        },
        failed: AtomicUsize::new(0),
        detail: AtomicUsize::new(0),
        errno: AtomicI32::new(0),
    };
    let mut stack = vec![0u8; CHILD_STACK];
    // The stack grows down from its end, 16-byte aligned as the ABI wants.
    let top = (stack.as_mut_ptr() as usize + stack.len()) & !15;

    let mut pidfd: c_int = -1;
    let namespaces = if spec.mounts.is_some() {
        isolate::CLONE_FLAGS
    } else {
        0
    };
    // Every signal is blocked across the clone: a handler of the dispatcher's must not run in the
    // child before the child has put the default dispositions back.
    // SAFETY: plain system calls on local signal sets; `child` only reads `context` (alive until
    // this thread resumes, which CLONE_VFORK holds off until the child has executed or exited) and
    // writes its atomics, and `stack` outlives the child's use of it for the same reason.
    let pid = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        // CLONE_PIDFD: the pidfd exists before the handler runs, so no failure after its start
        // can leave a handler that ran reported as one that did not.
        let pid = libc::clone(
            child,
            top as *mut c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | namespaces | libc::SIGCHLD,
            &context as *const Context as *mut c_void,
            &mut pidfd as *mut c_int,
        );
        let clone_error = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, ptr::null_mut());
        if pid < 0 {
            return Err(io::Error::new(
                clone_error.kind(),
                format!("clone (Linux 5.2 or later): {clone_error}"),
            ));
        }
        Pid::from_raw(pid)
    };
    // SAFETY: clone returned a new descriptor in `pidfd` that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    drop(stack);
    let failed = context.failed.load(Ordering::Relaxed);
    if failed != 0 {
        let _ = nix::sys::wait::waitpid(pid, None);
        let error = io::Error::from_raw_os_error(context.errno.load(Ordering::Relaxed));
        let step = Step::ALL[failed - 1];
        let what = match MountStep::from_index(context.detail.load(Ordering::Relaxed)) {
            Some(detail) if matches!(step, Step::Isolate) => {
                format!("{}: {}", step.describe(), detail.describe())
            }
            _ => step.describe().to_owned(),
        };
        return Err(io::Error::new(error.kind(), format!("{what}: {error}")));
    }
    Ok(Child { pid, pidfd })
}

/// The child: confine, then execute. Returns only to exit, after a failure.
extern "C" fn child(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the parent's `Context`, alive while the parent waits (CLONE_VFORK).
    let context = unsafe { &*(arg as *const Context) };
    // SAFETY: system calls only, on what `spawn` prepared; see the module's comment.
    let (step, errno) = unsafe { confine_and_exec(context) };
    context.errno.store(errno, Ordering::Relaxed);
    context.failed.store(step as usize, Ordering::Relaxed);
    // SAFETY: leaves the child at once, running nothing of the parent's (no atexit handlers).
    unsafe { libc::_exit(127) }
}

/// Brings the loopback interface of a new network namespace up (it starts down): `lo` only.
///
/// # Safety
/// System calls only, on the stack: callable in the child between `clone` and `execve`.
unsafe fn loopback_up() -> c_int {
    // SAFETY: a socket, two ioctls on a zeroed `ifreq` naming `lo`, and a close.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return -1;
        }
        let mut request: libc::ifreq = std::mem::zeroed();
        for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
            *slot = *byte as c_char;
        }
        let mut result = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut request);
        if result >= 0 {
            request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            result = libc::ioctl(fd, libc::SIOCSIFFLAGS, &request);
        }
        libc::close(fd);
        result
    }
}

/// The child's steps. Returns the step that failed and its errno.
unsafe fn confine_and_exec(cx: &Context) -> (Step, c_int) {
    let errno = || io::Error::last_os_error().raw_os_error().unwrap_or(0);
    macro_rules! step {
        ($step:expr, $call:expr) => {
            if $call < 0 {
                return ($step, errno());
            }
        };
    }
    // SAFETY (whole block): thin system-call wrappers on pointers into `cx`, which the parent keeps
    // alive and unchanged until this process executes or exits.
    unsafe {
        default_signal_dispositions();
        step!(Step::Stdio, libc::dup2(cx.stdin, 0));
        step!(Step::Stdio, libc::dup2(cx.output, 1));
        step!(Step::Stdio, libc::dup2(cx.output, 2));
        for &procs in &cx.cgroups {
            step!(Step::Cgroup, libc::write(procs, b"0".as_ptr().cast(), 1));
        }
        if let Some(mounts) = cx.mounts
            && let Err((detail, errno)) = isolate::enter(mounts)
        {
            cx.detail.store(detail as usize, Ordering::Relaxed);
            return (Step::Isolate, errno);
        }
        // After the mounts: a directory entered before them would be the one they cover.
        step!(Step::Chdir, libc::chdir(cx.cwd));
        step!(Step::ProcessGroup, libc::setpgid(0, 0));
        if cx.no_network {
            step!(Step::Network, libc::unshare(libc::CLONE_NEWNET));
            step!(Step::Network, loopback_up());
        }
        for &(resource, value) in &cx.limits {
            let limit = libc::rlimit {
                rlim_cur: value,
                rlim_max: value,
            };
            step!(Step::Limit, libc::setrlimit(resource, &limit));
        }
        if let Some((uid, gid, groups)) = &cx.user {
            step!(
                Step::Groups,
                libc::syscall(SYS_SETGROUPS, groups.len(), groups.as_ptr())
            );
            step!(
                Step::Gid,
                libc::syscall(SYS_SETGID, libc::c_long::from(*gid))
            );
            step!(
                Step::Uid,
                libc::syscall(SYS_SETUID, libc::c_long::from(*uid))
            );
        }
        step!(
            Step::NoNewPrivs,
            libc::prctl(
                libc::PR_SET_NO_NEW_PRIVS,
                1 as c_ulong,
                0 as c_ulong,
                0 as c_ulong,
                0 as c_ulong
            )
        );
        // Set after the user change, which clears it. If the dispatcher died before this point, the
        // signal would never come: leave at once instead.
        step!(
            Step::DeathSignal,
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as c_ulong,
                0 as c_ulong,
                0 as c_ulong,
                0 as c_ulong
            )
        );
        let orphaned = if cx.dispatcher >= 0 {
            let mut watch = libc::pollfd {
                fd: cx.dispatcher,
                events: libc::POLLIN,
                revents: 0,
            };
            libc::poll(&mut watch, 1, 0) > 0
        } else {
            cx.mounts.is_none() && libc::getppid() != cx.parent
        };
        if orphaned {
            return (Step::Orphaned, libc::ESRCH);
        }
        // Last, so that the setup above is done while the run waits for its slot. Should the
        // dispatcher die meanwhile, the parent-death signal ends the wait.
        if cx.gate >= 0 {
            // The wait may last a whole handler's run: the copies of the dispatcher's descriptors
            // the clone made (another run's resource lock, its output pipe) must not be held that
            // long. The handler gets nothing but its standard input and output anyway.
            let gate = cx.gate as c_uint;
            if gate > 3 {
                step!(Step::Gate, close_range(3, gate - 1));
            }
            step!(Step::Gate, close_range(gate + 1, c_uint::MAX));
            let mut byte = 0u8;
            let read = loop {
                let n = libc::read(cx.gate, (&raw mut byte).cast(), 1);
                if n >= 0 || errno() != libc::EINTR {
                    break n;
                }
            };
            if read < 0 {
                return (Step::Gate, errno());
            }
            if read != 1 || byte != 1 {
                return (Step::Gate, libc::EIO);
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::pthread_sigmask(libc::SIG_SETMASK, &empty, ptr::null_mut());
        libc::execve(cx.program, cx.argv, cx.envp);
    }
    (Step::Exec, errno())
}

/// Puts back the default action of every signal the dispatcher catches, and of SIGPIPE, which Rust
/// programs ignore (as `std::process::Command` does; other signals ignored when the dispatcher
/// started stay ignored, as `nohup` intends).
unsafe fn default_signal_dispositions() {
    // SAFETY: sigaction on signal numbers in range, with sigaction structs on this stack.
    unsafe {
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        for signal in 1..=libc::SIGRTMAX() {
            if signal == libc::SIGKILL || signal == libc::SIGSTOP {
                continue;
            }
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, ptr::null(), &mut old) == 0
                && old.sa_sigaction != libc::SIG_DFL
                && (old.sa_sigaction != libc::SIG_IGN || signal == libc::SIGPIPE)
            {
                libc::sigaction(signal, &default, ptr::null_mut());
            }
        }
    }
}

/// A pidfd of the dispatcher, opened once (-1 where pidfds are not available): readable once the
/// dispatcher has exited.
fn dispatcher_pidfd() -> RawFd {
    static PIDFD: std::sync::OnceLock<Option<OwnedFd>> = std::sync::OnceLock::new();
    PIDFD
        .get_or_init(|| {
            // SAFETY: pidfd_open of this process returns a new descriptor nothing else owns.
            let fd = unsafe {
                libc::syscall(libc::SYS_pidfd_open, libc::getpid(), libc::PIDFD_NONBLOCK)
            };
            let fd = c_int::try_from(fd).ok().filter(|fd| *fd >= 0)?;
            // SAFETY: as above (pidfds are close-on-exec).
            Some(unsafe { OwnedFd::from_raw_fd(fd) })
        })
        .as_ref()
        .map_or(-1, |fd| fd.as_raw_fd())
}

fn c_string(value: &OsStr) -> io::Result<CString> {
    CString::new(value.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} contains a NUL byte", value.to_string_lossy()),
        )
    })
}

/// A NULL-terminated array of pointers into `strings`.
fn pointers<'a>(strings: impl IntoIterator<Item = &'a CString>) -> Vec<*const c_char> {
    strings
        .into_iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(ptr::null()))
        .collect()
}

/// A copy of `fd` numbered 3 or above when `fd` is 0, 1 or 2 (a dispatcher started with one of
/// them closed); `None` when `fd` can be used as it is.
fn above_stdio(fd: BorrowedFd<'_>) -> io::Result<Option<OwnedFd>> {
    if fd.as_raw_fd() > 2 {
        return Ok(None);
    }
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we borrow returns a new one that nothing else owns.
    let copy = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if copy < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(copy) }))
}

#[cfg(test)]
#[path = "spawn_tests.rs"]
mod tests;
