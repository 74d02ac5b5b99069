//! A hostile inbox: nested and misnamed files, a 10 MiB request, a YAML alias bomb, binary and Latin-1
//! bytes, empty, list and scalar documents, duplicate keys, unusable ids, a symlink to `/etc/passwd` and
//! a second request with a taken id are each recorded once as `rejected`; CRLF and BOM requests run;
//! nothing the files point at reaches the remote.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use serde_json::Value;

use super::{git_dir, statuses_by_request};
use crate::support::{World, log_file, processed};

/// A fixed pseudo-random byte sequence (xorshift64*), so the test is the same on every run.
fn pseudo_random_bytes(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// A YAML "billion laughs": nine levels of anchors, each a list of nine aliases of the one before.
fn alias_bomb() -> String {
    let mut yaml = String::from("kind: echo\n");
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
    for (level, name) in names.iter().enumerate() {
        let items = if level == 0 {
            vec!["\"lol\"".to_owned(); 9]
        } else {
            vec![format!("*{}", names[level - 1]); 9]
        };
        yaml.push_str(&format!("{name}: &{name} [{}]\n", items.join(",")));
    }
    yaml
}

#[test]
fn hostile_inbox_is_drained_with_one_rejection_each_and_nothing_escapes() {
    let world = World::new().build();
    let mut big = b"kind: echo\nparams:\n  blob: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 10 * 1024 * 1024));
    big.push(b'\n');
    let bomb = alias_bomb();
    let binary = pseudo_random_bytes(4096);
    let long_id = format!("kind: echo\nid: {}\n", "x".repeat(129));
    let rejected: Vec<(&str, &[u8])> = vec![
        ("sub/x.yml", b"kind: echo\n"),
        ("notes.txt", b"kind: echo\n"),
        ("big.yml", &big),
        ("bomb.yml", bomb.as_bytes()),
        ("bin.yml", &binary),
        ("latin1.yml", b"kind: echo\nparams:\n  name: \"caf\xe9\"\n"),
        ("empty.yml", b""),
        ("list.yml", b"- kind: echo\n- kind: count\n"),
        ("scalar.yml", b"just a string\n"),
        ("dupkeys.yml", b"kind: echo\nkind: count\n"),
        ("kind-escape.yml", b"kind: \"../x\"\n"),
        ("id-slash.yml", b"kind: echo\nid: \"a/b\"\n"),
        ("id-long.yml", long_id.as_bytes()),
    ];
    let accepted: Vec<(&str, &[u8])> = vec![
        ("twin-1.yml", b"kind: echo\nid: twin\n"),
        ("crlf.yml", b"kind: echo\r\nparams:\r\n  name: crlf\r\n"),
        ("bom.yml", b"\xef\xbb\xbfkind: echo\nparams:\n  name: bom\n"),
    ];
    let submitter = &world.submitter;
    for (name, bytes) in rejected.iter().chain(&accepted) {
        submitter.write(&format!("requests/{name}"), bytes);
    }
    std::os::unix::fs::symlink("/etc/passwd", submitter.path("requests/passwd.yml"))
        .expect("create symlink");
    submitter.git(&["add", "-A", "requests"]);
    submitter.commit("a hostile batch");
    submitter.push();
    world.submit(
        "twin-2.yml",
        "kind: echo\nid: twin\nparams:\n  again: true\n",
    );
    let before = git_dir(&world, &world.remote, &["rev-parse", "refs/heads/main"]);

    world.run(&[]).assert_exit(0);

    let clone = world.fresh_clone();
    assert_eq!(clone.ls("requests"), [".gitkeep"], "the inbox is not empty");
    let by_request = statuses_by_request(&clone);
    let mut expected_rejected: Vec<&str> = rejected.iter().map(|(name, _)| *name).collect();
    expected_rejected.extend(["passwd.yml", "twin-2.yml"]);
    let mut seen = 0;
    for name in &expected_rejected {
        // A nested file may be recorded as the folder it is in: either path starts with `requests/sub`.
        let path = if *name == "sub/x.yml" {
            "requests/sub".to_owned()
        } else {
            format!("requests/{name}")
        };
        let statuses: Vec<&(String, Value)> = by_request
            .iter()
            .filter(|(request, _)| **request == path || request.starts_with(&format!("{path}/")))
            .flat_map(|(_, s)| s)
            .collect();
        assert_eq!(
            statuses.len(),
            1,
            "`{path}` has {} statuses: {statuses:#?}",
            statuses.len()
        );
        let (key, status) = statuses[0];
        assert_eq!(status["state"], "rejected", "`{path}`: {status:#}");
        assert!(
            status["error"].as_str().is_some_and(|e| e.contains(&path)),
            "the error does not name `{path}`: {status:#}"
        );
        assert!(!key.contains('/'), "record key `{key}` has a slash");
        seen += 1;
    }
    for (name, _) in &accepted {
        let path = format!("requests/{name}");
        let statuses = by_request.get(&path).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(
            statuses.len(),
            1,
            "`{path}` has {} statuses: {statuses:#?}",
            statuses.len()
        );
        assert_eq!(
            statuses[0].1["state"], "succeeded",
            "`{path}`: {:#}",
            statuses[0].1
        );
        seen += 1;
    }
    let total: usize = by_request.values().map(Vec::len).sum();
    assert_eq!(
        total, seen,
        "statuses of requests nobody submitted: {by_request:#?}"
    );

    assert_eq!(clone.status("twin")["request"], "requests/twin-1.yml");
    assert_eq!(clone.status("twin~1")["request"], "requests/twin-2.yml");
    let twin_commits = clone.git(&[
        "log",
        "--format=%H",
        "--",
        &processed("twin", "yml"),
        &processed("twin", "status.json"),
        &log_file("twin", 1),
    ]);
    assert_eq!(
        twin_commits.lines().count(),
        1,
        "the first `twin` outcome was touched again"
    );

    let ids = clone.trailers("Dispatch-Id");
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(
        unique.len(),
        ids.len(),
        "an id has two outcome commits: {ids:?}"
    );
    assert_eq!(ids.len(), total, "outcome commits vs statuses");

    let changes = clone.git(&["diff", "--no-renames", "--name-status", &before, "HEAD"]);
    for line in changes.lines() {
        let (change, path) = line.split_once('\t').expect("name-status line");
        let allowed = (change == "D" && path.starts_with("requests/"))
            || (change == "A" && (path.starts_with("processed/") || path.starts_with("logs/")));
        assert!(
            allowed,
            "the run changed `{path}` ({change}); all changes:\n{changes}"
        );
    }
    let tree = clone.git(&["ls-tree", "-r", "HEAD"]);
    assert!(
        !tree
            .lines()
            .any(|l| l.starts_with("120000") || l.starts_with("160000")),
        "a symlink or submodule is left in the tree:\n{tree}"
    );
    assert_no_file_contains(&clone.dir, b"root:x:0:0");
}

/// No regular file under `dir` (outside `.git`, symlinks followed) contains `needle`.
fn assert_no_file_contains(dir: &Path, needle: &[u8]) {
    for entry in fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("dir entry").path();
        if path.file_name().is_some_and(|n| n == ".git") {
            continue;
        }
        if path.is_dir() {
            assert_no_file_contains(&path, needle);
        } else if let Ok(bytes) = fs::read(&path) {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "`{}` holds `{}`",
                path.display(),
                String::from_utf8_lossy(needle)
            );
        }
    }
}
