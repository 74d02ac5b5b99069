//! What the outside sees of a running dispatcher, besides its log: the opening line and `/metrics`,
//! systemd's readiness and watchdog pings, and the progress line of `--until-empty` on a terminal.
//!
//! The invariant: nothing here decides anything; systemd is told `READY=1` once, after the first
//! sync that worked, and pinged often enough (every half watchdog interval at most) while the loop
//! turns.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Mode;
use crate::daemon::{Daemon, DaemonError, io_err};
use crate::log::say;

/// What systemd is told: readiness once, and a ping every turn of the loop when it watches.
pub(super) struct Systemd {
    /// The watchdog interval systemd set (`WATCHDOG_USEC`), if it watches.
    watchdog: Option<Duration>,
    /// Whether `READY=1` was sent.
    ready_sent: bool,
}

impl Systemd {
    pub(super) fn connect() -> Self {
        Self {
            watchdog: sd_notify::watchdog_enabled(),
            ready_sent: false,
        }
    }

    /// Pings the watchdog, and says the dispatcher is ready once it has `synced`.
    pub(super) fn ping(&mut self, synced: bool) {
        if self.watchdog.is_some() {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
        }
        if !self.ready_sent && synced {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
            self.ready_sent = true;
        }
    }

    /// How long the loop may block between pings: half the watchdog interval.
    pub(super) fn wake_every(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }
}

/// The progress line's counts and when it was last shown.
pub(super) struct Progress {
    /// Requests waiting at the last look at the inbox.
    pub(super) waiting: usize,
    /// When the last progress line was shown: at most one a second.
    shown: Option<Instant>,
    started: Instant,
}

impl Progress {
    pub(super) fn new(started: Instant) -> Self {
        Self {
            waiting: 0,
            shown: None,
            started,
        }
    }
}

/// `progress: 3 of 10 done (1.5 requests/s)`.
fn progress_line(done: usize, total: usize, elapsed: Duration) -> String {
    let rate = done as f64 / elapsed.as_secs_f64().max(0.001);
    format!("progress: {done} of {total} done ({rate:.1} requests/s)")
}

impl Daemon {
    /// Serves `/metrics` if asked to, says what is served, and notices outcomes a previous process
    /// recorded and did not push.
    pub(super) fn announce(&mut self) -> Result<(), DaemonError> {
        if let Some(addr) = self.cfg.http_addr {
            let http = crate::daemon::http::Http {
                metrics: Arc::clone(&self.metrics),
                wake: self.sender.clone(),
                secret: self.cfg.webhook_secret.clone(),
                limit: std::sync::Mutex::default(),
                repo: self.cfg.workdir.join("repo.git"),
                branch: self.cfg.branch.clone(),
                me: self.cfg.dispatcher_id.clone(),
            };
            http.serve(addr)
                .map_err(io_err(format!("could not serve HTTP on `{addr}`")))?;
            let hooks = match self.cfg.webhook_secret {
                Some(_) => format!(", push webhooks on http://{addr}/hooks/push"),
                None => String::new(),
            };
            say(&format!(
                "page on http://{addr}/, metrics on http://{addr}/metrics, health on \
                 http://{addr}/healthz{hooks}"
            ));
        }
        say(&format!(
            "serving `{}` (branch `{}`) from `{}`",
            self.cfg.remote,
            self.cfg.branch,
            self.cfg.workdir.display()
        ));
        if !self.sync.unpushed_commits()?.is_empty() {
            self.push.mark_unpushed();
        }
        Ok(())
    }

    /// `--until-empty` on a terminal: done of total and the rate, at most once a second.
    pub(super) fn show_progress(&mut self) {
        if self.cfg.mode != Mode::UntilEmpty || !std::io::stderr().is_terminal() {
            return;
        }
        if self
            .progress
            .shown
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.progress.shown = Some(Instant::now());
        let done = self.summary.recorded;
        let total = done + self.running.len() + self.progress.waiting;
        say(&progress_line(done, total, self.progress.started.elapsed()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_line_gives_done_of_total_and_the_rate() {
        assert_eq!(
            progress_line(3, 10, Duration::from_secs(2)),
            "progress: 3 of 10 done (1.5 requests/s)"
        );
        // At the very start the rate does not divide by zero.
        assert_eq!(
            progress_line(0, 4, Duration::ZERO),
            "progress: 0 of 4 done (0.0 requests/s)"
        );
    }
}
