//! What an operator watches: `/metrics` in the Prometheus text format (outcomes by kind and state,
//! run durations, queue depth, push retries and failures, time of the last successful sync, runs
//! whose id another dispatcher recorded first, requests changed after they were taken, rewrites of
//! the remote branch, claim events and claims held, paused, drained and blocked, build info) and
//! `/healthz` (200 while the last sync succeeded within three poll intervals and nothing blocks the
//! dispatcher, otherwise 503 with the reason), both served by `http.rs`; the daemon only updates
//! atomics and one small mutex.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// The `kind` label of an outcome whose kind the index does not list (or that has none).
pub(crate) const UNKNOWN_KIND: &str = "unknown";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    kind: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClaimLabels {
    event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

/// The health `/healthz` reports.
struct Health {
    last_sync: Option<Instant>,
    last_error: Option<String>,
    /// Why nothing starts (paused, drained, a broken index), while that is so.
    blocker: Option<String>,
    /// Why the tip's index, handlers or schemas are not used (`--trust`), while that is so.
    untrusted: Option<String>,
    /// What runs here now: (id, kind, since as RFC 3339), for `/api/status` and the page.
    running: Vec<(String, String, String)>,
    /// The records under the remote's `refs/dispatch/` as last read (ref, message, when a look
    /// last saw the ref move), for `/api/status` and the page.
    fleet: Vec<(String, String, Option<i64>)>,
}

pub(crate) struct Metrics {
    registry: Registry,
    outcomes: Family<OutcomeLabels, Counter>,
    duration: Histogram,
    queue_depth: Gauge,
    push_retries: Counter,
    push_failures: Counter,
    last_sync: Gauge<f64, AtomicU64>,
    already_recorded: Counter,
    changed_after_taken: Counter,
    remote_rewritten: Counter,
    claims: Family<ClaimLabels, Counter>,
    claims_held: Gauge,
    webhooks: Family<WebhookLabels, Counter>,
    paused: Gauge,
    drained: Gauge,
    blocked: Gauge,
    health: Mutex<Health>,
    poll_interval: Duration,
}

impl Metrics {
    pub(crate) fn new(poll_interval: Duration) -> Self {
        let mut registry = Registry::with_prefix("git_dispatch");
        let outcomes = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests recorded, by kind and final state",
            outcomes.clone(),
        );
        let duration = Histogram::new(exponential_buckets(0.005, 4.0, 10));
        registry.register(
            "run_duration_seconds",
            "Time handlers ran, last attempt",
            duration.clone(),
        );
        let paused = Gauge::default();
        registry.register(
            "paused",
            "1 while `control.yml` pauses every dispatcher",
            paused.clone(),
        );
        let drained = Gauge::default();
        registry.register(
            "drained",
            "1 while `control.yml` drains this dispatcher",
            drained.clone(),
        );
        let blocked = Gauge::default();
        registry.register(
            "blocked",
            "1 while this dispatcher starts nothing: paused, drained, or an index or control.yml that does not read (/healthz says why)",
            blocked.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Requests waiting in the inbox",
            queue_depth.clone(),
        );
        let push_retries = Counter::default();
        registry.register(
            "push_retries",
            "Pushes tried again after a failure",
            push_retries.clone(),
        );
        let push_failures = Counter::default();
        registry.register("push_failures", "Pushes that failed", push_failures.clone());
        let last_sync = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "last_sync_timestamp_seconds",
            "Unix time of the last successful look at the remote",
            last_sync.clone(),
        );
        let already_recorded = Counter::default();
        registry.register(
            "outcomes_already_recorded",
            "Runs whose outcome was not recorded (or was dropped before its push): the id had an \
             outcome already, recorded by another dispatcher",
            already_recorded.clone(),
        );
        let changed_after_taken = Counter::default();
        registry.register(
            "requests_changed_after_taken",
            "Request files changed after they were taken: the outcome records the version that ran, \
             the changed one stays in the inbox",
            changed_after_taken.clone(),
        );
        let remote_rewritten = Counter::default();
        registry.register(
            "remote_rewritten",
            "Times the remote branch was found rewritten: its head no longer descends from the one \
             last fetched or pushed",
            remote_rewritten.clone(),
        );
        let claims = Family::<ClaimLabels, Counter>::default();
        registry.register(
            "claim_events",
            "Claims of resources, by event: made, taken_over, released, lost (found taken by \
             another dispatcher), fenced (a run stopped because its claim could not be renewed \
             or was lost)",
            claims.clone(),
        );
        let claims_held = Gauge::default();
        registry.register(
            "claims_held",
            "Resources whose claim this dispatcher holds",
            claims_held.clone(),
        );
        let webhooks = Family::<WebhookLabels, Counter>::default();
        registry.register(
            "webhooks",
            "Push webhooks, by result: accepted (verified: the remote is looked at at once) or \
             rejected (a signature or token missing or wrong, a body too large, too many)",
            webhooks.clone(),
        );
        for result in ["accepted", "rejected"] {
            let _ = webhooks.get_or_create(&WebhookLabels { result });
        }
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .set(1);
        registry.register("build_info", "The running build", build);
        Self {
            registry,
            outcomes,
            duration,
            queue_depth,
            push_retries,
            push_failures,
            last_sync,
            already_recorded,
            changed_after_taken,
            remote_rewritten,
            claims,
            claims_held,
            webhooks,
            paused,
            drained,
            blocked,
            health: Mutex::new(Health {
                last_sync: None,
                blocker: None,
                untrusted: None,
                running: Vec::new(),
                fleet: Vec::new(),
                last_error: Some("no sync yet".to_owned()),
            }),
            poll_interval,
        }
    }

    pub(crate) fn recorded(&self, kind: Option<&str>, state: &str, duration: Option<Duration>) {
        self.outcomes
            .get_or_create(&OutcomeLabels {
                kind: kind.unwrap_or("").to_owned(),
                state: state.to_owned(),
            })
            .inc();
        if let Some(d) = duration {
            self.duration.observe(d.as_secs_f64());
        }
    }

    pub(crate) fn queue(&self, depth: usize) {
        self.queue_depth
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    pub(crate) fn push_failed(&self) {
        self.push_failures.inc();
    }

    pub(crate) fn push_retried(&self) {
        self.push_retries.inc();
    }

    pub(crate) fn already_recorded(&self) {
        self.already_recorded.inc();
    }

    pub(crate) fn changed_after_taken(&self) {
        self.changed_after_taken.inc();
    }

    pub(crate) fn remote_rewritten(&self) {
        self.remote_rewritten.inc();
    }

    /// A claim `event`: `made`, `taken_over`, `released`, `lost` or `fenced`.
    pub(crate) fn claim(&self, event: &'static str) {
        self.claims.get_or_create(&ClaimLabels { event }).inc();
    }

    /// A push webhook, `accepted` or `rejected`.
    pub(crate) fn webhook(&self, accepted: bool) {
        let result = if accepted { "accepted" } else { "rejected" };
        self.webhooks.get_or_create(&WebhookLabels { result }).inc();
    }

    pub(crate) fn claims_held(&self, held: usize) {
        self.claims_held
            .set(i64::try_from(held).unwrap_or(i64::MAX));
    }

    /// What keeps this dispatcher from starting requests, if anything: said by `/healthz` (503).
    pub(crate) fn blocked(&self, blocker: Option<&str>, paused: bool, drained: bool) {
        self.paused.set(i64::from(paused));
        self.drained.set(i64::from(drained));
        self.blocked.set(i64::from(blocker.is_some()));
        self.health
            .lock()
            .expect("no thread panics holding it")
            .blocker = blocker.map(str::to_owned);
    }

    /// What runs here now, when it changed: (id, kind, since).
    pub(crate) fn running(&self, running: Vec<(String, String, String)>) {
        let mut health = self.health.lock().expect("no thread panics holding it");
        if health.running != running {
            health.running = running;
        }
    }

    /// The records under the remote's `refs/dispatch/`, as last read: (ref, message, when a look
    /// last saw the ref move).
    pub(crate) fn fleet(&self, records: Vec<(String, String, Option<i64>)>) {
        self.health
            .lock()
            .expect("no thread panics holding it")
            .fleet = records;
    }

    /// The records of [`Metrics::fleet`].
    pub(crate) fn fleet_now(&self) -> Vec<(String, String, Option<i64>)> {
        self.health
            .lock()
            .expect("no thread panics holding it")
            .fleet
            .clone()
    }

    /// What runs here now.
    pub(crate) fn running_now(&self) -> Vec<(String, String, String)> {
        self.health
            .lock()
            .expect("no thread panics holding it")
            .running
            .clone()
    }

    /// Why the tip's configuration is not trusted, if so: `/healthz` says it (503).
    pub(crate) fn untrusted(&self, why: Option<&str>) {
        self.health
            .lock()
            .expect("no thread panics holding it")
            .untrusted = why.map(str::to_owned);
    }

    pub(crate) fn synced(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.last_sync.set(now.as_secs_f64());
        let mut health = self.health.lock().expect("no thread panics holding it");
        health.last_sync = Some(Instant::now());
        health.last_error = None;
    }

    pub(crate) fn sync_failed(&self, error: &str) {
        self.health
            .lock()
            .expect("no thread panics holding it")
            .last_error = Some(error.to_owned());
    }

    pub(super) fn text(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// `Ok` while the last sync succeeded within three poll intervals; otherwise why not.
    pub(super) fn health(&self) -> Result<(), String> {
        let health = self.health.lock().expect("no thread panics holding it");
        if let Some(blocker) = &health.blocker {
            return Err(format!("not starting requests: {blocker}"));
        }
        if let Some(why) = &health.untrusted {
            return Err(format!("not trusted: {why}"));
        }
        let fresh = health
            .last_sync
            .is_some_and(|t| t.elapsed() <= self.poll_interval * 3);
        if fresh {
            return Ok(());
        }
        Err(match (&health.last_error, health.last_sync) {
            (Some(e), _) => format!("the last sync failed: {e}"),
            (None, Some(t)) => format!("no successful sync for {:.0?}", t.elapsed()),
            (None, None) => "no sync yet".to_owned(),
        })
    }
}
