//! Recording: a run's report becomes an [`Outcome`], committed in memory on the local branch,
//! journaled, counted, and written out to the workdir in batches.
//!
//! The invariant: a run's journal entry stays until its outcome is written out (see
//! [`Daemon::persist`]), so a crash at any point finds it either recorded or interrupted, never
//! lost; and an id the tip records already gets no second outcome.

use std::fs;
use std::time::Duration;

use git2::Oid;

use crate::daemon::metrics;
use crate::daemon::withdraw::Gone;
use crate::daemon::{Daemon, DaemonError, io_err};
use crate::git::sync::SyncError;
use crate::layout;
use crate::log::event;
use crate::outcome::{AttemptLog, Outcome, State, Written};
use crate::run::runner::Report;
use crate::run::sandbox::Termination;

/// `512MiB`, `1GiB`, `1500000B`: as an index would write it.
fn show_size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ];
    UNITS
        .iter()
        .find(|(unit, _)| bytes >= *unit && bytes.is_multiple_of(*unit))
        .map_or_else(
            || format!("{bytes}B"),
            |(unit, name)| format!("{}{name}", bytes / unit),
        )
}

/// The state an attempt's handler ended in: a timeout wins over how it was killed, and only an
/// exit with status 0 is a success.
fn end_state(timed_out: bool, termination: Termination) -> State {
    if timed_out {
        State::TimedOut
    } else if termination == Termination::Exited(0) {
        State::Succeeded
    } else {
        State::Failed
    }
}

impl Daemon {
    /// Records the outcome of a run that ended.
    pub(super) fn finish(&mut self, report: Report) -> Result<(), DaemonError> {
        let running = self
            .running
            .remove(&report.key)
            .expect("every finished run was started");
        let withdrawn = self.withdrawals.cancels.remove(&report.key);
        if withdrawn.is_some() && report.attempts.is_empty() && report.fatal.is_none() {
            // Withdrawn before its handler started: it never ran.
            let tip = self.sync.tip().expect("runs start after the first sync");
            let gone = Gone::of(&running.entry, &report.key, &running.request);
            return self.record_withdrawn(tip, &gone, Vec::new(), 0);
        }
        if report.cancelled {
            event(
                "run",
                Some(&report.key),
                "not started: the dispatcher is stopping, or was paused or drained; the request \
                 stays in the inbox",
            );
            return Ok(());
        }
        // Fenced by the daemon, or by the run's own thread at its claim's deadline.
        let fenced = self.claims.fenced.remove(&report.key).or_else(|| {
            running
                .in_flight
                .is_fenced()
                .then(|| self.fence_why(&running.request.resource))
        });
        if fenced.is_some() && report.attempts.is_empty() {
            event(
                "fence",
                Some(&report.key),
                "not started: its claim was fenced; the request stays in the inbox",
            );
            return Ok(());
        }
        if let Some(fatal) = report.fatal {
            // The dispatcher could not carry the run. Attempts that did run are in the journal, and
            // the request is still in the inbox: the next start records them.
            return Err(DaemonError::Runner(fatal));
        }
        let request = &running.request;
        let mut outcome = self.outcome(
            &running.entry,
            report.key.clone(),
            Some(request.kind.clone()),
            State::Failed,
        );
        outcome.handler = Some(request.route.handler_path.clone());
        outcome.handler_blob = request.route.handler_blob;
        outcome.approvals = self.approved.remove(&report.key).unwrap_or_default();
        outcome.logs = running.prior_logs;
        for attempt in report.attempts {
            outcome.attempts = attempt.number;
            outcome.error = None;
            outcome.exit_code = None;
            outcome.signal = None;
            outcome.memory_peak = None;
            outcome.cpu_time = None;
            match attempt.result {
                Ok(finished) => {
                    outcome.started_at.get_or_insert(finished.started);
                    outcome.duration = Some(finished.duration);
                    match finished.termination {
                        Termination::Exited(code) => outcome.exit_code = Some(code),
                        Termination::Signaled(signal) => outcome.signal = Some(signal),
                    }
                    outcome.state = end_state(finished.timed_out, finished.termination);
                    if finished.timed_out {
                        outcome.error = Some(format!(
                            "timed out after {}",
                            humantime::format_duration(request.timeout)
                        ));
                    }
                    if let Some(usage) = finished.usage {
                        outcome.memory_peak = usage.peak_memory;
                        outcome.cpu_time = usage.cpu;
                        if usage.oom_killed {
                            outcome.state = State::Failed;
                            outcome.error = Some(format!(
                                "out of memory (limit {})",
                                show_size(request.route.spec.memory.unwrap_or(0))
                            ));
                        }
                    }
                    let bytes = fs::read(&attempt.log_file).map_err(io_err("handler log"))?;
                    outcome.logs.push(AttemptLog {
                        bytes,
                        summary: finished.log,
                        in_journal: true,
                    });
                }
                Err(e) => {
                    outcome.state = State::Failed;
                    outcome.error = Some(e.to_string());
                    outcome.logs.push(AttemptLog::text(&format!("{e}\n")));
                }
            }
        }
        if let Some(took) = outcome.duration {
            self.claims.ledger.ran(took);
        }
        if let Some(why) = withdrawn {
            outcome.state = State::Cancelled;
            if let Some(log) = outcome.logs.last_mut() {
                let mut bytes = std::mem::take(&mut log.bytes);
                bytes.extend_from_slice(
                    format!(
                        "\n[git-dispatch: {}; the handler was stopped]\n",
                        why.describe()
                    )
                    .as_bytes(),
                );
                *log = AttemptLog::from_bytes(bytes);
            }
            outcome.error = Some(why.describe());
            outcome.cancelled_by = why.commit.map(|c| (why.by.clone(), c));
        } else if let Some(why) = fenced {
            outcome.state = State::Abandoned;
            if let Some(log) = outcome.logs.last_mut() {
                let mut bytes = std::mem::take(&mut log.bytes);
                bytes.extend_from_slice(format!("\n[git-dispatch: {why}]\n").as_bytes());
                *log = AttemptLog::from_bytes(bytes);
            }
            outcome.error = Some(why);
        }
        self.chain(&mut outcome, request);
        crate::log::event_with(
            "record",
            Some(&outcome.key),
            &outcome.state.to_string(),
            outcome.log_fields(),
        );
        self.record(&outcome)
    }

    pub(super) fn record(&mut self, outcome: &Outcome) -> Result<(), DaemonError> {
        let mut outcome = outcome.clone();
        if let Some(error) = &outcome.error {
            outcome.error = Some(self.cfg.redactor.redact(error));
        }
        let parent = self.sync.tip();
        let written = outcome.record(&self.sync)?;
        let Some(commit) = self.written(&outcome.key, &outcome.request_path, written)? else {
            return Ok(());
        };
        for (id, _) in &outcome.follow_ups {
            event(
                "chain",
                Some(&outcome.key),
                &format!("follow-up `{id}` enqueued ({})", outcome.state),
            );
        }
        // An outcome commit that adds follow-ups changed `requests/` beyond taking one out.
        if let (Some(parent), Written::Committed { changed: None, .. }, true) =
            (parent, written, outcome.follow_ups.is_empty())
        {
            self.inbox
                .taken_out(&self.sync.repo, parent, commit, &outcome.request_path)
                .map_err(SyncError::from)?;
        }
        let rewrite: Vec<Option<&[u8]>> = outcome
            .logs
            .iter()
            .map(|l| (!l.in_journal).then_some(l.bytes.as_slice()))
            .collect();
        self.journal
            .recorded(&outcome.key, &outcome.journaled(), &rewrite)
            .map_err(io_err("journal"))?;
        let kind = self.kind_label(outcome.kind.as_deref());
        self.staged(
            &outcome.key,
            Some(kind),
            &outcome.state.to_string(),
            outcome.duration,
        )
    }

    /// Sets the follow-ups `request`'s outcome calls for (see [`crate::inbox::chain`]), from the
    /// outcome's state, exit code and last log (redacted as committed).
    pub(super) fn chain(&self, outcome: &mut Outcome, request: &crate::inbox::request::Request) {
        let state = outcome.state.to_string();
        let log = outcome.logs.last().map_or(&[][..], |l| l.bytes.as_slice());
        let parent = crate::inbox::chain::Parent {
            id: &outcome.key,
            state: &state,
            exit_code: outcome.exit_code,
            log,
        };
        outcome.follow_ups = request.follow_ups.due(&parent);
    }

    /// The `kind` label of `/metrics`: a kind the index lists, else `unknown`, so that what a
    /// submitter writes cannot grow the number of series without bound.
    fn kind_label<'k>(&self, kind: Option<&'k str>) -> &'k str {
        match (kind, &self.snapshot) {
            (Some(kind), Some(snapshot)) if snapshot.catalog.kinds().contains(&kind) => kind,
            _ => metrics::UNKNOWN_KIND,
        }
    }

    /// Says what an outcome commit found that the run did not expect; returns the commit, if one was
    /// made. A key recorded already gets none: its run is reported and its journal entry closed.
    pub(super) fn written(
        &mut self,
        key: &str,
        request_path: &str,
        written: Written,
    ) -> Result<Option<Oid>, DaemonError> {
        match written {
            Written::AlreadyRecorded => {
                event(
                    "record",
                    Some(key),
                    &format!(
                        "not recorded: `{}` already records an outcome for this id (another \
                         dispatcher recorded it while this one ran it); this run's outcome is dropped",
                        layout::Place::Sharded.status(key)
                    ),
                );
                self.metrics.already_recorded();
                if self.watchdogged.contains(key) {
                    self.journal.discard(key)
                } else {
                    self.journal.finish(key)
                }
                .map_err(io_err("journal"))?;
                Ok(None)
            }
            Written::Committed { commit, changed } => {
                if let Some(blob) = changed {
                    self.changed_after_taken(key, request_path, &format!("blob {blob}"));
                }
                Ok(Some(commit))
            }
        }
    }

    /// Reports a request file changed after it was taken: the version now there stays in the inbox.
    pub(super) fn changed_after_taken(&self, key: &str, request_path: &str, now: &str) {
        event(
            "record",
            Some(key),
            &format!(
                "`{request_path}` was changed after it was taken (it now holds {now}): the outcome \
                 records the version that ran, and the changed file stays in `requests/` as a new \
                 submission"
            ),
        );
        self.metrics.changed_after_taken();
    }

    /// Counts an outcome committed in memory, and writes the outcomes out when they are many.
    pub(super) fn staged(
        &mut self,
        key: &str,
        kind: Option<&str>,
        state: &str,
        duration: Option<Duration>,
    ) -> Result<(), DaemonError> {
        crate::failpoint::hit("recorded");
        self.staged.push(key.to_owned());
        self.metrics.recorded(kind, state, duration);
        if self.sync.staging_full() {
            self.persist()?;
        }
        self.summary.count(state);
        self.push.unpushed(key, state);
        self.syncing.checked_when_empty = false;
        self.show_progress();
        Ok(())
    }

    /// Writes the outcomes recorded in memory to the workdir, then closes their journal entries: from
    /// here on a crash finds them recorded, not interrupted.
    pub(super) fn persist(&mut self) -> Result<(), DaemonError> {
        self.sync.persist()?;
        if self.staged.is_empty() {
            return Ok(());
        }
        crate::failpoint::hit("committed");
        for key in std::mem::take(&mut self.staged) {
            if self.watchdogged.contains(&key) {
                self.journal.discard(&key)
            } else {
                self.journal.finish(&key)
            }
            .map_err(io_err("journal"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_exit_with_status_zero_in_time_succeeds() {
        assert_eq!(end_state(false, Termination::Exited(0)), State::Succeeded);
        assert_eq!(end_state(false, Termination::Exited(4)), State::Failed);
        assert_eq!(end_state(false, Termination::Signaled(9)), State::Failed);
        // A handler killed at its timeout, or one that exited 0 just as it passed, timed out.
        assert_eq!(end_state(true, Termination::Signaled(9)), State::TimedOut);
        assert_eq!(end_state(true, Termination::Exited(0)), State::TimedOut);
    }
}
