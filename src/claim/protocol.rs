//! What several dispatchers on one remote tell each other, and where: refs under `refs/dispatch/`
//! on the remote, never commits on the branch.
//!
//! - `refs/dispatch/claims/<R>`: the claim of resource `R` ([`Claim`]). Only its holder starts
//!   requests of `R`, and only those the claim lists. Made with a compare-and-swap against "no such
//!   ref", renewed (rewritten with a new `renewed_at`) while the holder lives, released (deleted) once
//!   every request it lists has its outcome on the branch.
//! - `refs/dispatch/dispatchers/<D>`: the heartbeat of dispatcher `D` ([`Heartbeat`]), rewritten
//!   with each renewal: what `status` lists.
//!
//! Each ref names a commit with the empty tree and no parent whose message is a summary line, a blank
//! line and the record as one line of JSON. A commit (not a blob) because every Git server accepts a
//! ref to a commit; no parent, so nothing accumulates.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::layout::is_valid_name;

/// Every ref of the protocol lives under this prefix on the remote.
pub(crate) const PREFIX: &str = "refs/dispatch/";
/// Claims of resources.
pub(crate) const CLAIMS: &str = "refs/dispatch/claims/";
/// Heartbeats of dispatchers.
pub(crate) const DISPATCHERS: &str = "refs/dispatch/dispatchers/";

/// The version written into every record; a reader skips records of a later version it cannot read.
pub(crate) const VERSION: u32 = 1;

/// Whether `name` can be a ref component as it is: a valid name that Git's ref rules also allow
/// (no `..`, not ending in `.lock`).
pub(crate) fn is_ref_safe(name: &str) -> bool {
    is_valid_name(name) && !name.contains("..") && !name.ends_with(".lock")
}

/// The ref component of a resource: the resource itself where Git allows it, else `_` and the
/// SHA-256 of it in hex (no valid name starts with `_`, so the two never meet).
pub(crate) fn resource_component(resource: &str) -> String {
    if is_ref_safe(resource) {
        resource.to_owned()
    } else {
        format!("_{}", hex::encode(Sha256::digest(resource.as_bytes())))
    }
}

/// The ref that holds the claim of `resource`.
pub(crate) fn claim_ref(resource: &str) -> String {
    format!("{CLAIMS}{}", resource_component(resource))
}

/// The ref that holds the heartbeat of dispatcher `id` (a ref-safe name, checked by the config).
pub(crate) fn heartbeat_ref(id: &str) -> String {
    format!("{DISPATCHERS}{id}")
}

/// Who holds something: a dispatcher in one life (a restart is a new boot).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Holder {
    pub dispatcher: String,
    pub boot: String,
    pub host: String,
}

/// The claim of one resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Claim {
    pub version: u32,
    pub resource: String,
    #[serde(flatten)]
    pub holder: Holder,
    /// The requests the holder may start; a request is started only once it is listed.
    pub requests: Vec<Claimed>,
    /// When this holder first made the claim (RFC 3339).
    pub since: String,
    /// When it was last rewritten: a claim whose ref stays the same for a whole lease has expired.
    pub renewed_at: String,
    /// How long the claim lasts without a renewal, in milliseconds.
    pub lease_ms: u64,
    /// Whose expired claim this one took over, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub took_over_from: Option<Holder>,
}

/// A request a claim lists: its id, and its file in `requests/` (for telling it left the inbox).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Claimed {
    pub id: String,
    pub path: String,
}

/// One request a dispatcher runs, as its heartbeat lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RunningEntry {
    pub id: String,
    pub kind: String,
    pub resource: String,
    /// When its handler started (RFC 3339).
    pub since: String,
}

/// What a dispatcher says of itself, rewritten with each renewal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Heartbeat {
    pub version: u32,
    pub id: String,
    pub host: String,
    pub boot: String,
    /// The git-dispatch version the dispatcher runs.
    pub software: String,
    pub labels: Vec<String>,
    /// The kinds it defines when it takes its handlers from the host (`--handlers-dir`); `None`:
    /// those of the repository's index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kinds: Option<Vec<String>>,
    /// `--jobs`.
    pub jobs: usize,
    /// When this boot started (RFC 3339).
    pub started_at: String,
    /// When the heartbeat was written (RFC 3339): stale once older than the lease.
    pub seen_at: String,
    /// Seconds since the epoch of `seen_at`, for readers that compare times.
    pub seen_at_s: i64,
    pub lease_ms: u64,
    /// `running`; `drained` while `control.yml` drains it; `stopping` once it takes nothing new
    /// before it exits; `stopped` at a clean exit.
    pub state: String,
    /// Why it starts nothing (paused, drained, a broken index), while that is so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<String>,
    pub running: Vec<RunningEntry>,
    /// The resources whose claims it holds (or makes in the push that carries this heartbeat): a
    /// restart on the same workdir takes them back at once.
    #[serde(default)]
    pub claims: Vec<String>,
}

/// The message of the commit that carries `record`: `summary`, a blank line, one line of JSON.
pub(crate) fn encode<T: Serialize>(summary: &str, record: &T) -> String {
    let json = serde_json::to_string(record).expect("protocol records serialise");
    format!("{summary}\n\n{json}\n")
}

/// The record in a commit message written by [`encode`]; `None` when there is none of a version
/// this build reads.
pub(crate) fn decode<T: for<'de> Deserialize<'de>>(message: &str) -> Option<T> {
    let json = message.split_once("\n\n")?.1.trim();
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    if value.get("version")?.as_u64()? != u64::from(VERSION) {
        return None;
    }
    serde_json::from_value(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resource_is_its_own_ref_component_where_git_allows_it() {
        assert_eq!(claim_ref("db-main"), "refs/dispatch/claims/db-main");
        for odd in ["a..b", "x.lock", "has space", "é"] {
            let component = resource_component(odd);
            assert!(
                component.starts_with('_') && component.len() == 65,
                "{odd}: {component}"
            );
        }
        assert_ne!(resource_component("a..b"), resource_component("a..c"));
    }

    #[test]
    fn a_claim_reads_back_as_written_and_a_later_version_is_skipped() {
        let claim = Claim {
            version: VERSION,
            resource: "db".into(),
            holder: Holder {
                dispatcher: "a".into(),
                boot: "b1".into(),
                host: "h".into(),
            },
            requests: vec![Claimed {
                id: "x".into(),
                path: "requests/x.yml".into(),
            }],
            since: "2026-12-05T00:00:00Z".into(),
            renewed_at: "2026-12-05T00:00:01Z".into(),
            lease_ms: 30_000,
            took_over_from: None,
        };
        let message = encode("claim db by a", &claim);
        assert!(message.starts_with("claim db by a\n\n{"));
        assert_eq!(decode::<Claim>(&message), Some(claim));
        let later = message.replace("\"version\":1", "\"version\":2");
        assert_eq!(decode::<Claim>(&later), None);
        assert_eq!(decode::<Claim>("no record here"), None);
    }
}
