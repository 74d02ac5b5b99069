//! The dispatcher's own work at idle priority, so that it does not take a processor from a handler
//! while the host has none to spare (`--bookkeeping-priority`).
//!
//! Handlers run at the priority the dispatcher was started with. The dispatcher's bookkeeping (the
//! fetches, commits and pushes of its `bookkeeping` thread, and a run's clean-up and report once its
//! handler is gone) can run under `SCHED_IDLE`: it gets a processor whenever a handler does not want
//! it. A handler woken, or a process it forks, then starts at once instead of waiting for a commit
//! to finish; on the 1000-request benchmark's two cores this took 8-24 % off the drain (`idle`;
//! `auto` about as much).
//!
//! On a host kept busy by other work, an idle thread gets almost nothing: 200 requests took 134-138
//! s instead of 1.4-1.7 s beside four busy loops on two cores (`idle`). So by default (`auto`) the
//! work is done at idle priority only while a handler runs (before, there is nothing to yield to),
//! and the bookkeeping thread watches how long it waits for a processor ([`Starvation`]). Once
//! starved, it hands its work back to the process's first thread, which never left normal priority,
//! for a while ([`BackOff`]); then a new thread tries idle priority again. A push, the one long step
//! of the loop, is made at normal priority too (`Daemon::suits_idle`). The same 200 requests took
//! 1.9 s against 1.8 s at normal priority; busy loops started in the middle of a drain were told
//! 0.4-2.8 s later.
//!
//! A thread cannot leave `SCHED_IDLE` without `CAP_SYS_NICE`, and threads and processes inherit their
//! maker's policy. So the run threads, which start the handlers, are started by a [`Launcher`] made
//! while no thread was lowered, and lower themselves only once their handler is gone for good.

use std::io;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::libc;

/// Who runs at idle priority (`--bookkeeping-priority`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Bookkeeping {
    /// The dispatcher's own work at idle priority while the host has processors to spare; at
    /// normal priority for a while once it waited too long for one.
    #[default]
    Auto,
    /// The dispatcher's own work yields to every other process (`SCHED_IDLE`), however busy the
    /// host is.
    Idle,
    /// Everything at the priority the dispatcher was started with.
    Normal,
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

/// How long the calling thread has waited for a processor, and over how many turns on one
/// (`/proc/thread-self/schedstat`: time on a processor, time waiting on a run queue, turns; ns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Waits {
    waited: Duration,
    turns: u64,
}

impl Waits {
    fn of_this_thread() -> io::Result<Self> {
        Self::parse(&std::fs::read_to_string("/proc/thread-self/schedstat")?).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "/proc/thread-self/schedstat: expected three numbers",
            )
        })
    }

    fn parse(schedstat: &str) -> Option<Self> {
        let mut fields = schedstat.split_ascii_whitespace().skip(1);
        let waited = fields.next()?.parse().ok()?;
        let turns = fields.next()?.parse().ok()?;
        Some(Self {
            waited: Duration::from_nanos(waited),
            turns,
        })
    }
}

/// How often [`Starvation::starved`] looks, at most.
const LOOK_EVERY: Duration = Duration::from_millis(100);
/// Starved: over one look's span, waited this long for a processor in all...
const STARVED_WAIT: Duration = Duration::from_millis(50);
/// ... and this long a turn on average. An idle bookkeeping thread waits about 40 µs a turn while it
/// drains a backlog on an otherwise idle host, and 135 ms a turn beside four busy loops on two cores.
const STARVED_TURN: Duration = Duration::from_millis(2);

/// What a starved thread waited: in all, over how many turns, over how long a span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Starved {
    pub waited: Duration,
    pub turns: u64,
    pub over: Duration,
}

impl Starved {
    /// The average wait for a turn.
    pub(crate) fn per_turn(&self) -> Duration {
        self.waited / u32::try_from(self.turns.max(1)).unwrap_or(u32::MAX)
    }
}

/// Tells whether the thread that asks is starved: whether, since it last looked, it waited for a
/// processor for long and long each turn. Asked on one thread only: the first look sets where the
/// waits are counted from.
#[derive(Default)]
pub(crate) struct Starvation {
    since: Option<(Instant, Waits)>,
}

impl Starvation {
    /// Whether the kernel tells a thread's waits.
    pub(crate) fn supported() -> io::Result<()> {
        Waits::of_this_thread().map(drop)
    }

    /// Counts the calling thread's waits from now on.
    pub(crate) fn count_from_here(&mut self) {
        self.since = Waits::of_this_thread().ok().map(|w| (Instant::now(), w));
    }

    /// Whether the calling thread was starved since it last looked; cheap when asked more often
    /// than every [`LOOK_EVERY`].
    pub(crate) fn starved(&mut self) -> Option<Starved> {
        let now = Instant::now();
        if let Some((then, _)) = self.since
            && now.duration_since(then) < LOOK_EVERY
        {
            return None;
        }
        let waits = Waits::of_this_thread().ok()?;
        let (then, before) = self.since.replace((now, waits))?;
        judge(before, waits, now.duration_since(then))
    }
}

fn judge(before: Waits, after: Waits, over: Duration) -> Option<Starved> {
    let starved = Starved {
        waited: after.waited.saturating_sub(before.waited),
        turns: after.turns.saturating_sub(before.turns),
        over,
    };
    (starved.waited >= STARVED_WAIT && starved.per_turn() >= STARVED_TURN).then_some(starved)
}

/// How long the bookkeeping stays at normal priority after it was starved: 30 s the first time,
/// twice as long each time after, at most 30 minutes; 30 s again after 30 minutes without being
/// starved.
#[derive(Default)]
pub(crate) struct BackOff {
    last: Option<(Instant, Duration)>,
}

impl BackOff {
    const FIRST: Duration = Duration::from_secs(30);
    const MOST: Duration = Duration::from_secs(30 * 60);

    /// How long to stay at normal priority after being starved now.
    pub(crate) fn next(&mut self) -> Duration {
        self.next_at(Instant::now())
    }

    fn next_at(&mut self, now: Instant) -> Duration {
        let next = match self.last {
            Some((then, was)) if now.duration_since(then) < was + Self::MOST => {
                (was * 2).min(Self::MOST)
            }
            _ => Self::FIRST,
        };
        self.last = Some((now, next));
        next
    }
}

/// A thread to start: its name, and what it runs.
type Job = (&'static str, Box<dyn FnOnce() + Send>);

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
            Bookkeeping::Auto | Bookkeeping::Idle => Self::thread(),
        }
    }

    fn thread() -> io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        thread::Builder::new()
            .name("launcher".to_owned())
            .spawn(move || {
                for (name, job) in queue {
                    // As `thread::spawn` would panic where it was asked for, but the asking thread
                    // would never hear of it and wait for the job's report for ever: the dispatcher
                    // stops here (its journal tells the next start what was running).
                    if let Err(e) = thread::Builder::new().name(name.to_owned()).spawn(job) {
                        eprintln!("git-dispatch: cannot start a thread: {e}");
                        std::process::abort();
                    }
                }
            })?;
        Ok(Self::Thread(jobs))
    }

    /// Runs `job` on a thread of its own named `name` (a thread without a name would take the name
    /// of the thread that made it).
    pub(crate) fn spawn(&self, name: &'static str, job: impl FnOnce() + Send + 'static) {
        match self {
            Self::Here => {
                thread::Builder::new()
                    .name(name.to_owned())
                    .spawn(job)
                    .expect("failed to spawn thread");
            }
            Self::Thread(jobs) => jobs
                .send((name, Box::new(job)))
                .expect("the launcher's thread ends only with its channel (or the process)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waits(waited_ms: u64, turns: u64) -> Waits {
        Waits {
            waited: Duration::from_millis(waited_ms),
            turns,
        }
    }

    #[test]
    fn schedstat_gives_the_wait_and_the_turns() {
        assert_eq!(
            Waits::parse("486313196 100147275 1395\n"),
            Some(Waits {
                waited: Duration::from_nanos(100_147_275),
                turns: 1395
            })
        );
        assert_eq!(Waits::parse("486313196\n"), None);
        assert_eq!(Waits::parse("1 x 3\n"), None);
        let here = Waits::of_this_thread().expect("Linux tells a thread's waits");
        assert!(Starvation::supported().is_ok());
        let later = Waits::of_this_thread().unwrap();
        assert!(later.turns >= here.turns && later.waited >= here.waited);
    }

    #[test]
    fn starved_means_a_long_wait_in_all_and_a_long_wait_each_turn() {
        let over = Duration::from_millis(200);
        // Figures seen: an idle thread draining a backlog on an otherwise idle host, and beside
        // four busy loops on two cores.
        assert_eq!(judge(waits(0, 0), waits(45, 1100), over), None);
        assert_eq!(
            judge(waits(1000, 10), waits(1540, 14), over),
            Some(Starved {
                waited: Duration::from_millis(540),
                turns: 4,
                over
            })
        );
        // Long in all but short each turn (a thread that ran a lot), or long each turn but
        // short in all (one slow turn): not starved.
        assert_eq!(judge(waits(0, 0), waits(60, 100), over), None);
        assert_eq!(judge(waits(0, 0), waits(40, 1), over), None);
        assert!(judge(waits(0, 0), waits(50, 25), over).is_some());
        // A waiting thread's wait is counted when it gets its turn: no turn yet, all in one.
        let starved = judge(waits(0, 0), waits(300, 0), over).unwrap();
        assert_eq!(starved.per_turn(), Duration::from_millis(300));
    }

    #[test]
    fn the_first_look_only_starts_counting() {
        let mut starvation = Starvation::default();
        assert_eq!(starvation.starved(), None);
        assert!(starvation.since.is_some());
        // Asked again at once: too soon to tell, nothing read.
        let since = starvation.since;
        assert_eq!(starvation.starved(), None);
        assert_eq!(starvation.since, since);
    }

    #[test]
    fn back_off_doubles_up_to_half_an_hour_and_starts_over_after_half_an_hour_unstarved() {
        let mut back_off = BackOff::default();
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut seen = Vec::new();
        let mut now = 0;
        for _ in 0..8 {
            let d = back_off.next_at(at(now)).as_secs();
            seen.push(d);
            now += d + 1;
        }
        assert_eq!(seen, [30, 60, 120, 240, 480, 960, 1800, 1800]);
        // Starved again 30 minutes after the last normal stretch ended: from the start.
        assert_eq!(back_off.next_at(at(now + 1800 + 1800)).as_secs(), 30);
        assert_eq!(back_off.next_at(at(now + 1800 + 1800 + 31)).as_secs(), 60);
    }

    #[test]
    fn threads_launched_for_an_idle_thread_keep_the_launchers_priority() {
        let (tx, rx) = mpsc::channel();
        let asked_from_idle = thread::spawn(move || {
            let launcher = Launcher::for_bookkeeping(Bookkeeping::Idle).unwrap();
            lower_this_thread().unwrap();
            let mine = this_thread_policy();
            let tx_launched = tx.clone();
            launcher.spawn("launched", move || {
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
