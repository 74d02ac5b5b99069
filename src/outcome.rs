//! [`Outcome`]: what became of one request, and how it is written down: `processed/…/KEY.yml` (the
//! request's own blob, so byte for byte by construction), `processed/…/KEY.status.json`,
//! `logs/…/KEY.log` (in the shard folders of [`crate::layout`]), and the removal of the request from `requests/`, all in one commit whose trailers make the history
//! queryable (`git log --format='%(trailers:key=Dispatch-State)'`).

use std::fmt;
use std::time::{Duration, SystemTime};

use git2::{FileMode, Oid};
use serde::Serialize;

use crate::git::verify::Signer;

use crate::clock::{rfc3339, rfc3339_seconds};
use crate::git::sync::{ID_TRAILER, Sync, SyncError};
use crate::git::tree_edit::Edit;
use crate::layout::Place;
use crate::run::capture::LogSummary;
use crate::run::journal::{Entry, Recorded};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum State {
    Succeeded,
    Failed,
    TimedOut,
    Rejected,
    Abandoned,
    /// Withdrawn: its file left `requests/` without an outcome (`git-dispatch cancel`, `git rm`).
    Cancelled,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::TimedOut => "timed_out",
            State::Rejected => "rejected",
            State::Abandoned => "abandoned",
            State::Cancelled => "cancelled",
        })
    }
}

/// The log of one attempt.
#[derive(Debug, Clone)]
pub(crate) struct AttemptLog {
    /// The log's bytes as they go into the repository (capped already).
    pub bytes: Vec<u8>,
    pub summary: LogSummary,
    /// Whether these bytes are those of the attempt's log file in the journal (what the handler
    /// wrote), so the journal need not write them again (see [`crate::run::journal::Journal::recorded`]).
    pub in_journal: bool,
}

impl AttemptLog {
    /// A log the dispatcher writes itself (a rejection, a run that could not start).
    pub(crate) fn text(text: &str) -> Self {
        Self::from_bytes(text.as_bytes().to_vec())
    }

    /// A log kept whole, as it is.
    pub(crate) fn from_bytes(bytes: Vec<u8>) -> Self {
        use sha2::Digest;
        Self {
            summary: LogSummary {
                bytes: bytes.len() as u64,
                truncated: false,
                sha256: hex::encode(sha2::Sha256::digest(&bytes)),
            },
            bytes,
            in_journal: false,
        }
    }
}

/// What became of one request.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    /// The name it is recorded under: the request's id, or for a request whose id cannot be used, a
    /// name with `~` that no id can take.
    pub key: String,
    pub kind: Option<String>,
    pub state: State,
    pub error: Option<String>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub attempts: u32,
    /// `requests/<name>`: removed by the outcome commit.
    pub request_path: String,
    /// The request's blob; copied to `processed/…/KEY.yml` when `request_is_file`.
    pub request_blob: Oid,
    pub request_is_file: bool,
    pub submitted_in: Oid,
    /// Committer time of `submitted_in`, seconds since the epoch.
    pub submitted_at: i64,
    pub started_at: Option<SystemTime>,
    pub finished_at: SystemTime,
    pub duration: Option<Duration>,
    /// The last attempt's peak memory, bytes, where it ran in a cgroup of its own.
    pub memory_peak: Option<u64>,
    /// The last attempt's CPU time, where it ran in a cgroup of its own.
    pub cpu_time: Option<Duration>,
    pub handler: Option<String>,
    pub handler_blob: Option<Oid>,
    pub dispatcher: String,
    /// Who withdrew a `cancelled` request (`Name <email>`, the author of the commit that removed
    /// its file), and that commit.
    pub cancelled_by: Option<(String, Oid)>,
    /// One per attempt, in order.
    pub logs: Vec<AttemptLog>,
    /// The follow-ups its state calls for, committed to `requests/` with it: (id, YAML).
    pub follow_ups: Vec<(String, String)>,
    /// With `run --trust`: who signed the commit that added the request, and that commit.
    pub submitter: Option<(Signer, Oid)>,
    /// The approvals it ran with.
    pub approvals: Vec<Signed>,
}

/// An approval: its approver (the verified signer of its commit), the key, the commit and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Signed {
    pub principal: String,
    pub fingerprint: String,
    pub commit: Oid,
    /// Seconds since the epoch.
    pub time: i64,
}

/// `status.json`'s `submitter`.
fn submitter_json((signer, commit): &(Signer, Oid)) -> serde_json::Value {
    let (principal, fingerprint, signature) = match signer {
        Signer::Trusted {
            principal,
            fingerprint,
        } => (
            Some(principal.as_str()),
            Some(fingerprint.as_str()),
            "trusted",
        ),
        Signer::Stranger { fingerprint } => (None, Some(fingerprint.as_str()), "unknown key"),
        Signer::Unsigned => (None, None, "unsigned"),
        Signer::Bad(_) => (None, None, "bad"),
    };
    serde_json::json!({
        "principal": principal,
        "fingerprint": fingerprint,
        "signature": signature,
        "commit": commit.to_string(),
    })
}

/// `processed/…/ID.status.json`. Fields may be added, never removed.
#[derive(Serialize)]
struct StatusFile<'a> {
    id: &'a str,
    kind: Option<&'a str>,
    state: State,
    error: Option<&'a str>,
    exit_code: Option<i32>,
    signal: Option<i32>,
    attempts: u32,
    request: &'a str,
    submitted_at: String,
    started_at: Option<String>,
    finished_at: String,
    duration_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    memory_peak_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu_ms: Option<u64>,
    handler: Option<&'a str>,
    request_blob: String,
    handler_blob: Option<String>,
    submitted_in: String,
    dispatcher: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    caused_by: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    schedule: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    submitter: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    approvals: Vec<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cancelled_by: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cancelled_in: Option<String>,
    log: Option<String>,
    log_bytes: Option<u64>,
    log_truncated: Option<bool>,
    log_sha256: Option<&'a str>,
    /// The id a request `ID.rerun-N` reruns (see [`rerun_of`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    rerun_of: Option<&'a str>,
}

impl Outcome {
    /// `logs/…/KEY.log` for the first attempt, `logs/…/KEY@N.log` for attempt N.
    pub(crate) fn log_path(&self, attempt: usize) -> String {
        Place::Sharded.log(&self.key, attempt as u64)
    }

    pub(crate) fn status_json(&self) -> String {
        let last = self.logs.last();
        let status = StatusFile {
            id: &self.key,
            kind: self.kind.as_deref(),
            state: self.state,
            error: self.error.as_deref(),
            exit_code: self.exit_code,
            signal: self.signal,
            attempts: self.attempts,
            request: &self.request_path,
            submitted_at: rfc3339_seconds(self.submitted_at),
            started_at: self.started_at.map(rfc3339),
            finished_at: rfc3339(self.finished_at),
            duration_ms: self
                .duration
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            memory_peak_bytes: self.memory_peak,
            cpu_ms: self
                .cpu_time
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            handler: self.handler.as_deref(),
            request_blob: self.request_blob.to_string(),
            handler_blob: self.handler_blob.map(|o| o.to_string()),
            submitted_in: self.submitted_in.to_string(),
            dispatcher: &self.dispatcher,
            caused_by: crate::inbox::chain::caused_by(&self.key),
            schedule: crate::inbox::schedule::schedule_of(&self.key),
            submitter: self.submitter.as_ref().map(submitter_json),
            approvals: self
                .approvals
                .iter()
                .map(|a| {
                    serde_json::json!({
                        "principal": a.principal,
                        "fingerprint": a.fingerprint,
                        "commit": a.commit.to_string(),
                        "at": crate::clock::rfc3339_seconds(a.time),
                    })
                })
                .collect(),
            cancelled_by: self.cancelled_by.as_ref().map(|(by, _)| by.as_str()),
            cancelled_in: self.cancelled_by.as_ref().map(|(_, c)| c.to_string()),
            log: last.map(|_| self.log_path(self.logs.len())),
            log_bytes: last.map(|l| l.summary.bytes),
            log_truncated: last.map(|l| l.summary.truncated),
            log_sha256: last.map(|l| l.summary.sha256.as_str()),
            rerun_of: rerun_of(&self.key),
        };
        let mut json =
            serde_json::to_string_pretty(&status).expect("a status of plain fields serialises");
        json.push('\n');
        json
    }

    /// What the dispatcher's log line about this outcome carries (`--log-format json`).
    pub(crate) fn log_fields(&self) -> crate::log::Fields<'_> {
        crate::log::Fields {
            kind: self.kind.as_deref(),
            state: Some(self.state.to_string()),
            exit_code: self.exit_code,
            signal: self.signal,
            duration_ms: self.duration.map(|d| d.as_millis()),
            attempts: Some(self.attempts),
            error: self.error.clone(),
        }
    }

    /// The commit message: a subject, the error as the body, the `Dispatch-*` trailers.
    pub(crate) fn message(&self) -> String {
        let mut detail = vec![self.kind.clone().unwrap_or_else(|| "no kind".to_owned())];
        if let Some(code) = self.exit_code {
            detail.push(format!("exit {code}"));
        }
        if let Some(signal) = self.signal {
            detail.push(format!("signal {signal}"));
        }
        if self.attempts > 1 {
            detail.push(format!("{} attempts", self.attempts));
        }
        if let Some(d) = self.duration {
            detail.push(format!("{}ms", d.as_millis()));
        }
        let mut message = format!(
            "dispatch: {} {} ({})\n\n",
            self.key,
            self.state,
            detail.join(", ")
        );
        if let Some(error) = &self.error {
            message.push_str(error.trim());
            message.push_str("\n\n");
        }
        message.push_str(&format!("{ID_TRAILER}: {}\n", self.key));
        if let Some(kind) = &self.kind {
            message.push_str(&format!("Dispatch-Kind: {kind}\n"));
        }
        message.push_str(&format!("Dispatch-State: {}\n", self.state));
        message.push_str(&format!("Dispatch-Attempts: {}\n", self.attempts));
        message
    }

    /// Writes the outcome as one commit on the local branch, unless its key has an outcome there
    /// already (see [`Written`]).
    pub(crate) fn record(&self, sync: &Sync) -> Result<Written, SyncError> {
        let logs: Vec<&[u8]> = self.logs.iter().map(|l| l.bytes.as_slice()).collect();
        commit(
            sync,
            &self.key,
            &self.request_path,
            (self.request_blob, self.request_is_file),
            Files {
                status_json: &self.status_json(),
                logs: &logs,
                follow_ups: &self.follow_ups,
            },
            &self.message(),
        )
    }

    /// What the journal keeps of the outcome until it is written out (see [`Journal::recorded`]).
    ///
    /// [`Journal::recorded`]: crate::run::journal::Journal::recorded
    pub(crate) fn journaled(&self) -> Recorded {
        Recorded {
            kind: self.kind.clone(),
            state: self.state.to_string(),
            message: self.message(),
            status_json: self.status_json(),
            request_is_file: self.request_is_file,
            logs: self.logs.len() as u32,
            follow_ups: self.follow_ups.clone(),
        }
    }
}

/// Commits an outcome again from what the journal kept of it (see [`Outcome::journaled`]).
pub(crate) fn recommit(
    sync: &Sync,
    entry: &Entry,
    recorded: &Recorded,
    logs: &[Vec<u8>],
) -> Result<Written, SyncError> {
    let request_blob = Oid::from_str(&entry.request_blob)?;
    let logs: Vec<&[u8]> = logs.iter().map(Vec::as_slice).collect();
    commit(
        sync,
        &entry.key,
        &entry.request_path,
        (request_blob, recorded.request_is_file),
        Files {
            status_json: &recorded.status_json,
            logs: &logs,
            follow_ups: &recorded.follow_ups,
        },
        &recorded.message,
    )
}

/// What [`Outcome::record`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Written {
    /// The outcome commit. `changed` is the blob the request's path holds in the tree it was made
    /// on when that is not the request that ran (the file was changed after it was taken): that
    /// version stays in `requests/`, to be taken as a submission of its own.
    Committed { commit: Oid, changed: Option<Oid> },
    /// Nothing was written: the tree the commit would have been made on records an outcome for the
    /// key already (another dispatcher recorded it while this one ran it).
    AlreadyRecorded,
}

/// One outcome commit on the local tip, checked against the tip's tree: nothing when the key has an
/// outcome there (in either place of [`crate::layout`]). The request leaves `requests/` (unless its
/// path holds another blob than `request`'s, see [`Written::Committed`]); its blob (when it is a
/// file), the status file and a log per attempt go to the shard folders of `key`.
/// What an outcome commit writes besides the request's move: its status, its logs and its
/// follow-ups.
struct Files<'a> {
    status_json: &'a str,
    logs: &'a [&'a [u8]],
    /// (id, YAML) of each follow-up, written to `requests/ID.yml` unless that path is taken.
    follow_ups: &'a [(String, String)],
}

fn commit(
    sync: &Sync,
    key: &str,
    request_path: &str,
    (request_blob, request_is_file): (Oid, bool),
    Files {
        status_json,
        logs,
        follow_ups,
    }: Files<'_>,
    message: &str,
) -> Result<Written, SyncError> {
    let mut changed = None;
    let mut taken = Vec::new();
    if let Some(tip) = sync.tip() {
        let tree = sync.repo.find_commit(tip)?.tree()?;
        if crate::layout::is_recorded(&tree, key) {
            return Ok(Written::AlreadyRecorded);
        }
        changed = tree
            .get_path(std::path::Path::new(request_path))
            .ok()
            .map(|entry| entry.id())
            .filter(|oid| *oid != request_blob);
        for (id, _) in follow_ups {
            let path = format!("{}/{id}.yml", crate::inbox::request::INBOX);
            if tree.get_path(std::path::Path::new(&path)).is_ok()
                || crate::layout::is_recorded(&tree, id)
            {
                taken.push(id.as_str());
            }
        }
    }
    let mut edits = Vec::new();
    if changed.is_none() {
        edits.push(Edit::Remove {
            path: request_path.to_owned(),
        });
    }
    if request_is_file {
        edits.push(Edit::Upsert {
            path: Place::Sharded.request(key),
            oid: request_blob,
            mode: FileMode::Blob,
        });
    }
    edits.push(Edit::Upsert {
        path: Place::Sharded.status(key),
        oid: sync.blob(status_json.as_bytes())?,
        mode: FileMode::Blob,
    });
    for (i, log) in logs.iter().enumerate() {
        edits.push(Edit::Upsert {
            path: Place::Sharded.log(key, i as u64 + 1),
            oid: sync.blob(log)?,
            mode: FileMode::Blob,
        });
    }
    for (id, yaml) in follow_ups
        .iter()
        .filter(|(id, _)| !taken.contains(&id.as_str()))
    {
        edits.push(Edit::Upsert {
            path: format!("{}/{id}.yml", crate::inbox::request::INBOX),
            oid: sync.blob(yaml.as_bytes())?,
            mode: FileMode::Blob,
        });
    }
    let commit = sync.commit(&edits, message)?;
    Ok(Written::Committed { commit, changed })
}

/// The suffix `git-dispatch rerun` gives the id of a rerun: `ID.rerun-N`.
pub(crate) const RERUN_SUFFIX: &str = ".rerun-";

/// `ID.rerun-N` (N a number without leading zeros, from 1) -> (`ID`, N); `None` for any other key.
/// The key alone says what a request reruns, so the dispatcher needs no other record of it.
pub(crate) fn rerun_number(key: &str) -> Option<(&str, u64)> {
    let (base, n) = key.rsplit_once(RERUN_SUFFIX)?;
    let well_formed = !base.is_empty()
        && n.starts_with(|c: char| matches!(c, '1'..='9'))
        && n.bytes().all(|b| b.is_ascii_digit());
    // A number too large for u64 is still a rerun's; it counts as the largest.
    well_formed.then(|| (base, n.parse().unwrap_or(u64::MAX)))
}

/// The `rerun_of` of a status: `ID` for a key `ID.rerun-N` (`^(.+)\.rerun-[1-9][0-9]*$`).
pub(crate) fn rerun_of(key: &str) -> Option<&str> {
    rerun_number(key).map(|(base, _)| base)
}

/// A name under which nothing is recorded yet: `base~1`, `base~2`, ... `~` never occurs in an id.
pub(crate) fn free_key(base: &str, taken: impl Fn(&str) -> bool) -> String {
    (1..)
        .map(|n| format!("{base}~{n}"))
        .find(|key| !taken(key))
        .expect("some suffix is free")
}

/// A file stem made safe to use in a file name: characters outside `[A-Za-z0-9._-]` become `_`.
pub(crate) fn sanitize(stem: &str) -> String {
    let mut s: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    if !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        s.insert(0, 'x');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_id_rerun_n_is_a_rerun_of_id() {
        assert_eq!(rerun_number("db-main.rerun-1"), Some(("db-main", 1)));
        assert_eq!(rerun_number("a.rerun-2.rerun-10"), Some(("a.rerun-2", 10)));
        assert_eq!(rerun_of("a.rerun-2.rerun-10"), Some("a.rerun-2"));
        assert_eq!(rerun_of("x.rerun-1"), Some("x"));
        for key in [
            "db-main",
            ".rerun-1",
            "x.rerun-",
            "x.rerun-0",
            "x.rerun-01",
            "x.rerun-1a",
            "x.rerun-1~1",
            "x-rerun-1",
        ] {
            assert_eq!(rerun_of(key), None, "{key}");
        }
    }

    fn outcome(key: &str) -> Outcome {
        Outcome {
            key: key.to_owned(),
            kind: Some("echo".to_owned()),
            state: State::Succeeded,
            error: None,
            exit_code: Some(0),
            signal: None,
            attempts: 1,
            request_path: format!("requests/{key}.yml"),
            request_blob: Oid::ZERO_SHA1,
            request_is_file: true,
            submitted_in: Oid::ZERO_SHA1,
            submitted_at: 0,
            started_at: None,
            finished_at: SystemTime::UNIX_EPOCH,
            duration: None,
            memory_peak: None,
            cpu_time: None,
            handler: None,
            handler_blob: None,
            dispatcher: "d1".to_owned(),
            cancelled_by: None,
            logs: Vec::new(),
            follow_ups: Vec::new(),
            submitter: None,
            approvals: Vec::new(),
        }
    }

    #[test]
    fn the_status_of_a_rerun_names_what_it_reruns_and_others_have_no_such_field() {
        let rerun: serde_json::Value =
            serde_json::from_str(&outcome("nightly.rerun-3").status_json()).unwrap();
        assert_eq!(rerun["rerun_of"], "nightly");
        let plain: serde_json::Value =
            serde_json::from_str(&outcome("nightly").status_json()).unwrap();
        assert!(plain.get("rerun_of").is_none(), "{plain}");
    }
}
