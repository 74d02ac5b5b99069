//! What the page and `/api/status` show of the dispatchers on the remote (`--http-addr` only):
//! the records of every heartbeat and claim under `refs/dispatch/`, read after a look and handed
//! to the server, which builds the fleet from them as `status` does from a clone.
//!
//! A record is read only when its ref moved, all of them in one round trip, at most every
//! [`EVERY`], and only once the loop's turn started what it could: a read before the start of a
//! handler a webhook woke the loop for put a round trip into its pickup (figure 6 with a webhook:
//! a median of 117.5 ms against 99 ms). A dispatcher without `--http-addr` reads none.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use git2::Oid;

use crate::claim::protocol;
use crate::daemon::Daemon;
use crate::git::sync::SyncError;

/// At most this often the records are read: well within the page's refresh.
const EVERY: Duration = Duration::from_secs(2);
/// At most this many records are fetched in one round; the rest in the rounds that follow.
const MAX_ROUND: usize = 512;

/// The records read so far, by ref: what the ref held, and its message ("" when it does not read).
#[derive(Default)]
pub(in crate::daemon) struct Shown {
    read_at: Option<Instant>,
    records: BTreeMap<String, (Oid, String)>,
    /// What each ref held at the last look, and when (seconds) a look first saw it hold that, when
    /// a look saw it move: a heartbeat whose ref moves is alive, read yet or not.
    moved: BTreeMap<String, (Oid, Option<i64>)>,
    /// Whether a look saw refs not read yet: they are read after the loop started what it could.
    unread: bool,
}

impl Daemon {
    /// After a look that worked (`dispatch`: every ref under `refs/dispatch/`): notes which refs
    /// moved. Their records are read by [`Daemon::show_fleet`], later in the loop's turn.
    pub(super) fn note_fleet(&mut self, dispatch: &BTreeMap<String, Oid>) {
        if self.cfg.http_addr.is_none() {
            return;
        }
        let wall = crate::clock::now_seconds();
        let shown = &mut self.claims.shown;
        shown.moved.retain(|name, _| dispatch.contains_key(name));
        for (name, oid) in dispatch {
            match shown.moved.get_mut(name) {
                Some((held, at)) if held != oid => (*held, *at) = (*oid, Some(wall)),
                Some(_) => {}
                // First seen: when it last moved is not known.
                None => drop(shown.moved.insert(name.clone(), (*oid, None))),
            }
        }
        shown.unread = true;
    }

    /// After the loop started what it could: reads the records of the refs that changed (at most
    /// every [`EVERY`], so that a look that starts a handler is never held up by them) and hands
    /// them all to the server.
    pub(in crate::daemon) fn show_fleet(&mut self) {
        let now = Instant::now();
        let shown = &mut self.claims.shown;
        if !shown.unread || shown.read_at.is_some_and(|t| now < t + EVERY) {
            return;
        }
        shown.read_at = Some(now);
        shown.unread = false;
        read(&self.sync, shown);
        self.metrics.fleet(
            shown
                .records
                .iter()
                .map(|(name, (_, message))| {
                    let moved = shown.moved.get(name).and_then(|(_, at)| *at);
                    (name.clone(), message.clone(), moved)
                })
                .collect(),
        );
    }
}

/// Reads the records of the refs the last look saw that are not read yet or changed, in one round
/// trip.
fn read(sync: &crate::git::sync::Sync, shown: &mut Shown) {
    // A record stays shown until its ref's new commit is read, and goes with its ref.
    let dispatch = &shown.moved;
    shown.records.retain(|name, _| dispatch.contains_key(name));
    let wanted: Vec<(&str, Oid)> = dispatch
        .iter()
        .map(|(name, (oid, _))| (name, oid))
        .filter(|(name, oid)| {
            (name.starts_with(protocol::DISPATCHERS) || name.starts_with(protocol::CLAIMS))
                && shown
                    .records
                    .get(*name)
                    .is_none_or(|(read, _)| read != *oid)
        })
        .map(|(name, oid)| (name.as_str(), *oid))
        .take(MAX_ROUND)
        .collect();
    // The remote away: the records stay as they were, and are read again next time.
    let Ok(messages) = sync.read_records(&wanted) else {
        return;
    };
    for ((name, oid), message) in wanted.iter().zip(messages) {
        // One gone meanwhile is read when seen again (what was read before stays); one that does
        // not read (too large) shows as unreadable until its ref moves.
        let message = match message {
            Ok(message) => message,
            Err(SyncError::Git(e)) if e.code() == git2::ErrorCode::NotFound => continue,
            Err(_) => String::new(),
        };
        shown.records.insert((*name).to_owned(), (*oid, message));
    }
}
