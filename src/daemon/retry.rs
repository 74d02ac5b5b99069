//! Retry timing for looks at the remote and pushes: the backoff between attempts, when an attempt
//! is the last, and the note that says so.
//!
//! Pure: every decision here takes its inputs as arguments, so the sequences can be tested without a
//! remote. The invariant: a delay never exceeds [`BACKOFF_MAX`], and the attempt that makes the
//! dispatcher give up announces no next one.

use std::time::Duration;

use crate::config::Mode;

/// Backoff for fetches and pushes: first retry after this, doubling, with jitter.
const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Exponential backoff with full jitter: a random delay up to `base * 2^(n-1)`, capped.
pub(crate) fn backoff(failures: u32) -> Duration {
    ceiling(failures).mul_f64(0.5 + fastrand::f64() / 2.0)
}

/// The longest delay after `failures` failures in a row: `base * 2^(n-1)`, capped.
fn ceiling(failures: u32) -> Duration {
    BACKOFF_BASE
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(BACKOFF_MAX)
}

/// The wait before the next push: none after a first rejection (most often the remote moved, and
/// the outcomes are re-created on its new tip at once), else the backoff.
pub(super) fn push_delay(failures: u32, rejected: bool) -> Duration {
    if failures == 1 && rejected {
        Duration::ZERO
    } else {
        backoff(failures)
    }
}

/// Whether the attempt that just failed was the last: `--once` and `--until-empty` give up after
/// `attempts`; serving gives up only once shutdown began (`stopping`), never while it serves.
pub(super) fn is_last(mode: Mode, stopping: bool, failures: u32, attempts: u32) -> bool {
    (mode != Mode::Serve || stopping) && failures >= attempts
}

/// `attempt 2; next in 1.2s`, or for the attempt after which the dispatcher gives up `attempt 6 of
/// 6, the last`: the last attempt announces no next one.
pub(super) fn attempt_note(attempt: u32, attempts: u32, last: bool, delay: Duration) -> String {
    if last {
        format!("attempt {attempt} of {attempts}, the last")
    } else {
        format!("attempt {attempt}; next in {delay:.1?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_ceiling_doubles_from_a_quarter_second_up_to_a_minute() {
        let ceilings: Vec<Duration> = (1..=10).map(ceiling).collect();
        let ms = |n| Duration::from_millis(n);
        assert_eq!(
            ceilings,
            [
                ms(250),
                ms(500),
                ms(1000),
                ms(2000),
                ms(4000),
                ms(8000),
                ms(16000),
                ms(32000),
                ms(60000),
                ms(60000)
            ]
        );
        // No failure yet counts as the first; a huge count does not overflow.
        assert_eq!(ceiling(0), ms(250));
        assert_eq!(ceiling(u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn a_backoff_lies_between_half_its_ceiling_and_its_ceiling() {
        for failures in 1..=12 {
            for _ in 0..50 {
                let delay = backoff(failures);
                let top = ceiling(failures);
                assert!(
                    delay >= top / 2 && delay <= top,
                    "{delay:?} after {failures} failures"
                );
            }
        }
    }

    #[test]
    fn only_a_first_rejected_push_is_retried_at_once() {
        assert_eq!(push_delay(1, true), Duration::ZERO);
        assert!(push_delay(1, false) >= ceiling(1) / 2);
        assert!(push_delay(2, true) >= ceiling(2) / 2);
    }

    #[test]
    fn serving_gives_up_only_once_shutdown_began() {
        assert!(!is_last(Mode::Serve, false, 9, 6));
        assert!(is_last(Mode::Serve, true, 6, 6));
        assert!(!is_last(Mode::Serve, true, 5, 6));
        for mode in [Mode::Once, Mode::UntilEmpty] {
            assert!(!is_last(mode, false, 5, 6));
            assert!(is_last(mode, false, 6, 6));
        }
    }

    #[test]
    fn the_last_attempt_announces_no_next_one() {
        let delay = Duration::from_millis(1234);
        assert_eq!(attempt_note(2, 6, false, delay), "attempt 2; next in 1.2s");
        assert_eq!(attempt_note(6, 6, true, delay), "attempt 6 of 6, the last");
    }
}
