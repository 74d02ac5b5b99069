//! Where an outcome is written down, and how readers find it.
//!
//! An outcome of key `KEY` is `processed/a/b/c/KEY.yml`, `processed/a/b/c/KEY.status.json` and
//! `logs/a/b/c/KEY.log` (attempt N: `KEY@N.log`), where `a`, `b` and `c` are the first three hex
//! digits of the SHA-256 of the key, one folder each (`printf %s KEY | sha256sum | cut -c1-3`).
//!
//! The shards are there because Git stores a folder as one object listing all its entries: with
//! every outcome in one flat `processed/`, each outcome commit rewrote a tree of every outcome ever
//! recorded (10 MB at 100,000), and the commit, the push and the server's checks all grew with the
//! history. With 16 × 16 × 16 shards the trees one commit rewrites stay small: about 100 entries
//! each for `processed/` and `logs/` at 100,000 outcomes, 500 at a million.
//!
//! Outcomes recorded before the shards (`processed/KEY.status.json`, `logs/KEY.log`) are still found:
//! every reader asks [`Place::ALL`] in turn, and an id recorded in either place is used.
//!
//! No key contains `@` (ids are letters, digits, `.`, `_` and `-`; other keys add `~N`), so no key's
//! logs can take another's path. Versions before wrote attempt N as `KEY.N.log`, the path of the first
//! log of the id `KEY.N`: readers look there too ([`Place::log_names`]) when `KEY@N.log` is absent.

use git2::{Oid, Repository, Tree, TreeWalkMode, TreeWalkResult};
use sha2::{Digest, Sha256};

pub(crate) const PROCESSED: &str = "processed";
pub(crate) const LOGS: &str = "logs";
const STATUS_SUFFIX: &str = ".status.json";
/// Folder levels under `processed/` and `logs/`, one hex digit each.
const DEPTH: usize = 3;

/// Where one key's outcome files are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    /// `processed/a/b/c/KEY.*`: where outcomes are written.
    Sharded,
    /// `processed/KEY.*`: where versions before the shards wrote them; read, never written.
    Flat,
}

impl Place {
    /// The places a reader looks, newest first.
    pub(crate) const ALL: [Place; 2] = [Place::Sharded, Place::Flat];

    fn folder(self, top: &str, key: &str) -> String {
        match self {
            Place::Sharded => format!("{top}/{}", shard(key)),
            Place::Flat => top.to_owned(),
        }
    }

    /// `processed/.../KEY.yml`: the request as it ran.
    pub(crate) fn request(self, key: &str) -> String {
        format!("{}/{key}.yml", self.folder(PROCESSED, key))
    }

    /// `processed/.../KEY.status.json`.
    pub(crate) fn status(self, key: &str) -> String {
        format!("{}/{key}{STATUS_SUFFIX}", self.folder(PROCESSED, key))
    }

    /// `logs/.../KEY.log` for the first attempt, `logs/.../KEY@N.log` for attempt N.
    pub(crate) fn log(self, key: &str, attempt: u64) -> String {
        let folder = self.folder(LOGS, key);
        if attempt <= 1 {
            format!("{folder}/{key}.log")
        } else {
            format!("{folder}/{key}@{attempt}.log")
        }
    }

    /// Where a reader looks for the log of an attempt, in turn: [`Place::log`], then for a later
    /// attempt `logs/.../KEY.N.log`, as versions before wrote it.
    pub(crate) fn log_names(self, key: &str, attempt: u64) -> Vec<String> {
        let mut names = vec![self.log(key, attempt)];
        if attempt > 1 {
            names.push(format!("{}/{key}.{attempt}.log", self.folder(LOGS, key)));
        }
        names
    }
}

/// `a/b/c`: the shard folders of `key`.
pub(crate) fn shard(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let hex = hex::encode(&digest[..DEPTH.div_ceil(2)]);
    let mut shard = String::with_capacity(2 * DEPTH);
    for digit in hex.chars().take(DEPTH) {
        if !shard.is_empty() {
            shard.push('/');
        }
        shard.push(digit);
    }
    shard
}

/// Whether `key` has an outcome in the commit tree `root`, in either place. A few lookups in small
/// trees whatever the size of the history.
pub(crate) fn is_recorded(root: &Tree<'_>, key: &str) -> bool {
    Place::ALL
        .iter()
        .any(|place| root.get_path(place.status(key).as_ref()).is_ok())
}

/// Every status file in the commit tree `root`, as (key, place, blob), in either place. Reads the
/// whole of `processed/`: for commands that list outcomes, not for the dispatcher's loop.
pub(crate) fn statuses(
    repo: &Repository,
    root: &Tree<'_>,
) -> Result<Vec<(String, Place, Oid)>, git2::Error> {
    let Some(processed) = root.get_name(PROCESSED) else {
        return Ok(Vec::new());
    };
    let processed = repo.find_tree(processed.id())?;
    let mut found = Vec::new();
    processed.walk(TreeWalkMode::PreOrder, |folder, entry| {
        let name = entry.name().unwrap_or_default();
        if let Some(key) = name.strip_suffix(STATUS_SUFFIX) {
            let place = if folder.is_empty() {
                Some(Place::Flat)
            } else {
                (folder.trim_end_matches('/') == shard(key)).then_some(Place::Sharded)
            };
            if let Some(place) = place {
                found.push((key.to_owned(), place, entry.id()));
            }
        }
        TreeWalkResult::Ok
    })?;
    Ok(found)
}

/// `[A-Za-z0-9][A-Za-z0-9._-]{0,127}`: ids, kinds and resources, all of which become file names.
pub(crate) fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_the_first_three_hex_digits_of_the_sha256_of_the_key() {
        // printf %s hello | sha256sum: 2cf24dba5fb0a30e...
        assert_eq!(shard("hello"), "2/c/f");
        assert_eq!(
            Place::Sharded.status("hello"),
            "processed/2/c/f/hello.status.json"
        );
        assert_eq!(Place::Sharded.request("hello"), "processed/2/c/f/hello.yml");
        assert_eq!(Place::Sharded.log("hello", 1), "logs/2/c/f/hello.log");
        assert_eq!(Place::Sharded.log("hello", 3), "logs/2/c/f/hello@3.log");
        assert_eq!(Place::Flat.status("hello"), "processed/hello.status.json");
        assert_eq!(Place::Flat.log("hello", 2), "logs/hello@2.log");
    }

    #[test]
    fn readers_look_for_a_later_attempts_log_under_its_earlier_name_too() {
        assert_eq!(
            Place::Sharded.log_names("hello", 1),
            ["logs/2/c/f/hello.log"]
        );
        assert_eq!(
            Place::Sharded.log_names("hello", 2),
            ["logs/2/c/f/hello@2.log", "logs/2/c/f/hello.2.log"]
        );
        assert_eq!(
            Place::Flat.log_names("hello", 3),
            ["logs/hello@3.log", "logs/hello.3.log"]
        );
    }
}
