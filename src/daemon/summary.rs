//! What a run of the dispatcher recorded, for its closing line (`done: 3 outcome(s) recorded and
//! pushed (2 succeeded, 1 failed)`).
//!
//! The invariant: `recorded` is the sum of `by_state`, and no state is listed with a count of zero,
//! also after an outcome is taken out of the count (a reconcile found the remote records its id).

use std::collections::BTreeMap;
use std::fmt;

/// Counts of what a run recorded, for the closing line.
#[derive(Debug, Default)]
pub(crate) struct Summary {
    pub recorded: usize,
    pub by_state: BTreeMap<String, usize>,
}

impl Summary {
    /// Counts one outcome recorded in `state`.
    pub(super) fn count(&mut self, state: &str) {
        self.recorded += 1;
        *self.by_state.entry(state.to_owned()).or_default() += 1;
    }

    /// Takes back one outcome counted in `state`: its commit was dropped.
    pub(super) fn uncount(&mut self, state: &str) {
        self.recorded -= 1;
        if let Some(n) = self.by_state.get_mut(state) {
            *n -= 1;
        }
        self.by_state.retain(|_, n| *n > 0);
    }
}

impl fmt::Display for Summary {
    /// The closing line of a run that ended well.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "done: {} outcome(s) recorded and pushed", self.recorded)?;
        if !self.by_state.is_empty() {
            let counts: Vec<String> = self
                .by_state
                .iter()
                .map(|(state, n)| format!("{n} {state}"))
                .collect();
            write!(f, " ({})", counts.join(", "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_run_says_it_recorded_nothing_without_a_list() {
        assert_eq!(
            Summary::default().to_string(),
            "done: 0 outcome(s) recorded and pushed"
        );
    }

    #[test]
    fn the_closing_line_lists_states_in_name_order() {
        let mut summary = Summary::default();
        for state in ["succeeded", "failed", "succeeded", "rejected"] {
            summary.count(state);
        }
        assert_eq!(
            summary.to_string(),
            "done: 4 outcome(s) recorded and pushed (1 failed, 1 rejected, 2 succeeded)"
        );
    }

    #[test]
    fn an_outcome_taken_back_leaves_no_state_counted_zero() {
        let mut summary = Summary::default();
        summary.count("succeeded");
        summary.count("failed");
        summary.uncount("failed");
        assert_eq!(summary.recorded, 1);
        assert_eq!(
            summary.to_string(),
            "done: 1 outcome(s) recorded and pushed (1 succeeded)"
        );
    }
}
