//! Runs that did not end the ordinary way: those a previous process left in the journal (it
//! crashed or was killed), reconciled once after the first sync, and those whose worker is stuck,
//! found by the stale-run watchdog.
//!
//! The invariant: every run leaves the journal with an outcome: recorded already, recorded now as
//! `abandoned` with what its log holds and a line saying why, or (an idempotent kind with retries
//! left) resumed as its next attempt. No request stays in flight for ever.

use std::fs;
use std::path::Path;

use crate::daemon::{Daemon, DaemonError, io_err};
use crate::git::sync::SyncError;
use crate::log::{event, say};
use crate::outcome::{AttemptLog, State};

/// A run a crash interrupted, to be resumed as its next attempt (idempotent kinds with retries left).
pub(super) struct Resume {
    pub(super) next_attempt: u32,
    pub(super) logs: Vec<AttemptLog>,
}

/// Whether a run a crash interrupted at `attempt` runs again: only an idempotent kind, and only
/// while it has retries left (`retries` after the first attempt).
fn may_resume(idempotent: bool, attempt: u32, retries: u32) -> bool {
    idempotent && attempt < 1 + retries
}

impl Daemon {
    /// Reconciles the runs a previous process left in the journal: an outcome already committed is
    /// forgotten; a request still in the inbox is recorded `abandoned` with its partial log, or, for an
    /// idempotent kind with retries left, runs again as its next attempt.
    pub(super) fn recover(&mut self) -> Result<(), DaemonError> {
        let tip = self.sync.tip().expect("recover runs after the first sync");
        self.refresh_snapshot(tip)?;
        let inbox = self
            .inbox
            .list(&self.sync.repo, tip)
            .map_err(SyncError::from)?;
        for item in self.journal.entries().map_err(io_err("journal"))? {
            let entry = match item {
                Ok(entry) => entry,
                Err((path, e)) => {
                    say(&format!(
                        "journal entry `{}` is unreadable ({e}); removing it",
                        path.display()
                    ));
                    let _ = fs::remove_file(&path);
                    continue;
                }
            };
            let waiting = inbox
                .iter()
                .find(|e| e.path == entry.request_path && e.oid.to_string() == entry.request_blob);
            let Some(waiting) = waiting.filter(|_| !self.is_taken(&entry.key)) else {
                if !self.is_taken(&entry.key) && self.withdrawn_meanwhile(tip, &entry)? {
                    continue;
                }
                // Recorded before the crash: nothing is in flight.
                self.journal.finish(&entry.key).map_err(io_err("journal"))?;
                continue;
            };
            if let (Some(recorded), Some(logs)) =
                (&entry.outcome, self.journal.recorded_logs(&entry))
            {
                event(
                    "recover",
                    Some(&entry.key),
                    &format!(
                        "{}: the outcome was committed in memory when the dispatcher stopped; committing it again",
                        recorded.state
                    ),
                );
                let written = crate::outcome::recommit(&self.sync, &entry, recorded, &logs)?;
                if self
                    .written(&entry.key, &entry.request_path, written)?
                    .is_some()
                {
                    self.staged(&entry.key, recorded.kind.as_deref(), &recorded.state, None)?;
                }
                continue;
            }
            let mut logs = Vec::new();
            for attempt in 1..=entry.attempt {
                let mut bytes =
                    fs::read(self.journal.log_path(&entry.key, attempt)).unwrap_or_default();
                if attempt == entry.attempt {
                    bytes.extend_from_slice(
                        format!(
                            "\n[git-dispatch: {}; the output ends here]\n",
                            entry.interrupted()
                        )
                        .as_bytes(),
                    );
                }
                logs.push(AttemptLog::from_bytes(bytes));
            }
            let checked = self.check(waiting);
            let retry = checked.as_ref().ok().filter(|r| {
                r.id == entry.key
                    && may_resume(r.route.spec.idempotent, entry.attempt, r.route.spec.retries)
            });
            if retry.is_some() {
                event(
                    "recover",
                    Some(&entry.key),
                    &format!(
                        "attempt {} was interrupted by a crash; the kind is idempotent: running attempt {}",
                        entry.attempt,
                        entry.attempt + 1
                    ),
                );
                self.resume.insert(
                    entry.request_path.clone(),
                    Resume {
                        next_attempt: entry.attempt + 1,
                        logs,
                    },
                );
                continue;
            }
            let kind = checked.as_ref().ok().map(|r| r.kind.clone());
            let mut outcome = self.outcome(waiting, entry.key.clone(), kind, State::Abandoned);
            if let Ok(request) = &checked {
                outcome.handler = Some(request.route.handler_path.clone());
                outcome.handler_blob = request.route.handler_blob;
            }
            outcome.attempts = entry.attempt;
            outcome.started_at = entry
                .started_at
                .as_deref()
                .and_then(|at| humantime::parse_rfc3339(at).ok());
            outcome.error = Some(format!(
                "{}; {}",
                entry.interrupted(),
                match &checked {
                    Ok(r) if !r.route.spec.idempotent => format!(
                        "kind `{}` is not `idempotent: true`, so it is not run again",
                        r.kind
                    ),
                    Ok(_) => "no retries are left".to_owned(),
                    Err(_) => "the request no longer passes its checks".to_owned(),
                }
            ));
            outcome.logs = logs;
            if let Ok(request) = &checked {
                self.chain(&mut outcome, request);
            }
            crate::log::event_with(
                "recover",
                Some(&entry.key),
                &format!("abandoned: {}", outcome.error.as_deref().unwrap_or("")),
                outcome.log_fields(),
            );
            self.record(&outcome)?;
        }
        Ok(())
    }

    /// The stale-run watchdog: a run whose handler started longer ago than its timeout plus twice its
    /// grace, and whose process is gone, while its worker never reported, is recorded `abandoned`
    /// (with what its log holds and a line saying why). The sandbox kills every handler by then, so
    /// this only fires when a worker is stuck; the request does not stay in flight for ever.
    pub(super) fn watchdog(&mut self) -> Result<(), DaemonError> {
        let stale: Vec<String> = self
            .running
            .iter()
            .filter(|(_, run)| !run.ended)
            .filter_map(|(key, run)| {
                let (pid, started) = run.in_flight.get()?;
                let alive = Path::new(&format!("/proc/{pid}")).exists();
                (started.elapsed() > run.stale_after() && !alive).then(|| key.clone())
            })
            .collect();
        for key in stale {
            let run = self.running.remove(&key).expect("listed from running");
            let attempt = self.journal_attempt(&key);
            let mut log = fs::read(self.journal.log_path(&key, attempt)).unwrap_or_default();
            let why = format!(
                "the run was in flight longer than its timeout plus grace ({}) with no live handler \
                 process; the stale-run watchdog recorded it abandoned",
                humantime::format_duration(run.stale_after())
            );
            log.extend_from_slice(format!("\n[git-dispatch: {why}]\n").as_bytes());
            let mut outcome = self.outcome(
                &run.entry,
                key.clone(),
                Some(run.request.kind.clone()),
                State::Abandoned,
            );
            outcome.handler = Some(run.request.route.handler_path.clone());
            outcome.handler_blob = run.request.route.handler_blob;
            outcome.attempts = attempt;
            outcome.logs = run.prior_logs;
            outcome.logs.push(AttemptLog::from_bytes(log));
            outcome.error = Some(why.clone());
            self.chain(&mut outcome, &run.request);
            crate::log::event_with(
                "watchdog",
                Some(&key),
                &format!("abandoned: {why}"),
                outcome.log_fields(),
            );
            run.in_flight.abandon();
            // Its worker is stuck with the slot: the runs after it must not wait for it.
            if run.in_flight.give_back_slot() {
                self.stop.give_back();
            }
            self.watchdogged.insert(key);
            self.record(&outcome)?;
        }
        Ok(())
    }

    /// The attempt the journal says a run is at (1 when it cannot tell).
    fn journal_attempt(&self, key: &str) -> u32 {
        self.journal
            .entries()
            .ok()
            .into_iter()
            .flatten()
            .flatten()
            .find(|e| e.key == key)
            .map_or(1, |e| e.attempt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_idempotent_kind_with_retries_left_resumes_after_a_crash() {
        assert!(may_resume(true, 1, 1));
        assert!(may_resume(true, 2, 2));
        // Its retries are used up.
        assert!(!may_resume(true, 2, 1));
        assert!(!may_resume(true, 1, 0));
        // Not idempotent: never run again.
        assert!(!may_resume(false, 1, 5));
    }
}
