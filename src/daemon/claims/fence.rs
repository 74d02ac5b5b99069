//! Stopping the runs of a resource whose claim is fenced or lost, and the heartbeat.

use std::time::{Instant, SystemTime};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::claim::protocol::{self, Heartbeat, RunningEntry};
use crate::clock::{now_seconds, rfc3339};
use crate::daemon::Daemon;
use crate::log::event;

impl Daemon {
    /// A claim held here was found taken by another: its runs are stopped.
    pub(super) fn lost(&mut self, resource: &str) {
        self.metrics.claim("lost");
        self.claims.ledger.let_go(resource);
        self.fence_runs(
            resource,
            format!(
                "the claim on resource `{resource}` was taken over by another dispatcher while \
                 this one ran the request"
            ),
        );
    }

    /// Why a run of `resource` was stopped, or not started, when its claim went unrenewed.
    pub(in crate::daemon) fn fence_why(&self, resource: &str) -> String {
        format!(
            "fenced: the claim on resource `{resource}` could not be renewed for more than half \
             its lease ({}), so the handler was stopped before another dispatcher may take the \
             claim over",
            humantime::format_duration(self.claims.ledger.lease)
        )
    }

    /// The runs of `resource` here may start, and run, until half a lease after the last renewal
    /// of its claim that worked: their own threads enforce it (see [`InFlight`]).
    ///
    /// [`InFlight`]: crate::run::sandbox::InFlight
    pub(in crate::daemon) fn hold_runs(&self, resource: &str) {
        let Some(held) = self.claims.ledger.holds(resource) else {
            return;
        };
        let lease = self.claims.ledger.lease;
        let until = held.renewed + lease / 2;
        for run in self.running.values() {
            if run.request.resource == resource && !run.ended {
                let kill_after = run.request.route.spec.grace.min(lease / 4);
                run.in_flight.hold_until(until, kill_after);
            }
        }
    }

    /// Stops every run of `resource` here (SIGTERM now, SIGKILL after the kind's grace or a quarter
    /// of the lease, whichever is shorter); each is recorded `abandoned` with `why`.
    pub(super) fn fence_runs(&mut self, resource: &str, why: String) {
        let now = Instant::now();
        let quarter = self.claims.ledger.lease / 4;
        for (key, run) in &self.running {
            if run.ended || run.request.resource != resource || self.claims.fenced.contains_key(key)
            {
                continue;
            }
            run.in_flight.abandon();
            if let Some((pid, _)) = run.in_flight.get() {
                let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGTERM);
                let grace = run.request.route.spec.grace.min(quarter);
                self.claims.kills.push((now + grace, pid));
            }
            event("fence", Some(key), &format!("stopping the handler: {why}"));
            self.metrics.claim("fenced");
            self.claims.fenced.insert(key.clone(), why.clone());
        }
    }

    /// What this dispatcher says of itself now.
    pub(super) fn heartbeat(&self, making: &[String]) -> Heartbeat {
        let now = Instant::now();
        let wall = SystemTime::now();
        let mut running: Vec<RunningEntry> = self
            .running
            .iter()
            .filter(|(_, r)| !r.ended)
            .filter_map(|(key, r)| {
                let (_, started) = r.in_flight.get()?;
                Some(RunningEntry {
                    id: key.clone(),
                    kind: r.request.kind.clone(),
                    resource: r.request.resource.clone(),
                    since: rfc3339(wall - now.saturating_duration_since(started)),
                })
            })
            .collect();
        running.sort_by(|a, b| a.id.cmp(&b.id));
        let me = &self.claims.ledger.me;
        Heartbeat {
            version: protocol::VERSION,
            id: me.dispatcher.clone(),
            host: me.host.clone(),
            boot: me.boot.clone(),
            software: env!("CARGO_PKG_VERSION").to_owned(),
            labels: self.cfg.labels.clone(),
            kinds: self
                .snapshot
                .as_ref()
                .filter(|_| self.cfg.handlers_dir.is_some())
                .map(|s| s.catalog.kinds().into_iter().map(str::to_owned).collect()),
            jobs: self.cfg.jobs,
            started_at: self.claims.started_at.clone(),
            seen_at: rfc3339(wall),
            seen_at_s: now_seconds(),
            lease_ms: u64::try_from(self.claims.ledger.lease.as_millis()).unwrap_or(u64::MAX),
            state: match (self.claims.stopped, self.shutting_down, self.is_drained()) {
                (true, ..) => "stopped",
                (false, true, _) => "stopping",
                (false, false, true) => "drained",
                (false, false, false) => "running",
            }
            .to_owned(),
            blocked: self
                .blocked_by()
                .map(str::to_owned)
                .or_else(|| self.trust.why.clone()),
            running,
            claims: self
                .claims
                .ledger
                .held()
                .map(|(resource, _)| resource.clone())
                .chain(making.iter().cloned())
                .collect(),
        }
    }
}
