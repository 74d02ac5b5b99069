//! The log cap: an output under `log_limit` is logged byte for byte; a 50 MB one keeps its head and
//! tail, and the status records its full length and digest.

use sha2::{Digest, Sha256};

use super::{entry, index_with};
use crate::support::{World, log_file, sha256_hex};

#[test]
fn an_output_under_the_cap_is_logged_byte_for_byte_with_its_length_and_digest() {
    // The control of the cap below: stdout and stderr interleaved in the order written, nothing added,
    // nothing repeated, no final newline invented.
    const OUTPUT: &[u8] = b"one\ntwo on stderr\nthree";
    let world = World::new()
        .handler(
            "small.sh",
            "#!/bin/sh\nprintf 'one\\n'\nprintf 'two on stderr\\n' >&2\nprintf 'three'\n",
        )
        .index(&index_with(&[entry(
            "small",
            "small.sh",
            &["log_limit: 64KiB", "timeout: 30s", "grace: 1s"],
        )]))
        .build();
    world.submit("small.yml", "kind: small\n");

    world.run(&[]).assert_exit(0);

    let clone = world.fresh_clone();
    let log = clone
        .read(&log_file("small", 1))
        .expect("the log is committed");
    assert_eq!(
        String::from_utf8_lossy(&log),
        String::from_utf8_lossy(OUTPUT),
        "the log is not the handler's output"
    );
    let status = clone.status("small");
    assert_eq!(status["log_bytes"], OUTPUT.len(), "{status:#}");
    assert_eq!(status["log_truncated"], false, "{status:#}");
    assert_eq!(
        status["log_sha256"],
        sha256_hex(OUTPUT).as_str(),
        "{status:#}"
    );
}

#[test]
fn a_50_mb_output_is_capped_with_head_and_tail_and_the_full_length_and_digest_recorded() {
    const FLOOD_BYTES: usize = 50_000_000;
    const TAIL: &[u8] = b"TAIL-MARKER-END\n";
    let world = World::new()
        .handler(
            "flood.sh",
            "#!/bin/sh\nhead -c 50000000 /dev/zero | tr '\\0' 'a'\necho TAIL-MARKER-END\n",
        )
        .index(&index_with(&[entry(
            "flood",
            "flood.sh",
            &["log_limit: 64KiB", "timeout: 30s", "grace: 1s"],
        )]))
        .build();
    world.submit("flood.yml", "kind: flood\n");

    world.run(&[]).assert_exit(0);

    let mut hasher = Sha256::new();
    let chunk = vec![b'a'; 1 << 20];
    let mut left = FLOOD_BYTES;
    while left > 0 {
        let n = left.min(chunk.len());
        hasher.update(&chunk[..n]);
        left -= n;
    }
    hasher.update(TAIL);
    let digest: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let total = FLOOD_BYTES + TAIL.len();

    let clone = world.fresh_clone();
    let status = clone.status("flood");
    assert_eq!(status["state"], "succeeded", "{status:#}");
    assert_eq!(status["log_bytes"], total, "{status:#}");
    assert_eq!(status["log_truncated"], true, "{status:#}");
    assert_eq!(status["log_sha256"], digest.as_str(), "{status:#}");

    let log = clone
        .read(&log_file("flood", 1))
        .expect("the log is committed");
    let text = String::from_utf8_lossy(&log);
    let start = text
        .find("\n[git-dispatch: ")
        .unwrap_or_else(|| panic!("no marker line in the {}-byte log", log.len()));
    let end = start + 1 + text[start + 1..].find("]\n").expect("the marker line ends");
    let marker = &text[start + 1..=end];
    let (left_out, rest) = marker
        .strip_prefix("[git-dispatch: ")
        .and_then(|m| m.split_once(" bytes left out here; "))
        .unwrap_or_else(|| panic!("unexpected marker line: {marker}"));
    assert_eq!(
        rest,
        format!("the full output was {total} bytes, sha256 {digest}]"),
        "marker line: {marker}"
    );
    let head = &log[..start];
    let tail = &log[end + 2..];
    let left_out: usize = left_out.parse().expect("a byte count");
    assert_eq!(
        head.len() + tail.len() + left_out,
        total,
        "kept + left out is not the full output ({marker})"
    );
    assert!(
        head.len() + tail.len() <= 64 * 1024,
        "kept {} + {} bytes under `log_limit: 64KiB`",
        head.len(),
        tail.len()
    );
    assert!(
        !head.is_empty() && head.iter().all(|&b| b == b'a'),
        "the head is not the start of the output"
    );
    assert!(
        tail.ends_with(TAIL) && tail[..tail.len() - TAIL.len()].iter().all(|&b| b == b'a'),
        "the tail is not the end of the output: {:?}",
        String::from_utf8_lossy(&tail[tail.len().saturating_sub(64)..])
    );
}
