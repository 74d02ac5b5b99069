//! What keeps the dispatcher from starting requests: `control.yml` pausing every dispatcher or
//! draining this one, or a configuration that cannot be read (the index, the envelope schema,
//! `control.yml` itself). While blocked, nothing is started and nothing is rejected: requests keep
//! queueing, runs in flight finish and are recorded, withdrawals are recorded, and the claims of
//! requests that did not start are given up for the other dispatchers.

use git2::Oid;

use crate::daemon::Daemon;
use crate::inbox::control::{CONTROL_PATH, Control};
use crate::log::say;

/// `control.yml` as last read, by blob.
pub(super) struct Switches {
    /// The blob read (`None`: no file), once one was.
    read: Option<Option<Oid>>,
    control: Result<Control, String>,
    /// The blocker last said in the log, so each change is said once.
    said: Option<String>,
}

impl Default for Switches {
    fn default() -> Self {
        Self {
            read: None,
            control: Ok(Control::default()),
            said: None,
        }
    }
}

impl Daemon {
    /// Why this dispatcher starts nothing at `tip`, if so (the snapshot is that of `tip`). Each
    /// change is said in the log once and set in `/metrics` and `/healthz`.
    pub(super) fn blocker(&mut self, tip: Oid) -> Option<String> {
        let blob = self
            .sync
            .repo
            .find_commit(tip)
            .and_then(|c| c.tree())
            .ok()
            .and_then(|t| t.get_name(CONTROL_PATH).map(|e| e.id()));
        if self.switches.read != Some(blob) {
            self.switches.read = Some(blob);
            let blob = self.trusted_control(tip, blob);
            self.switches.control = match blob {
                None => Ok(Control::default()),
                Some(oid) => self
                    .sync
                    .repo
                    .find_blob(oid)
                    .map_err(|_| format!("`{CONTROL_PATH}` is not a file"))
                    .and_then(|b| Control::parse(b.content())),
            };
        }
        let me = &self.cfg.dispatcher_id;
        let (paused, drained) = match &self.switches.control {
            Ok(c) => (c.paused.clone(), c.drained(me).map(str::to_owned)),
            Err(_) => (None, None),
        };
        let index = self.snapshot.as_ref().and_then(|s| s.catalog.blocker());
        let blocker = match (&self.switches.control, paused, drained, index) {
            (Err(e), ..) => Some(format!(
                "{e}; nothing starts until a `{CONTROL_PATH}` that reads lands"
            )),
            (_, Some(reason), ..) => Some(with_reason(
                "paused (`git-dispatch resume` ends it)",
                &reason,
            )),
            (_, _, Some(reason), _) => Some(with_reason(
                &format!("dispatcher `{me}` is drained (`git-dispatch undrain {me}` ends it)"),
                &reason,
            )),
            (_, _, _, Some(e)) => Some(format!(
                "{e}; requests wait, none is rejected for it, until a fixed index lands"
            )),
            _ => self.trust_blocker(),
        };
        if self.switches.said != blocker {
            match &blocker {
                Some(why) => say(&format!("not starting requests: {why}")),
                None if self.switches.said.is_some() => say("starting requests again"),
                None => {}
            }
            let control = self.switches.control.as_ref().ok();
            self.metrics.blocked(
                blocker.as_deref(),
                control.is_some_and(|c| c.paused.is_some()),
                control.is_some_and(|c| c.drained(me).is_some()),
            );
            self.switches.said = blocker.clone();
        }
        blocker
    }

    /// The `control.yml` to obey: the tip's (`blob`), or with `--trust` the newest version an
    /// admin signed in (none: nothing paused or drained), said when that is not the tip's.
    fn trusted_control(&self, tip: Oid, blob: Option<Oid>) -> Option<Oid> {
        let (Some(verifier), Some(trust)) = (&self.verifier, &self.cfg.trust) else {
            return blob;
        };
        let repo = &self.sync.repo;
        let Ok(found) = verifier.trusted_version(repo, tip, &[CONTROL_PATH], &trust.admins) else {
            return None;
        };
        // No file, and never one an admin signed: nothing to obey, nothing to say.
        if blob.is_none() && found.at.is_none() {
            return None;
        }
        if let Some((commit, signer)) = &found.newest {
            say(&format!(
                "warning: `{CONTROL_PATH}` as changed in {} is not obeyed: that commit is {}, and \
                 only an admin's signature counts; {}",
                crate::git::view::short(*commit),
                signer.describe(),
                found.at.map_or_else(
                    || "no earlier version was signed by an admin either".to_owned(),
                    |at| format!("the version of {} is obeyed", crate::git::view::short(at))
                )
            ));
        }
        let at = found.at?;
        repo.find_commit(at)
            .and_then(|c| c.tree())
            .ok()
            .and_then(|t| t.get_name(CONTROL_PATH).map(|e| e.id()))
    }

    /// While blocked: a run taken ahead, waiting for its slot, does not start its handler.
    pub(super) fn withhold_unstarted(&self) {
        for run in self.running.values().filter(|r| !r.ended) {
            if run.in_flight.get().is_none() && run.prior_logs.is_empty() {
                run.in_flight.withhold();
            }
        }
    }

    /// Whether `control.yml` drains this dispatcher (its heartbeat says `drained`).
    pub(super) fn is_drained(&self) -> bool {
        self.switches
            .control
            .as_ref()
            .is_ok_and(|c| c.drained(&self.cfg.dispatcher_id).is_some())
    }

    /// The blocker last found, for the heartbeat.
    pub(super) fn blocked_by(&self) -> Option<&str> {
        self.switches.said.as_deref()
    }
}

fn with_reason(what: &str, reason: &str) -> String {
    if reason.is_empty() {
        what.to_owned()
    } else {
        format!("{what}: {reason}")
    }
}
