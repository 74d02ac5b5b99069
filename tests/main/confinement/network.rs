//! `network: none`: the handler has a network of its own with loopback only, so a service the host
//! listens to on 127.0.0.1 is out of its reach, while the same handler of a kind without it reaches
//! that service.

use std::net::TcpListener;

use super::{entry, index_with};
use crate::support::{World, log_file, root_or_skip};

#[test]
fn a_kind_with_network_none_reaches_only_its_own_loopback() {
    // A network namespace needs CAP_SYS_ADMIN: only a root dispatcher gives it.
    if !root_or_skip("a_kind_with_network_none_reaches_only_its_own_loopback") {
        return;
    }
    // Kept open for the test: the kernel completes connections to it without an `accept`.
    let host = TcpListener::bind("127.0.0.1:0").expect("listen on the host's loopback");
    let port = host.local_addr().expect("its address").port();
    let probe = format!(
        "#!/bin/sh\nexec python3 - <<'EOF'\n\
         import socket\n\
         try:\n    socket.create_connection(('127.0.0.1', {port}), timeout=5).close()\n    print('HOST REACHED')\n\
         except OSError as e:\n    print('HOST UNREACHABLE', e)\n\
         own = socket.socket()\n\
         own.bind(('127.0.0.1', 0))\n\
         own.listen(1)\n\
         socket.create_connection(own.getsockname(), timeout=5).close()\n\
         print('LOOPBACK WORKS')\n\
         EOF\n"
    );
    let world = World::new()
        .handler("probe.sh", &probe)
        .index(&index_with(&[
            entry("offline", "probe.sh", &["network: none", "timeout: 30s"]),
            entry("online", "probe.sh", &["timeout: 30s"]),
        ]))
        .build();
    world.submit("offline.yml", "kind: offline\n");
    world.submit("online.yml", "kind: online\n");

    world.run(&[]).assert_exit(0);

    let clone = world.fresh_clone();
    let log = |key: &str| clone.read_string(&log_file(key, 1)).unwrap_or_default();
    let offline = log("offline");
    assert_eq!(
        clone.status("offline")["state"],
        "succeeded",
        "{:#}\n{offline}",
        clone.status("offline")
    );
    assert!(
        offline.contains("HOST UNREACHABLE") && !offline.contains("HOST REACHED"),
        "`network: none` reached the host's listener:\n{offline}"
    );
    assert!(
        offline.contains("LOOPBACK WORKS"),
        "`network: none` has no working loopback:\n{offline}"
    );
    let online = log("online");
    assert!(
        online.contains("HOST REACHED") && online.contains("LOOPBACK WORKS"),
        "the control did not reach the host's listener:\n{online}"
    );
    drop(host);
}

#[test]
fn a_network_the_index_does_not_know_rejects_the_request_naming_the_field() {
    let world = World::new()
        .index(&index_with(&[entry(
            "odd",
            "echo.sh",
            &["network: sometimes"],
        )]))
        .build();
    world.submit("odd.yml", "kind: odd\n");

    world.run(&[]).assert_exit(0);

    let status = world.fresh_clone().status("odd");
    let error = status["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("`odd.network`") && error.contains("`none`") && error.contains("`host`"),
        "the error does not name the field and what it expects: {status:#}"
    );
}
