//! `--bookkeeping-priority`: handlers always run at the dispatcher's starting priority; the
//! dispatcher's own work runs on a thread named `bookkeeping` while it is lowered to `SCHED_IDLE`,
//! and goes back to normal priority (`auto`, the default) once the host starves it.
//!
//! Each handler prints its own scheduling policy and those of the dispatcher's threads (field 41 of
//! `stat`: 0 `SCHED_OTHER`, 5 `SCHED_IDLE`), and the test reads the log from a fresh clone.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;

use nix::libc;

use crate::support::{DEFAULT_INDEX, GitDaemon, RUN_DEADLINE, World, line_value, log_file};

/// Prints `POLICY=` (its own) and `THREADS=` (the dispatcher's, as `(name)=policy`). With `wait` it
/// looks again, for up to ten seconds, until the `bookkeeping` thread is seen lowered: the thread
/// is made as the first handler starts, alongside it.
fn policy_handler(wait: bool) -> String {
    format!(
        r#"#!/bin/sh
# Prints "(name)=policy" for a stat file: the fields after the name, which may hold spaces.
policy() {{
  stat=$(cat "$1" 2>/dev/null) || return 0
  name=${{stat#*\(}}; name=${{name%\)*}}
  set -- ${{stat##*\) }}
  echo "($name)=${{39}}"
}}
echo "POLICY=$(policy /proc/$$/stat)"
tries={tries}
while :; do
  seen=""
  for t in /proc/$PPID/task/*; do seen="$seen $(policy "$t/stat")"; done
  tries=$((tries - 1))
  case "$seen" in *"(bookkeeping)=5"*) break ;; esac
  [ $tries -gt 0 ] || break
  sleep 0.05
done
echo "THREADS=$seen"
"#,
        tries = if wait { 200 } else { 1 }
    )
}

fn policy_world() -> World {
    World::new()
        .handler("policy.sh", &policy_handler(false))
        .handler("policy-wait.sh", &policy_handler(true))
        .handler(
            "spin.sh",
            // Keeps a processor busy for about five seconds, with no process forked.
            "#!/bin/sh\nread up _ < /proc/uptime\nend=$(( ${up%.*} + 5 ))\n\
             while :; do read up _ < /proc/uptime; [ ${up%.*} -ge $end ] && break; done\n",
        )
        .index(&format!(
            "{DEFAULT_INDEX}policy:\n  handler: policy.sh\n  timeout: 30s\n\
             policy-wait:\n  handler: policy-wait.sh\n  timeout: 30s\n\
             spin:\n  handler: spin.sh\n  timeout: 60s\n"
        ))
        .build()
}

/// The handler's own policy, and the dispatcher's threads as it saw them.
fn policies(world: &World, key: &str) -> (String, String) {
    let log = world
        .fresh_clone()
        .read_string(&log_file(key, 1))
        .expect("the log is committed");
    (
        line_value(&log, "POLICY").trim().to_owned(),
        line_value(&log, "THREADS").trim().to_owned(),
    )
}

#[test]
fn handlers_keep_the_starting_priority_and_the_bookkeeping_is_lowered_as_asked() {
    let world = policy_world();

    world.submit("normal.yml", "kind: policy\n");
    world
        .run(&["--bookkeeping-priority", "normal"])
        .assert_exit(0);
    let (mine, threads) = policies(&world, "normal");
    assert_eq!(mine, "(policy.sh)=0", "the handler runs under SCHED_OTHER");
    assert!(
        threads.contains("(git-dispatch)=0") && !threads.contains("=5"),
        "with `normal` no thread of the dispatcher is lowered: {threads}"
    );

    world.submit("idle.yml", "kind: policy-wait\n");
    world
        .run(&["--bookkeeping-priority", "idle"])
        .assert_exit(0);
    let (mine, threads) = policies(&world, "idle");
    assert_eq!(
        mine, "(policy-wait.sh)=0",
        "the handler runs under SCHED_OTHER"
    );
    assert!(
        threads.contains("(bookkeeping)=5") && threads.contains("(git-dispatch)=0"),
        "with `idle` the bookkeeping thread runs under SCHED_IDLE, the first thread does not: \
         {threads}"
    );

    // The default, `auto`: lowered while a handler runs, unless the host is too busy for that
    // (the tests around this one may keep every processor busy), which the dispatcher says.
    world.submit("auto.yml", "kind: policy-wait\n");
    let run = world.run(&[]);
    run.assert_exit(0);
    let (mine, threads) = policies(&world, "auto");
    assert_eq!(
        mine, "(policy-wait.sh)=0",
        "the handler runs under SCHED_OTHER"
    );
    assert!(
        threads.contains("(bookkeeping)=5") || run.stderr.contains("the host is busy"),
        "by default the bookkeeping thread runs under SCHED_IDLE while a handler runs, unless \
         starved: {threads}\n{run}"
    );
}

/// The first processor this process may run on.
fn a_processor() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .and_then(|list| list.trim().split([',', '-']).next()?.parse().ok())
        .expect("/proc/self/status has a Cpus_allowed_list")
}

#[test]
fn a_starved_bookkeeping_goes_back_to_normal_priority_and_says_so() {
    let world = policy_world();
    world.submit("spin.yml", "kind: spin\n");
    world.submit("after.yml", "kind: policy\n");
    // On one processor, the spinning handler leaves the lowered bookkeeping thread next to nothing
    // while it takes the next request and looks at the remote.
    let mut cmd = world.run_command(
        world.remote_arg(),
        &["--until-empty", "--poll-interval", "100ms"],
    );
    let cpu = a_processor();
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            match libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
        });
    }
    let run = world.output(cmd);
    run.assert_exit(0);
    let busy = run
        .stderr
        .lines()
        .find(|l| l.contains("the host is busy"))
        .unwrap_or_else(|| panic!("the dispatcher says it was starved\n{run}"));
    assert!(
        busy.contains("waited") && busy.ends_with("runs at normal priority for 30s"),
        "{busy}"
    );
    assert_eq!(world.fresh_clone().status("spin")["state"], "succeeded");
    let (mine, threads) = policies(&world, "after");
    assert_eq!(mine, "(policy.sh)=0");
    assert!(
        threads.contains("(git-dispatch)=0") && !threads.contains("=5"),
        "after being starved nothing of the dispatcher runs lowered: {threads}"
    );
}

#[test]
fn pushes_are_made_at_normal_priority_even_while_handlers_run() {
    let world = World::new().build();
    let marks = world.root.join("marks");
    fs::create_dir(&marks).unwrap();
    fs::set_permissions(&marks, fs::Permissions::from_mode(0o777)).unwrap();
    let marks = marks.to_str().unwrap();
    // A handler marks that it runs; the remote's hook notes, at each push, whether one ran and
    // which threads the dispatcher had.
    world.handler(
        "slow.sh",
        &format!("#!/bin/sh\ntouch {marks}/running\nsleep 0.4\nrm -f {marks}/running\n"),
    );
    world.index(&format!(
        "{DEFAULT_INDEX}slow:\n  handler: slow.sh\n  timeout: 30s\n"
    ));
    world.publish("a slow kind");
    let names: Vec<String> = (1..=8).map(|i| format!("slow-{i}.yml")).collect();
    let files: Vec<(&str, &[u8])> = names
        .iter()
        .map(|n| (n.as_str(), b"kind: slow\n".as_slice()))
        .collect();
    world.submit_many(&files);
    let hook = world.remote.join("hooks/pre-receive");
    fs::write(
        &hook,
        format!(
            "#!/bin/sh\ncat >/dev/null\npid=$(cat {marks}/pid)\n\
             [ -e {marks}/running ] && running=yes || running=no\n\
             echo \"running=$running threads= $(cat /proc/$pid/task/*/comm | tr '\\n' ' ')\" \
             >>{marks}/pushes\n"
        ),
    )
    .unwrap();
    fs::set_permissions(&hook, fs::Permissions::from_mode(0o755)).unwrap();
    let daemon = GitDaemon::serve(&world);

    let dispatcher = world.spawn(world.run_command(&daemon.url(), &["--until-empty"]));
    fs::write(format!("{marks}/pid"), dispatcher.pid().to_string()).unwrap();
    dispatcher.wait(RUN_DEADLINE).assert_exit(0);

    let pushes = fs::read_to_string(format!("{marks}/pushes")).expect("the hook ran");
    assert!(
        pushes.lines().any(|l| l.starts_with("running=yes")),
        "no push while a handler ran (the batch is a second, the handlers 3.2 s): {pushes}"
    );
    assert!(
        pushes
            .lines()
            // Any order: a thread's id may be below the process's once ids wrap around.
            .all(|l| l.contains(" git-dispatch ") && !l.contains("bookkeeping")),
        "a push was made by the lowered bookkeeping thread: {pushes}"
    );
    assert_eq!(world.fresh_clone().status("slow-8")["state"], "succeeded");
}
