//! Reading what the dispatcher wrote: the section of a log between two marker lines, a `KEY=value`
//! line, and RFC 3339 timestamps (a Unix time formatted as the dispatcher does, and a key that sorts
//! them whatever their precision).

use super::git::EPOCH;

/// RFC 3339 (UTC, whole seconds) of a Unix time, to compare with the dispatcher's timestamps.
pub fn utc_rfc3339(secs: i64) -> String {
    // Howard Hinnant's civil_from_days.
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A sortable key for an RFC 3339 timestamp of one dispatcher (same offset): the date-time to the second,
/// then the fraction in nanoseconds, so `12:00:01Z` sorts before `12:00:01.5Z` whatever the precision.
pub fn instant_key(rfc3339: &str) -> (String, u32) {
    let (seconds, rest) = rfc3339.split_at_checked(19).unwrap_or((rfc3339, ""));
    let digits: String = rest
        .strip_prefix('.')
        .unwrap_or("")
        .chars()
        .take_while(char::is_ascii_digit)
        .take(9)
        .collect();
    let nanos = format!("{digits:0<9}").parse().unwrap_or(0);
    (seconds.to_owned(), nanos)
}

/// The text between a line `begin` and a line `end` in `log` (exclusive, with its trailing newline).
pub fn between<'a>(log: &'a str, begin: &str, end: &str) -> &'a str {
    let start = log
        .find(&format!("{begin}\n"))
        .unwrap_or_else(|| panic!("no `{begin}` line in log:\n{log}"))
        + begin.len()
        + 1;
    let len = log[start..]
        .find(&format!("{end}\n"))
        .unwrap_or_else(|| panic!("no `{end}` line after `{begin}` in log:\n{log}"));
    &log[start..start + len]
}

/// The value of the first line `KEY=value` in `log`.
pub fn line_value<'a>(log: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key}=");
    log.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no `{key}=` line in log:\n{log}"))
}

#[test]
fn harness_formats_unix_times_as_rfc3339_utc() {
    assert_eq!(utc_rfc3339(EPOCH), "2023-11-14T22:13:20Z");
    assert_eq!(utc_rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(utc_rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    assert!(instant_key("2026-01-01T12:00:01Z") < instant_key("2026-01-01T12:00:01.5Z"));
    assert!(instant_key("2026-01-01T12:00:01.25+00:00") < instant_key("2026-01-01T12:00:01.3Z"));
}
