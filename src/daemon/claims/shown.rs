//! What the page and `/api/status` show of the dispatchers on the remote (`--http-addr` only):
//! the records of every heartbeat and claim under `refs/dispatch/`, read after a look and handed
//! to the server, which builds the fleet from them as `status` does from a clone.
//!
//! A record is read only when its ref moved, all of them in one round trip, at most every
//! [`EVERY`]; a dispatcher without `--http-addr` reads none.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use git2::Oid;

use crate::claim::protocol;
use crate::daemon::Daemon;

/// At most this often the records are read: well within the page's refresh.
const EVERY: Duration = Duration::from_secs(2);
/// At most this many records are fetched in one round; the rest in the rounds that follow.
const MAX_ROUND: usize = 512;

/// The records read so far, by ref: what the ref held, and its message ("" when it does not read).
#[derive(Default)]
pub(in crate::daemon) struct Shown {
    read_at: Option<Instant>,
    records: BTreeMap<String, (Oid, String)>,
}

impl Daemon {
    /// After a look that worked (`dispatch`: every ref under `refs/dispatch/`): reads the records
    /// that changed and hands them all to the server.
    pub(super) fn show_fleet(&mut self, dispatch: &BTreeMap<String, Oid>) {
        let now = Instant::now();
        let shown = &mut self.claims.shown;
        if self.cfg.http_addr.is_none() || shown.read_at.is_some_and(|t| now < t + EVERY) {
            return;
        }
        shown.read_at = Some(now);
        shown
            .records
            .retain(|name, (oid, _)| dispatch.get(name) == Some(oid));
        let wanted: Vec<(&str, Oid)> = dispatch
            .iter()
            .filter(|(name, _)| {
                (name.starts_with(protocol::DISPATCHERS) || name.starts_with(protocol::CLAIMS))
                    && !shown.records.contains_key(*name)
            })
            .map(|(name, oid)| (name.as_str(), *oid))
            .take(MAX_ROUND)
            .collect();
        // The remote away: the records stay as they were, and are read again next time.
        if let Ok(messages) = self.sync.note_messages(&wanted) {
            for ((name, oid), message) in wanted.iter().zip(messages) {
                // One that no longer holds `oid` is read when it is seen again; one too large
                // to read never will be, and shows as unreadable.
                let message = match message {
                    Ok(message) => message,
                    Err(crate::git::sync::SyncError::Git(e))
                        if e.code() == git2::ErrorCode::NotFound =>
                    {
                        continue;
                    }
                    Err(_) => String::new(),
                };
                shown.records.insert((*name).to_owned(), (*oid, message));
            }
        }
        self.metrics.fleet(
            shown
                .records
                .iter()
                .map(|(name, (_, message))| (name.clone(), message.clone()))
                .collect(),
        );
    }
}
