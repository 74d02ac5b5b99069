//! Times as the outcomes and the logs write them: RFC 3339 in UTC, one formatter for every place.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `t` as RFC 3339 with milliseconds (`2026-11-20T23:44:29.123Z`): log lines and run times.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Seconds since the epoch as RFC 3339 to the second (`2026-11-20T23:44:29Z`): commit times.
pub(crate) fn rfc3339_seconds(secs: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Now, in seconds since the epoch.
pub(crate) fn now_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_in_utc() {
        assert_eq!(rfc3339_seconds(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_millis(1500)),
            "1970-01-01T00:00:01.500Z"
        );
        assert!(now_seconds() > 1_700_000_000);
    }
}
