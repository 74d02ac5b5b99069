//! The event channel and what feeds it: workers reporting runs that ended, the signal thread
//! ([`Shutdown`], passed into [`Daemon::serve`]), and the watcher of a remote on a local path. The
//! loop blocks here between steps, until an event or its next deadline.
//!
//! The invariant: an event only changes what the loop does next (marks a run ended, moves the next
//! sync, begins shutdown); nothing is recorded or committed here, so an event can never come between
//! a run and the recording of its outcome.

use std::path::Path;
use std::sync::mpsc::{RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use notify::Watcher;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::daemon::{Daemon, DaemonError};
use crate::git::url::local_path;
use crate::log::say;
use crate::run::runner::Report;

pub(super) enum Event {
    Finished(Box<Report>),
    RemoteChanged,
    Signal(i32),
    /// The push on a thread of its own ended.
    Pushed,
}

/// Where shutdown comes from: SIGTERM and SIGINT, passed into [`Daemon::serve`] by the command that
/// runs it.
pub(crate) struct Shutdown {
    signals: Signals,
}

impl Shutdown {
    /// Installs the handlers of SIGTERM and SIGINT; the signals wait here until the loop listens.
    pub(crate) fn on_signals() -> Self {
        let signals =
            Signals::new([SIGTERM, SIGINT]).expect("signal handlers can be installed at start-up");
        Self { signals }
    }

    /// Hands every signal to the loop as an [`Event::Signal`], from a thread of its own, until the
    /// loop is gone.
    pub(super) fn forward_to(mut self, sender: Sender<Event>) {
        thread::spawn(move || {
            for signal in self.signals.forever() {
                if sender.send(Event::Signal(signal)).is_err() {
                    return;
                }
            }
        });
    }
}

/// What a signal does, given whether shutdown began already.
#[derive(Debug, PartialEq, Eq)]
enum OnSignal {
    /// The first: take nothing new, finish what runs, record, push, exit.
    Begin,
    /// Shutdown began already: nothing more to do.
    Again,
    /// A second interrupt: the operator means it, exit at once.
    ExitNow,
}

fn on_signal(shutting_down: bool, signal: i32) -> OnSignal {
    match (shutting_down, signal) {
        (true, SIGINT) => OnSignal::ExitNow,
        (true, _) => OnSignal::Again,
        (false, _) => OnSignal::Begin,
    }
}

/// Whether a change the watcher saw moved a branch: a change under `refs/heads` or of `packed-refs`.
/// Reading the remote (our own fetches and probes) must not wake the loop, or every look at the
/// remote would cause the next.
fn moves_a_branch(event: &notify::Event, refs: &Path, packed: &Path) -> bool {
    let changes = matches!(
        event.kind,
        notify::EventKind::Create(_) | notify::EventKind::Modify(_) | notify::EventKind::Remove(_)
    );
    changes
        && event
            .paths
            .iter()
            .any(|p| p.starts_with(refs) || p == packed)
}

impl Daemon {
    /// For a remote on a local path, wakes the loop as soon as its refs change.
    pub(super) fn watch_remote(&self) -> Option<notify::RecommendedWatcher> {
        let path = local_path(&self.cfg.remote)?;
        let git_dir = if path.join(".git").is_dir() {
            path.join(".git")
        } else {
            path
        };
        let sender = self.sender.clone();
        let refs = git_dir.join("refs/heads");
        let packed = git_dir.join("packed-refs");
        let watched = refs.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else { return };
                if moves_a_branch(&event, &watched, &packed) {
                    let _ = sender.send(Event::RemoteChanged);
                }
            })
            .ok()?;
        watcher
            .watch(&refs, notify::RecursiveMode::Recursive)
            .ok()?;
        // Packed refs change `packed-refs` in the repository's top folder.
        let _ = watcher.watch(&git_dir, notify::RecursiveMode::NonRecursive);
        Some(watcher)
    }

    /// Blocks until an event or the next deadline.
    pub(super) fn wait(&mut self, at_most: Option<Duration>) -> Result<(), DaemonError> {
        // Shutting down, nothing syncs: its time does not count (a past one would spin).
        // Nor while a push runs on its own thread: the loop fetches after it.
        let mut deadline = match self.shutting_down || self.push.in_flight() {
            true => Instant::now() + Duration::from_secs(3600),
            false => self.syncing.next,
        };
        if let Some(limit) = at_most {
            deadline = deadline.min(Instant::now() + limit);
        }
        // Wake for the watchdog too: a stuck run sends no event. A run whose handler has not started
        // yet has no deadline, so look again within a second while anything runs.
        for run in self.running.values().filter(|r| !r.ended) {
            deadline = deadline.min(match run.in_flight.get() {
                Some((_, started)) => started + run.stale_after() + Duration::from_millis(50),
                None => Instant::now() + Duration::from_secs(1),
            });
        }
        if self.gave_up.is_none()
            && let Some(due) = self
                .push
                .next_due(self.pace(self.progress.waiting), self.cfg.push_batch)
        {
            deadline = deadline.min(due);
        }
        if let Some(by) = self.claims.wake_by(Instant::now()) {
            deadline = deadline.min(by);
        }
        if let Some(due) = self.due_at {
            deadline = deadline.min(due);
        }
        // A claim extended or lost since the last take: what may start now waits for no deadline.
        if std::mem::take(&mut self.claims.take_again) {
            deadline = Instant::now();
        }
        if let Some(slot) = self.schedules.next {
            deadline = deadline.min(slot);
        }
        let timeout = deadline.saturating_duration_since(Instant::now());
        match self.events.recv_timeout(timeout) {
            Ok(event) => self.handle(event),
            Err(RecvTimeoutError::Timeout) => Ok(()),
            Err(RecvTimeoutError::Disconnected) => unreachable!("the daemon holds a sender"),
        }
    }

    pub(super) fn handle_pending_events(&mut self) -> Result<(), DaemonError> {
        while let Ok(event) = self.events.try_recv() {
            self.handle(event)?;
        }
        Ok(())
    }

    pub(super) fn handle(&mut self, event: Event) -> Result<(), DaemonError> {
        match event {
            Event::Finished(report) if self.watchdogged.remove(&report.key) => {
                crate::log::event(
                    "watchdog",
                    Some(&report.key),
                    "a run recorded abandoned by the watchdog reported after all; its report is ignored",
                );
            }
            Event::Finished(report) => {
                // Recorded after the next request is started: its handler runs while this one's
                // outcome is committed.
                if let Some(run) = self.running.get_mut(&report.key) {
                    run.ended = true;
                }
                self.finished.push(*report);
            }
            Event::RemoteChanged => self.syncing.next = Instant::now(),
            // The loop collects it at its push step.
            Event::Pushed => self.push_reported(),
            Event::Signal(signal) => match on_signal(self.shutting_down, signal) {
                OnSignal::ExitNow => {
                    say("second interrupt: exiting at once");
                    std::process::exit(130);
                }
                OnSignal::Again => {}
                OnSignal::Begin => {
                    say(&format!(
                        "signal {signal}: taking no new request; finishing {} running, then pushing",
                        self.running.len()
                    ));
                    self.shutting_down = true;
                    self.stop.request();
                }
            },
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, CreateKind, ModifyKind, RemoveKind};
    use notify::{Event as Change, EventKind};

    #[test]
    fn a_second_interrupt_exits_at_once_and_a_second_term_does_not() {
        assert_eq!(on_signal(false, SIGTERM), OnSignal::Begin);
        assert_eq!(on_signal(false, SIGINT), OnSignal::Begin);
        assert_eq!(on_signal(true, SIGTERM), OnSignal::Again);
        assert_eq!(on_signal(true, SIGINT), OnSignal::ExitNow);
    }

    #[test]
    fn only_a_change_of_a_branch_wakes_the_loop() {
        let refs = Path::new("/r.git/refs/heads");
        let packed = Path::new("/r.git/packed-refs");
        let change = |kind, path: &str| Change::new(kind).add_path(path.into());
        let modify = EventKind::Modify(ModifyKind::Any);
        assert!(moves_a_branch(
            &change(modify, "/r.git/refs/heads/main"),
            refs,
            packed
        ));
        assert!(moves_a_branch(
            &change(EventKind::Create(CreateKind::File), "/r.git/packed-refs"),
            refs,
            packed
        ));
        assert!(moves_a_branch(
            &change(EventKind::Remove(RemoveKind::File), "/r.git/refs/heads/a/b"),
            refs,
            packed
        ));
        // Reading the remote, or writing elsewhere in it, does not.
        assert!(!moves_a_branch(
            &change(EventKind::Access(AccessKind::Any), "/r.git/refs/heads/main"),
            refs,
            packed
        ));
        assert!(!moves_a_branch(
            &change(modify, "/r.git/objects/ab/cdef"),
            refs,
            packed
        ));
        assert!(!moves_a_branch(
            &change(modify, "/r.git/packed-refs.lock"),
            refs,
            packed
        ));
    }
}
