//! Handler paths: a handler outside `handlers/` (by `..`, an absolute path or a symlink), or not an
//! executable file there, is rejected and never run.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::{entry, index_with};
use crate::support::World;

#[test]
fn a_handler_outside_handlers_or_not_an_executable_file_there_is_rejected_and_never_run() {
    // Every handler below would leave `ran-<kind>` in `markers/` if it ran; `inside` is the control.
    let world = World::new().build();
    let runs = |markers: &Path| {
        format!(
            "#!/bin/sh\ntouch '{}/ran-'\"$DISPATCH_KIND\"\n",
            markers.display()
        )
    };
    let outside = world.root.join("outside.sh");
    fs::write(&outside, runs(&world.markers)).expect("write outside.sh");
    fs::set_permissions(&outside, fs::Permissions::from_mode(0o755)).expect("chmod outside.sh");
    let outside = outside.to_str().expect("UTF-8 path").to_owned();
    // From `handlers/` on disk, wherever it is, twelve `..` reach `/` and then `outside.sh`.
    let climb = format!("{}{}", "../".repeat(12), outside.trim_start_matches('/'));

    world.handler("inside.sh", &runs(&world.markers));
    world
        .submitter
        .write("handlers/noexec.sh", runs(&world.markers));
    std::os::unix::fs::symlink(&outside, world.submitter.path("handlers/evil"))
        .expect("create the symlink");
    let settings = ["timeout: 30s", "grace: 1s"];
    world.index(&index_with(&[
        entry("inside", "inside.sh", &settings),
        entry("dotdot", "../../usr/bin/touch", &settings),
        entry("climb", &climb, &settings),
        entry("absolute", &outside, &settings),
        entry("link", "evil", &settings),
        entry("noexec", "noexec.sh", &settings),
        entry("missing", "missing.sh", &settings),
    ]));
    world.publish("handlers inside and outside handlers/");
    let tree = world.submitter.git(&["ls-tree", "HEAD", "handlers/"]);
    assert!(
        tree.lines()
            .any(|l| l.starts_with("120000") && l.ends_with("handlers/evil"))
            && tree
                .lines()
                .any(|l| l.starts_with("100644") && l.ends_with("handlers/noexec.sh")),
        "the fixture is not committed as intended:\n{tree}"
    );
    let kinds = [
        "inside", "dotdot", "climb", "absolute", "link", "noexec", "missing",
    ];
    let requests: Vec<(String, Vec<u8>)> = kinds
        .iter()
        .map(|k| (format!("{k}.yml"), format!("kind: {k}\n").into_bytes()))
        .collect();
    let files: Vec<(&str, &[u8])> = requests
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    world.submit_many(&files);

    world.run(&[]).assert_exit(0);

    let clone = world.fresh_clone();
    assert_eq!(clone.status("inside")["state"], "succeeded");
    let expectations: [(&str, &[&str]); 6] = [
        ("dotdot", &["../../usr/bin/touch"]),
        ("climb", &[climb.as_str()]),
        ("absolute", &[outside.as_str()]),
        ("link", &["handlers/evil", "link"]),
        ("noexec", &["handlers/noexec.sh", "executable"]),
        ("missing", &["handlers/missing.sh"]),
    ];
    for (kind, needles) in expectations {
        let status = clone.status(kind);
        assert_eq!(status["state"], "rejected", "kind `{kind}`: {status:#}");
        let error = status["error"].as_str().unwrap_or_default();
        for needle in needles {
            assert!(
                error.contains(needle),
                "kind `{kind}`: the error does not mention `{needle}`: {error}"
            );
        }
    }
    let mut ran: Vec<String> = fs::read_dir(&world.markers)
        .expect("read markers/")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    ran.sort();
    assert_eq!(
        ran,
        ["ran-inside"],
        "handlers that should have been refused ran"
    );
}
