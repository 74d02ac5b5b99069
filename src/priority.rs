//! The dispatcher's own work at idle priority (`--bookkeeping-priority idle`), so that it never takes
//! a processor from a handler.
//!
//! Handlers run at the priority the dispatcher was started with. With `idle`, the dispatcher's
//! bookkeeping (the main thread's fetches, commits and pushes, and a run's clean-up and report once
//! its handler is gone) runs under `SCHED_IDLE`: it gets a processor whenever a handler does not want
//! it. A handler woken, or a process it forks, then starts at once instead of waiting for a commit
//! to finish; on the 1000-request benchmark's two cores this took 8-24 % off the drain. It is not
//! the default because on a host kept busy by other work the bookkeeping gets almost nothing (200
//! requests took 134-138 s instead of 1.4-1.7 s beside four busy loops on two cores).
//!
//! A thread cannot leave `SCHED_IDLE` without `CAP_SYS_NICE`, and threads and processes inherit their
//! maker's policy. So the run threads, which start the handlers, are started by a [`Launcher`] made
//! while the main thread still had its first priority, and lower themselves only once their handler
//! is gone for good.

use std::io;
use std::sync::mpsc;
use std::thread;

use nix::libc;

/// Who runs at idle priority (`--bookkeeping-priority`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Bookkeeping {
    /// Everything at the priority the dispatcher was started with.
    #[default]
    Normal,
    /// The dispatcher's own work yields to every other process (`SCHED_IDLE`).
    Idle,
}

/// Lowers the calling thread (not the process) to `SCHED_IDLE`; what it starts afterwards inherits
/// it. There is no way back without `CAP_SYS_NICE`.
pub(crate) fn lower_this_thread() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid `sched_param`; pid 0 is the calling thread.
    match unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// The calling thread's scheduling policy (`SCHED_OTHER`, `SCHED_IDLE`, ...).
#[cfg(test)]
fn this_thread_policy() -> libc::c_int {
    // SAFETY: no arguments beyond the calling thread's id.
    unsafe { libc::sched_getscheduler(0) }
}

type Job = Box<dyn FnOnce() + Send>;

/// Starts threads at the priority of the thread that made it, whatever the priority of the threads
/// that ask.
pub(crate) enum Launcher {
    /// Where they are asked for: nothing is lowered.
    Here,
    /// On a thread of its own, which starts them.
    Thread(mpsc::Sender<Job>),
}

impl Launcher {
    /// A launcher for `bookkeeping`: a thread of its own when threads will be lowered.
    pub(crate) fn for_bookkeeping(bookkeeping: Bookkeeping) -> io::Result<Self> {
        match bookkeeping {
            Bookkeeping::Normal => Ok(Self::Here),
            Bookkeeping::Idle => Self::thread(),
        }
    }

    fn thread() -> io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        thread::Builder::new()
            .name("launcher".to_owned())
            .spawn(move || {
                for job in queue {
                    // As `thread::spawn` would panic where it was asked for, but the asking thread
                    // would never hear of it and wait for the job's report for ever: the dispatcher
                    // stops here (its journal tells the next start what was running).
                    if let Err(e) = thread::Builder::new().spawn(job) {
                        eprintln!("git-dispatch: cannot start a thread: {e}");
                        std::process::abort();
                    }
                }
            })?;
        Ok(Self::Thread(jobs))
    }

    /// Runs `job` on a thread of its own.
    pub(crate) fn spawn(&self, job: impl FnOnce() + Send + 'static) {
        match self {
            Self::Here => {
                thread::spawn(job);
            }
            Self::Thread(jobs) => jobs
                .send(Box::new(job))
                .expect("the launcher's thread ends only with its channel (or the process)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_launched_for_an_idle_thread_keep_the_launchers_priority() {
        let (tx, rx) = mpsc::channel();
        let asked_from_idle = thread::spawn(move || {
            let launcher = Launcher::for_bookkeeping(Bookkeeping::Idle).unwrap();
            lower_this_thread().unwrap();
            let mine = this_thread_policy();
            let tx_launched = tx.clone();
            launcher.spawn(move || {
                tx_launched
                    .send(("launched", this_thread_policy()))
                    .unwrap()
            });
            thread::spawn(move || tx.send(("spawned", this_thread_policy())).unwrap());
            mine
        });
        assert_eq!(asked_from_idle.join().unwrap(), libc::SCHED_IDLE);
        let mut seen: Vec<_> = rx.iter().take(2).collect();
        seen.sort_unstable();
        assert_eq!(
            seen,
            [
                ("launched", libc::SCHED_OTHER),
                ("spawned", libc::SCHED_IDLE)
            ],
            "a thread started directly inherits SCHED_IDLE; the launcher's does not"
        );
    }
}
