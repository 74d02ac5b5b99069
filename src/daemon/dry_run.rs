//! `run --dry-run`: what taking would do, and nothing else.

use std::time::{Instant, SystemTime};

use crate::daemon::{Daemon, DaemonError};
use crate::git::sync::SyncError;
use crate::inbox::request::Request;

impl Daemon {
    /// Fetches, then validates and routes every waiting request and says what would happen to it, in
    /// the order it would be taken. Nothing runs, nothing is committed or pushed.
    pub(crate) fn dry_run(mut self) -> Result<Vec<String>, DaemonError> {
        self.sync.fetch().map_err(|e| match e {
            e if e.is_transient() => DaemonError::Remote(e.to_string()),
            e => e.into(),
        })?;
        self.sync.reconcile()?;
        let tip = self.sync.tip().expect("reconcile sets the local branch");
        self.refresh_snapshot(tip)?;
        let entries = self
            .inbox
            .list(&self.sync.repo, tip)
            .map_err(SyncError::from)?;
        let mut lines = Vec::new();
        if let Some(why) = self.blocker(tip) {
            lines.push(format!(
                "would start nothing: {why} ({} request(s) wait)",
                entries.len()
            ));
            return Ok(lines);
        }
        for entry in entries.iter() {
            let Some(checked) = self.check_here(entry) else {
                lines.push(format!(
                    "would leave  {}  for another dispatcher",
                    entry.path
                ));
                continue;
            };
            let checked =
                checked.and_then(|request| self.secret_env(entry, &request).map(|_| request));
            lines.push(match checked {
                Ok(r) if r.not_before.is_some_and(|t| t > SystemTime::now()) => format!(
                    "would wait   {}  until {} (not_before)",
                    r.id,
                    crate::clock::rfc3339(r.not_before.expect("checked above"))
                ),
                Ok(r) => format!(
                    "would run    {}  kind={} handler={} resource={} timeout={}",
                    r.id,
                    r.kind,
                    r.route.handler_path,
                    r.resource,
                    humantime::format_duration(r.timeout)
                ),
                Err(rejection) => format!(
                    "would reject {}  {}",
                    entry.path,
                    self.cfg.redactor.redact(&rejection.error)
                ),
            });
        }
        Ok(lines)
    }

    /// Whether `request` waits for its `not_before`; the loop wakes for the earliest such time.
    pub(super) fn not_yet(&mut self, request: &Request, now: Instant) -> bool {
        let Some(at) = request.not_before else {
            return false;
        };
        let Ok(left) = at.duration_since(SystemTime::now()) else {
            return false;
        };
        let due = now + left;
        self.due_at = Some(self.due_at.map_or(due, |d| d.min(due)));
        true
    }
}
