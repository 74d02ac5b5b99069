//! Escapees: at its timeout a handler's group gets SIGTERM then SIGKILL; descendants that left the
//! group, even through a chain of 40 nested sessions, are killed when the handler exits; descendants
//! that exit first are reaped, not left as zombies.
//!
//! All but the first run without isolation (`isolation: none`): an isolated run's escapees die with
//! its PID namespace (`isolation.rs`), while these kinds are left to the dispatcher's search for them.

use std::fs;

use super::{entry, index_with};
use crate::support::{RUN_DEADLINE, Strays, World, line_value, log_file};

#[test]
fn at_timeout_the_group_gets_sigterm_then_sigkill_and_nothing_of_it_survives() {
    // `stubborn-child`: the handler dies of SIGTERM, but its child ignores it and has cleared its
    // environment, so only the kill of the whole process group (not the search for `DISPATCH_ID`)
    // reaches it. `stubborn-handler`: the handler itself ignores SIGTERM and ends by SIGKILL.
    let grandchild = Strays::sleeping(31338);
    let sleeper = Strays::sleeping(31340);
    let world = World::new()
        .handler(
            "stubborn-child.sh",
            &format!(
                "#!/bin/sh\nenv -i PATH=\"$PATH\" sh -c 'trap \"\" TERM; {}' &\nwait\n",
                grandchild.command
            ),
        )
        .handler(
            "stubborn-handler.sh",
            &format!(
                "#!/bin/sh\ntrap '' TERM\n{}\necho unreachable\n",
                sleeper.command
            ),
        )
        .index(&index_with(&[
            entry(
                "stubborn-child",
                "stubborn-child.sh",
                &["timeout: 1s", "grace: 1s"],
            ),
            entry(
                "stubborn-handler",
                "stubborn-handler.sh",
                &["timeout: 1s", "grace: 1s"],
            ),
        ]))
        .build();
    world.submit("stubborn-child.yml", "kind: stubborn-child\n");
    world.submit("stubborn-handler.yml", "kind: stubborn-handler\n");

    world.run(&[]).assert_exit(0);

    let clone = world.fresh_clone();
    let child = clone.status("stubborn-child");
    assert_eq!(child["state"], "timed_out", "{child:#}");
    let handler = clone.status("stubborn-handler");
    assert_eq!(handler["state"], "timed_out", "{handler:#}");
    assert_eq!(
        handler["signal"], 9,
        "a handler ignoring SIGTERM ends by SIGKILL after the grace: {handler:#}"
    );
    let ms = handler["duration_ms"].as_u64().expect("duration_ms");
    assert!(
        (1900..15_000).contains(&ms),
        "SIGKILL came after {ms} ms, expected timeout 1s + grace 1s: {handler:#}"
    );
    grandchild.assert_gone("the grandchild that ignores SIGTERM");
    sleeper.assert_gone("the child of the handler that ignores SIGTERM");
}

#[test]
fn descendants_that_left_the_process_group_are_killed_when_the_handler_exits() {
    // Two daemons: a classic double fork (the subshell exits at once, its child starts a session of
    // its own), and the same where the escaped shell keeps a child. The handler waits until both are
    // set up, shows their sessions, and exits 0.
    let daemon = Strays::sleeping(31339);
    let chain = Strays::sleeping(31342);
    let escape = format!(
        r#"#!/bin/sh
( setsid sh -c 'echo $$ > daemon.pid; exec {daemon}' </dev/null >/dev/null 2>&1 & )
( setsid sh -c '{chain} & echo $! > chain.pid; wait' </dev/null >/dev/null 2>&1 & )
while [ ! -s daemon.pid ] || [ ! -s chain.pid ]; do sleep 0.05; done
echo "MY-SID=$(cut -d' ' -f6 /proc/$$/stat)"
echo "DAEMON-SID=$(cut -d' ' -f6 /proc/$(cat daemon.pid)/stat)"
echo "CHAIN-SID=$(cut -d' ' -f6 /proc/$(cat chain.pid)/stat)"
"#,
        daemon = daemon.command,
        chain = chain.command
    );
    let world = World::new()
        .handler("escape.sh", &escape)
        .index(&index_with(&[entry(
            "escape",
            "escape.sh",
            &["timeout: 30s", "grace: 1s", "isolation: none"],
        )]))
        .build();
    world.submit("escape.yml", "kind: escape\n");

    world.run(&[]).assert_exit(0);

    let clone = world.fresh_clone();
    let status = clone.status("escape");
    let log = clone
        .read_string(&log_file("escape", 1))
        .expect("the log is committed");
    assert_eq!(status["state"], "succeeded", "{status:#}\n{log}");
    let own = line_value(&log, "MY-SID");
    for key in ["DAEMON-SID", "CHAIN-SID"] {
        assert_ne!(
            line_value(&log, key),
            own,
            "the escapee did not leave the handler's session, so this proves nothing:\n{log}"
        );
    }
    daemon.assert_gone("the double-forked daemon");
    chain.assert_gone("the child of the double-forked daemon");
}

#[test]
fn a_chain_of_40_nested_sessions_left_behind_is_killed_to_its_last_link() {
    // Each link starts the next in a session of its own and becomes a `sleep`: killing one
    // re-parents the next to the dispatcher (a child subreaper), so the chain is found one link
    // per search. The handler waits until the deepest link is up, shows how many there are, and
    // exits 0.
    const DEPTH: u32 = 40;
    let link = Strays::sleeping(31346);
    let script = format!(
        r#"#!/bin/sh
mkdir links
cat > chain.sh <<'EOF'
echo $$ > links/$1
if [ "$1" -gt 0 ]; then setsid sh chain.sh $(($1 - 1)) </dev/null >/dev/null 2>&1 & fi
exec {link}
EOF
( setsid sh chain.sh {DEPTH} </dev/null >/dev/null 2>&1 & )
while [ ! -s links/0 ]; do sleep 0.05; done
echo "LINKS=$(ls links | wc -l)"
echo "MY-SID=$(cut -d' ' -f6 /proc/$$/stat)"
echo "DEEPEST-SID=$(cut -d' ' -f6 /proc/$(cat links/0)/stat)"
"#,
        link = link.command
    );
    let world = World::new()
        .handler("chain.sh", &script)
        .index(&index_with(&[entry(
            "chain",
            "chain.sh",
            &["timeout: 60s", "grace: 1s", "isolation: none"],
        )]))
        .build();
    world.submit("chain.yml", "kind: chain\n");

    world.run(&[]).assert_exit(0);

    let clone = world.fresh_clone();
    let status = clone.status("chain");
    let log = clone
        .read_string(&log_file("chain", 1))
        .expect("the log is committed");
    assert_eq!(status["state"], "succeeded", "{status:#}\n{log}");
    assert_eq!(line_value(&log, "LINKS"), (DEPTH + 1).to_string(), "{log}");
    assert_ne!(
        line_value(&log, "DEEPEST-SID"),
        line_value(&log, "MY-SID"),
        "the chain did not leave the handler's session, so this proves nothing:\n{log}"
    );
    link.assert_gone("a link of the chain of sessions");
}

#[test]
fn descendants_that_exit_before_the_handler_are_reaped_not_left_as_zombies() {
    // The subshell exits at once, so its child is re-parented to the dispatcher (a child
    // subreaper), where it exits too while the handler still runs: a zombie of the dispatcher's
    // unless the dispatcher reaps it. A zombie counts against the user's process limit for as long
    // as the dispatcher lives.
    let brief = r#"#!/bin/sh
( sh -c 'echo $$ > orphan.pid' & )
while [ ! -s orphan.pid ]; do sleep 0.05; done
sleep 0.3
echo "ORPHAN=$(cat orphan.pid)"
"#;
    let world = World::new()
        .handler("brief.sh", brief)
        .index(&index_with(&[entry(
            "brief",
            "brief.sh",
            &["timeout: 30s", "grace: 1s", "isolation: none"],
        )]))
        .build();
    world.submit("brief.yml", "kind: brief\n");

    let mut dispatcher =
        world.spawn(world.run_command(world.remote_arg(), &["--poll-interval", "200ms"]));
    assert!(
        dispatcher.wait_for_output("pushed", RUN_DEADLINE),
        "the outcome was not pushed: {}",
        dispatcher.output_so_far()
    );
    let log = world
        .fresh_clone()
        .read_string(&log_file("brief", 1))
        .expect("the log is committed");
    let orphan = line_value(&log, "ORPHAN");
    // Gone, or (its pid taken again) another process: not a zombie child of the dispatcher.
    if let Ok(stat) = fs::read_to_string(format!("/proc/{orphan}/stat")) {
        let fields: Vec<&str> = stat[stat.rfind(')').expect("a stat line") + 2..]
            .split(' ')
            .collect();
        let (state, parent) = (fields[0], fields[1]);
        assert!(
            !(state == "Z" && parent == dispatcher.pid().to_string()),
            "process {orphan} is a zombie of the dispatcher's: {stat}"
        );
    }
    dispatcher.terminate();
    dispatcher.wait(RUN_DEADLINE).assert_exit(0);
}
