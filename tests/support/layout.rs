//! Where the dispatcher writes an outcome, computed here independently of it: the shard folders (the
//! first three hex digits of the SHA-256 of the key), `processed/a/b/c/KEY.EXT` and the attempt logs
//! `logs/a/b/c/KEY.log`, `KEY@N.log`.

/// `a/b/c`: the shard folders of an outcome, as the README documents them: the first three hex digits
/// of the SHA-256 of the key, one folder each. Computed here independently of the dispatcher.
pub fn shard(key: &str) -> String {
    let hex = sha256_hex(key.as_bytes());
    let digits: Vec<String> = hex.chars().take(3).map(String::from).collect();
    digits.join("/")
}

/// `processed/a/b/c/KEY.EXT`: `EXT` is `yml` or `status.json`.
pub fn processed(key: &str, ext: &str) -> String {
    format!("processed/{}/{key}.{ext}", shard(key))
}

/// `logs/a/b/c/KEY.log` for attempt 1, `KEY@N.log` for attempt N.
pub fn log_file(key: &str, attempt: u32) -> String {
    if attempt <= 1 {
        format!("logs/{}/{key}.log", shard(key))
    } else {
        format!("logs/{}/{key}@{attempt}.log", shard(key))
    }
}

/// Lowercase hex SHA-256 (sha2 is a normal dependency of the crate, so tests may use it).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    use std::fmt::Write as _;
    Sha256::digest(bytes)
        .iter()
        .fold(String::with_capacity(64), |mut hex, b| {
            // Writing to a String cannot fail.
            let _ = write!(hex, "{b:02x}");
            hex
        })
}
