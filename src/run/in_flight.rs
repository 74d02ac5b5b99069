//! What the daemon and a run's thread share of a run in flight: the handler's pid and start, the
//! watchdog's verdict, and the deadline of the claim the run holds.

use std::time::{Duration, Instant};

/// The handler process of a run while it lives, and since when: what the daemon's watchdog looks at;
/// whether the watchdog has recorded the run `abandoned`, which the run checks before it starts
/// another attempt; and the deadline of the claim the run holds.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    handler: std::sync::Mutex<Option<(u32, Instant)>>,
    abandoned: std::sync::atomic::AtomicBool,
    /// Set by the daemon from its claim on the run's resource, and moved on with each renewal
    /// that worked: no attempt starts after it, and a handler still running then is stopped
    /// (SIGTERM, then SIGKILL after the `Duration`). The run's own thread enforces it, so it holds
    /// however long the daemon's loop is held up (a remote that stops answering, say).
    deadline: std::sync::Mutex<Option<(Instant, Duration)>>,
    /// Set when the run's own thread acted on the deadline.
    fenced: std::sync::atomic::AtomicBool,
    /// Whether the handler runs as the init of a PID namespace of its own (see
    /// [`crate::run::sandbox::terminate`]).
    isolated: std::sync::atomic::AtomicBool,
    /// Set by the daemon when the run must not start its handler after all (the dispatcher was
    /// paused or drained, or the request withdrawn, while the run waited for its slot).
    withheld: std::sync::atomic::AtomicBool,
    /// Set by whichever gives the run's `--jobs` slot back first: its worker, or the watchdog for
    /// a worker that is stuck.
    slot_given_back: std::sync::atomic::AtomicBool,
}

impl InFlight {
    pub(crate) fn set(&self, value: Option<(u32, Instant)>) {
        *self.handler.lock().expect("no thread panics holding it") = value;
    }

    /// The handler's pid and when it started, while one runs.
    pub(crate) fn get(&self) -> Option<(u32, Instant)> {
        *self.handler.lock().expect("no thread panics holding it")
    }

    pub(crate) fn set_isolated(&self, isolated: bool) {
        self.isolated
            .store(isolated, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn is_isolated(&self) -> bool {
        self.isolated.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Keeps the run from starting its first handler, if it has not yet.
    pub(crate) fn withhold(&self) {
        self.withheld
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn is_withheld(&self) -> bool {
        self.withheld.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn abandon(&self) {
        self.abandoned
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn is_abandoned(&self) -> bool {
        self.abandoned.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Nothing of the run may start after `at`; a handler that runs then is stopped, SIGKILL
    /// `kill_after` after its SIGTERM.
    pub(crate) fn hold_until(&self, at: Instant, kill_after: Duration) {
        *self.deadline.lock().expect("no thread panics holding it") = Some((at, kill_after));
    }

    pub(crate) fn deadline(&self) -> Option<(Instant, Duration)> {
        *self.deadline.lock().expect("no thread panics holding it")
    }

    /// Whether the deadline has passed at `now`: then the run is marked fenced.
    pub(crate) fn fence_due(&self, now: Instant) -> bool {
        let due = self.deadline().is_some_and(|(at, _)| now >= at);
        if due {
            self.fenced
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        due
    }

    /// Whether the run's own thread stopped it (or kept it from starting) at its deadline.
    pub(crate) fn is_fenced(&self) -> bool {
        self.fenced.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// True the first time only: the caller is the one to give the run's slot back.
    pub(crate) fn give_back_slot(&self) -> bool {
        !self
            .slot_given_back
            .swap(true, std::sync::atomic::Ordering::AcqRel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_fenced_only_once_its_deadline_passed_and_renewals_move_the_deadline_on() {
        let in_flight = InFlight::default();
        let t0 = Instant::now();
        assert!(!in_flight.fence_due(t0), "no claim deadline: never fenced");
        in_flight.hold_until(t0 + Duration::from_secs(2), Duration::from_secs(1));
        assert!(!in_flight.fence_due(t0 + Duration::from_secs(1)));
        assert!(!in_flight.is_fenced());
        // Renewed: the deadline moves on.
        in_flight.hold_until(t0 + Duration::from_secs(4), Duration::from_secs(1));
        assert!(!in_flight.fence_due(t0 + Duration::from_secs(3)));
        assert!(in_flight.fence_due(t0 + Duration::from_secs(4)));
        assert!(in_flight.is_fenced());
    }
}
