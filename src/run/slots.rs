//! The `--jobs` slots handlers run in, and the stop that ends every wait on them. The daemon knows
//! this type as [`Stop`](crate::run::runner::Stop): it hands out tickets, gives back a stuck run's
//! slot and requests the stop; a run (see [`crate::run::runner`]) takes a [`Slot`] and gives it up.
//!
//! Invariants, all kept under one lock so that one condition variable can wake every wait:
//! - at most `count` slots are held at once (`free` counts the rest), and each held slot is given
//!   back exactly once: by its run's [`Slot`] when dropped, or by the watchdog for a stuck run,
//!   whichever comes first ([`InFlight::give_back_slot`] decides);
//! - slots go to runs in ticket order, the order the daemon started them, not the order their
//!   threads happen to ask; every ticket handed out is presented once, or the runs after it wait
//!   forever;
//! - once the stop is requested no run takes a slot, and every wait here ends;
//! - the start handshake: a run that gave its slot up may wait, for a bounded time, until the run
//!   that took it over has started its handler (see [`Slots::let_the_next_start`]).
//!
//! The stop flag lives beside the counts, not in a type of its own, because a wait on a condition
//! variable only sees the state under that variable's mutex: a flag behind another lock could be set
//! between a waiter's check and its sleep, and the wake-up lost.

use std::cell::Cell;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::run::sandbox::InFlight;

/// The slots, their queue and the stop. Shared (in an `Arc`) by the daemon and every run.
pub(crate) struct Slots {
    /// Everything that changes, under the one lock.
    state: Mutex<State>,
    /// Notified on every change of `state`: a slot taken or given back, a handler started, the stop.
    changed: Condvar,
    /// How many slots there are (`--jobs`); fixed.
    count: usize,
}

/// What [`Slots::state`] guards.
struct State {
    /// Set once, by [`Slots::request`], never cleared: shutdown has begun.
    stopping: bool,
    /// Slots no run holds: `count` minus those taken and not yet given back.
    free: usize,
    /// The next ticket to hand out ([`Slots::ticket`]); tickets below it are issued.
    issued: u64,
    /// The ticket whose turn it is to take a slot; those below it have had theirs (or a stop).
    serving: u64,
    /// Runs asleep in [`Slots::take`], whatever their ticket.
    waiting: usize,
    /// Slots held by runs whose handler has not started yet (see [`Slot::started`]).
    unstarted: usize,
    /// Runs asleep in [`Slots::let_the_next_start`]: lets a test know the handshake is waiting.
    #[cfg(test)]
    handshaking: usize,
}

/// A slot a run holds; given back when dropped, unless the watchdog gave it back already.
pub(crate) struct Slot<'a> {
    slots: &'a Slots,
    /// The run's handler, shared with the watchdog, which may give the slot back for a stuck run.
    in_flight: &'a InFlight,
    /// Whether this slot no longer counts in [`State::unstarted`]: the run's handler started, or
    /// the slot is being given up. Set once.
    started: Cell<bool>,
}

impl Slot<'_> {
    /// Notes that the run's first handler started: the run that gave up this slot may go on.
    pub(crate) fn started(&self) {
        if !self.started.replace(true) {
            self.slots.lock().unstarted -= 1;
            self.slots.changed.notify_all();
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        // A slot given up before its handler started must not hold up the run that gave it up.
        self.started();
        if self.in_flight.give_back_slot() {
            self.slots.give_back();
        }
    }
}

impl Slots {
    pub(crate) fn new(count: usize) -> Self {
        Self {
            state: Mutex::new(State {
                stopping: false,
                free: count,
                issued: 0,
                serving: 0,
                waiting: 0,
                unstarted: 0,
                #[cfg(test)]
                handshaking: 0,
            }),
            changed: Condvar::new(),
            count,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("no thread panics holding it")
    }

    /// Requests the stop: no run takes a slot any more, and every wait here ends.
    pub(crate) fn request(&self) {
        self.lock().stopping = true;
        self.changed.notify_all();
    }

    /// Whether the stop was requested.
    pub(crate) fn requested(&self) -> bool {
        self.lock().stopping
    }

    /// Waits up to `timeout` (a retry's backoff); true when the stop was requested.
    pub(crate) fn wait(&self, timeout: Duration) -> bool {
        let (state, _) = self
            .changed
            .wait_timeout_while(self.lock(), timeout, |s| !s.stopping)
            .expect("no thread panics holding it");
        state.stopping
    }

    /// A place in the queue for slots: one per run, taken in the order runs are started.
    pub(crate) fn ticket(&self) -> u64 {
        let mut state = self.lock();
        state.issued += 1;
        state.issued - 1
    }

    /// Gives a slot back: a run's [`Slot`] when dropped, or the watchdog for a worker that is stuck
    /// (see [`InFlight::give_back_slot`]).
    pub(crate) fn give_back(&self) {
        self.lock().free += 1;
        self.changed.notify_all();
    }

    /// Waits for a free slot and for the runs with earlier tickets to have theirs; `None` when the
    /// stop was requested first. Every ticket must come here once, or the runs after it wait
    /// forever.
    pub(crate) fn take<'a>(&'a self, ticket: u64, in_flight: &'a InFlight) -> Option<Slot<'a>> {
        let mut state = self.lock();
        state.waiting += 1;
        let mut state = self
            .changed
            .wait_while(state, |s| {
                !s.stopping && (s.free == 0 || s.serving != ticket)
            })
            .expect("no thread panics holding it");
        state.waiting -= 1;
        if state.stopping {
            return None;
        }
        state.free -= 1;
        state.serving += 1;
        state.unstarted += 1;
        // The next ticket may be waiting for its turn, not only for a slot.
        self.changed.notify_all();
        Some(Slot {
            slots: self,
            in_flight,
            started: Cell::new(false),
        })
    }

    /// The start handshake, after a run gave its slot up, with one slot (`--jobs 1`): waits, at
    /// most `bound`, while the run that takes it over has not started its handler yet (see
    /// [`crate::run::runner`]'s comment). True when no run is left waiting to start, false when the
    /// bound ran out first. With more slots a run does not wait: the other runs' handlers keep the
    /// processors busy anyway, and one waiting for its resource lock would hold up every run that
    /// ends meanwhile.
    pub(crate) fn let_the_next_start(&self, bound: Duration) -> bool {
        if self.count > 1 {
            return true;
        }
        let state = self.lock();
        #[cfg(test)]
        let state = Self::counting_handshake(state, 1);
        let (state, waited) = self
            .changed
            .wait_timeout_while(state, bound, |s| {
                !s.stopping && (s.unstarted > 0 || (s.waiting > 0 && s.free > 0))
            })
            .expect("no thread panics holding it");
        #[cfg(test)]
        let state = Self::counting_handshake(state, -1);
        drop(state);
        !waited.timed_out()
    }

    #[cfg(test)]
    fn counting_handshake(mut state: MutexGuard<'_, State>, by: isize) -> MutexGuard<'_, State> {
        state.handshaking = state
            .handshaking
            .checked_add_signed(by)
            .expect("counted in and out");
        state
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::mpsc;
    use std::thread;
    use std::time::Instant;

    use super::*;

    /// Long enough never to be reached on a loaded machine; reaching it fails the test.
    const DEADLINE: Duration = Duration::from_secs(10);

    /// Waits until `waiting` runs are asleep in [`Slots::take`]. A run counted there has found the
    /// slot not for it under the lock and released the lock only by going to sleep, so it is
    /// blocked, not merely slow.
    fn until_waiting(slots: &Slots, waiting: usize) {
        let deadline = Instant::now() + DEADLINE;
        while slots.lock().waiting != waiting {
            assert!(Instant::now() < deadline, "{waiting} runs never waited");
            thread::yield_now();
        }
    }

    /// Requests the stop if the test fails while threads wait here: they end, and so does the
    /// scope that joins them, instead of hanging the test run.
    struct StopOnFailure<'a>(&'a Slots);

    impl Drop for StopOnFailure<'_> {
        fn drop(&mut self) {
            if thread::panicking() {
                self.0.request();
            }
        }
    }

    #[test]
    fn slots_go_in_ticket_order_whatever_order_threads_ask_in() {
        let stop = Arc::new(Slots::new(1));
        let (first, second) = (stop.ticket(), stop.ticket());
        let (sender, order) = mpsc::channel();
        // The second run's thread asks first: the slot is free, but it is not its turn.
        let late = {
            let (stop, sender) = (Arc::clone(&stop), sender.clone());
            thread::spawn(move || {
                let in_flight = InFlight::default();
                let _slot = stop.take(second, &in_flight).expect("not stopped");
                sender.send(second).unwrap();
            })
        };
        until_waiting(&stop, 1);
        assert!(
            order.try_recv().is_err(),
            "the second ticket took the slot first"
        );
        let in_flight = InFlight::default();
        let slot = stop.take(first, &in_flight).expect("not stopped");
        sender.send(first).unwrap();
        drop(slot);
        late.join().unwrap();
        assert_eq!(order.iter().take(2).collect::<Vec<_>>(), [first, second]);
    }

    #[test]
    fn tickets_asked_for_in_reverse_are_served_in_ticket_order() {
        const RUNS: u64 = 4;
        let slots = Slots::new(1);
        let tickets: Vec<u64> = (0..RUNS).map(|_| slots.ticket()).collect();
        let (sender, order) = mpsc::channel();
        thread::scope(|scope| {
            let _unstick = StopOnFailure(&slots);
            // Every thread asks before the first ticket's: each is queued behind the ones before it.
            for (asked, &ticket) in tickets.iter().rev().enumerate() {
                let (slots, sender) = (&slots, sender.clone());
                scope.spawn(move || {
                    let in_flight = InFlight::default();
                    let slot = slots.take(ticket, &in_flight).expect("not stopped");
                    sender.send(ticket).unwrap();
                    drop(slot);
                });
                // The first ticket's is not put to sleep: the slot is free and it is its turn.
                if ticket != tickets[0] {
                    until_waiting(slots, asked + 1);
                }
            }
            let served: Vec<u64> = (0..RUNS)
                .map(|_| {
                    order
                        .recv_timeout(DEADLINE)
                        .expect("a run never took its slot")
                })
                .collect();
            assert_eq!(served, tickets);
        });
    }

    #[test]
    fn n_slots_admit_n_runs_at_once_and_the_next_waits_for_one_given_back() {
        const N: usize = 3;
        let slots = Slots::new(N);
        let in_flight: Vec<InFlight> = (0..=N).map(|_| InFlight::default()).collect();
        // N runs take a slot each without waiting for one another.
        let mut held: Vec<Slot<'_>> = in_flight[..N]
            .iter()
            .map(|f| slots.take(slots.ticket(), f).expect("a free slot"))
            .collect();
        assert_eq!(slots.lock().free, 0);
        let (sender, admitted) = mpsc::channel();
        thread::scope(|scope| {
            let _unstick = StopOnFailure(&slots);
            let ticket = slots.ticket();
            let (slots, last) = (&slots, &in_flight[N]);
            scope.spawn(move || {
                let slot = slots.take(ticket, last).expect("not stopped");
                sender.send(()).unwrap();
                drop(slot);
            });
            // The N+1th is asleep with every slot held.
            until_waiting(slots, 1);
            assert!(admitted.try_recv().is_err(), "a run took an N+1th slot");
            drop(held.pop());
            admitted
                .recv_timeout(DEADLINE)
                .expect("the slot given back went to the waiting run");
        });
        drop(held);
        assert_eq!(slots.lock().free, N);
    }

    #[test]
    fn a_stop_wakes_every_run_waiting_for_a_slot_and_a_backoff() {
        let slots = Slots::new(1);
        let busy = InFlight::default();
        let _held = slots.take(slots.ticket(), &busy).expect("a free slot");
        let (sender, woken) = mpsc::channel();
        thread::scope(|scope| {
            let _unstick = StopOnFailure(&slots);
            for _ in 0..2 {
                let (slots, sender) = (&slots, sender.clone());
                let ticket = slots.ticket();
                scope.spawn(move || {
                    let took = slots.take(ticket, &InFlight::default()).is_some();
                    sender.send(took).unwrap();
                });
            }
            let backoff = woken_in_time(scope, |bound| slots.wait(bound));
            until_waiting(&slots, 2);
            assert!(!slots.requested());
            slots.request();
            for _ in 0..2 {
                let took = woken
                    .recv_timeout(DEADLINE)
                    .expect("a waiter was not woken");
                assert!(!took, "a stopped run took a slot");
            }
            assert!(backoff.join().unwrap(), "the backoff did not see the stop");
        });
        assert!(slots.requested());
        // After the stop, a run asking for a slot does not wait at all, even for a free one.
        let late = Slots::new(1);
        late.request();
        assert!(late.take(late.ticket(), &InFlight::default()).is_none());
    }

    #[test]
    fn a_run_that_gave_its_slot_up_waits_for_the_next_handler_to_start_and_no_longer() {
        let stop = Slots::new(1);
        let (first, second) = (InFlight::default(), InFlight::default());
        // Nobody else: no wait.
        let slot = stop.take(stop.ticket(), &first).expect("a free slot");
        slot.started();
        drop(slot);
        assert!(stop.let_the_next_start(DEADLINE));
        // The next run took the slot and has not started its handler: the wait runs to its bound,
        // and not much beyond it.
        let next = stop.take(stop.ticket(), &second).expect("a free slot");
        let bound = Duration::from_millis(20);
        let clock = Instant::now();
        assert!(!stop.let_the_next_start(bound));
        let waited = clock.elapsed();
        assert!(waited >= bound, "gave up after {waited:?}");
        assert!(waited < bound + DEADLINE, "waited {waited:?}");
        // It started: no wait; nor after a slot dropped unstarted.
        next.started();
        assert!(stop.let_the_next_start(DEADLINE));
        drop(next);
        let unstarted = stop.take(stop.ticket(), &first).expect("a free slot");
        drop(unstarted);
        assert!(stop.let_the_next_start(DEADLINE));
        // With more slots than one, a run never waits.
        let many = Slots::new(2);
        let _held = many.take(many.ticket(), &second).expect("a free slot");
        assert!(many.let_the_next_start(DEADLINE));
    }

    /// Runs `wait` (bounded by twice [`DEADLINE`]) on a thread of its own; its result, or a failure
    /// when it took a [`DEADLINE`] or more, which only the bound's running out would explain.
    fn woken_in_time<'s>(
        scope: &'s thread::Scope<'s, '_>,
        wait: impl FnOnce(Duration) -> bool + Send + 's,
    ) -> thread::ScopedJoinHandle<'s, bool> {
        scope.spawn(move || {
            let clock = Instant::now();
            let result = wait(DEADLINE * 2);
            assert!(clock.elapsed() < DEADLINE, "not woken: the bound ran out");
            result
        })
    }

    /// Waits until a run is asleep in the handshake ([`Slots::let_the_next_start`]).
    fn until_handshaking(slots: &Slots) {
        let deadline = Instant::now() + DEADLINE;
        while slots.lock().handshaking == 0 {
            assert!(Instant::now() < deadline, "the handshake never waited");
            thread::yield_now();
        }
    }

    #[test]
    fn the_handshake_ends_when_the_next_run_starts_its_handler_or_a_stop_comes() {
        let slots = Slots::new(1);
        let next = InFlight::default();
        thread::scope(|scope| {
            let _unstick = StopOnFailure(&slots);
            // The next run holds the slot, not started; the one that gave it up waits on another
            // thread, with a bound it must not need.
            let slot = slots.take(slots.ticket(), &next).expect("a free slot");
            let waiter = woken_in_time(scope, |bound| slots.let_the_next_start(bound));
            until_handshaking(&slots);
            slot.started();
            assert!(waiter.join().unwrap(), "the start did not end the wait");
            drop(slot);
            let slot = slots.take(slots.ticket(), &next).expect("a free slot");
            let waiter = woken_in_time(scope, |bound| slots.let_the_next_start(bound));
            until_handshaking(&slots);
            slots.request();
            assert!(waiter.join().unwrap(), "the stop did not end the wait");
            drop(slot);
        });
    }

    #[test]
    fn the_handshake_waits_for_a_run_asleep_for_the_slot_to_take_it_and_start() {
        let slots = Slots::new(1);
        let first = InFlight::default();
        let held = slots.take(slots.ticket(), &first).expect("a free slot");
        held.started();
        let ticket = slots.ticket();
        let (go, told) = mpsc::channel::<()>();
        thread::scope(|scope| {
            let slots = &slots;
            let _unstick = StopOnFailure(slots);
            scope.spawn(move || {
                let in_flight = InFlight::default();
                let slot = slots.take(ticket, &in_flight).expect("not stopped");
                // Started only once the test has seen the handshake wait for it.
                told.recv_timeout(DEADLINE).expect("the test went on");
                slot.started();
            });
            until_waiting(slots, 1);
            // The slot is given up with a run asleep for it: the handshake waits for that run to
            // take the slot and start its handler, which it does only once told.
            drop(held);
            let bound = Duration::from_millis(20);
            assert!(
                !slots.let_the_next_start(bound),
                "did not wait for the start"
            );
            let waiter = woken_in_time(scope, move |bound| slots.let_the_next_start(bound));
            until_handshaking(slots);
            go.send(()).unwrap();
            assert!(waiter.join().unwrap(), "the start did not end the wait");
        });
    }

    #[test]
    fn a_slot_the_watchdog_gave_back_is_not_given_back_twice_and_a_stop_sends_waiters_away() {
        let stop = Slots::new(1);
        let stuck = InFlight::default();
        let slot = stop.take(stop.ticket(), &stuck).expect("a free slot");
        // The watchdog gives the stuck run's slot back; the next run takes it.
        assert!(stuck.give_back_slot());
        stop.give_back();
        let next = InFlight::default();
        let held = stop
            .take(stop.ticket(), &next)
            .expect("the slot given back");
        // The stuck worker ends after all: its slot is not given back a second time.
        drop(slot);
        assert_eq!(stop.lock().free, 0, "one slot, held by the next run");
        drop(held);
        assert_eq!(stop.lock().free, 1);
        // A run waiting for a slot is sent away by a stop.
        let waiting = InFlight::default();
        let _busy = stop.take(stop.ticket(), &waiting).expect("a free slot");
        let ticket = stop.ticket();
        thread::scope(|scope| {
            let asking = scope.spawn(|| stop.take(ticket, &InFlight::default()).is_none());
            stop.request();
            assert!(asking.join().unwrap(), "a stopped run took a slot");
        });
    }
}
