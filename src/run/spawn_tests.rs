//! Unit tests of `spawn`: the child is confined before it executes, as it is told.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;

use nix::sys::wait::{WaitStatus, waitpid};

use super::*;

/// Runs `script` under `sh -c` as `spawn` starts a handler, and returns its exit code and output.
fn run(
    script: &str,
    limits: &Limits,
    user: Option<&Identity>,
    gate: Option<u8>,
) -> io::Result<(i32, String)> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (out_read, out_write) = nix::unistd::pipe().expect("a pipe");
    let stdin = File::open("/dev/null").expect("/dev/null");
    let (gate_read, gate_write) = nix::unistd::pipe().expect("a pipe");
    if let Some(byte) = gate {
        File::from(gate_write)
            .write_all(&[byte])
            .expect("the gate's byte");
    }
    let args = [OsStr::new("-c"), OsStr::new(script)];
    let env = [
        ("PATH".to_string(), "/usr/bin:/bin".to_string()),
        ("ONLY".to_string(), "this".to_string()),
    ];
    let spec = Spec {
        program: Path::new("/bin/sh"),
        args: &args,
        env: &env,
        cwd: dir.path(),
        stdin: stdin.as_fd(),
        output: out_write.as_fd(),
        limits,
        user,
        gate: gate.map(|_| gate_read.as_fd()),
        mounts: None,
        cgroups: &[],
    };
    let child = spawn(&spec)?;
    drop(out_write);
    let mut output = String::new();
    File::from(out_read)
        .read_to_string(&mut output)
        .expect("the output");
    let code = match waitpid(child.pid, None).expect("waitpid") {
        WaitStatus::Exited(_, code) => code,
        other => panic!("the child ended as {other:?}"),
    };
    Ok((code, output))
}

fn field<'a>(output: &'a str, key: &str) -> &'a str {
    output
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no `{key}` in:\n{output}"))
        .trim()
}

#[test]
fn the_child_is_confined_before_it_executes() {
    let limits = Limits {
        address_space: None,
        processes: Some(4096),
        open_files: Some(77),
        file_size: Some(1 << 20),
        no_network: false,
    };
    let script = "echo pgid=$(ps -o pgid= -p $$ 2>/dev/null || cut -d' ' -f5 /proc/$$/stat); \
                  echo pid=$$; grep NoNewPrivs /proc/self/status; echo nofile=$(ulimit -n); \
                  echo fsize=$(ulimit -f); echo core=$(ulimit -c); echo cwd=$(pwd); echo ---; env | sort";
    let (code, out) = run(script, &limits, None, None).expect("spawned");
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        field(&out, "pgid="),
        field(&out, "pid="),
        "its own process group:\n{out}"
    );
    assert_eq!(field(&out, "NoNewPrivs:"), "1");
    assert_eq!(field(&out, "nofile="), "77");
    assert_eq!(field(&out, "fsize="), "2048", "1 MiB in 512-byte blocks");
    assert_eq!(field(&out, "core="), "0");
    assert!(field(&out, "cwd=").contains("tmp"), "{out}");
    let env: Vec<&str> = out
        .split_once("---\n")
        .expect("the environment")
        .1
        .lines()
        .collect();
    assert!(
        env.contains(&"ONLY=this") && env.contains(&"PATH=/usr/bin:/bin"),
        "{out}"
    );
    let shell_own = ["ONLY=", "PATH=", "PWD=", "SHLVL=", "_="];
    assert!(
        env.iter()
            .all(|v| shell_own.iter().any(|p| v.starts_with(p))),
        "only the given environment (and what the shell sets itself):\n{out}"
    );
}

#[test]
fn the_child_takes_the_identity_it_is_given() {
    let me = nix::unistd::getuid();
    // As root, the unprivileged `nobody`; as anyone else, that user (the only one it may take).
    let (uid, gid) = if me.is_root() {
        (65534, 65534)
    } else {
        (me.as_raw(), nix::unistd::getgid().as_raw())
    };
    let identity = Identity {
        uid: Uid::from_raw(uid),
        gid: Gid::from_raw(gid),
        groups: vec![Gid::from_raw(gid)],
    };
    let (code, out) = run(
        "echo uid=$(id -u) gid=$(id -g) groups=$(id -G)",
        &Limits::default(),
        Some(&identity),
        None,
    )
    .expect("spawned");
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.trim(), format!("uid={uid} gid={gid} groups={gid}"));
}

#[test]
fn a_closed_gate_keeps_the_handler_from_running_and_says_why() {
    let (code, out) =
        run("echo ran", &Limits::default(), None, Some(1)).expect("an open gate runs it");
    assert_eq!((code, out.trim()), (0, "ran"));
    let error = run("echo ran", &Limits::default(), None, Some(0))
        .expect_err("a closed gate must not run it");
    assert!(
        error.to_string().contains("the run was not admitted"),
        "{error}"
    );
}

#[test]
fn a_step_that_fails_is_named_and_nothing_runs() {
    let missing = Path::new("/nonexistent/handler");
    let devnull = File::open("/dev/null").expect("/dev/null");
    let spec = Spec {
        program: missing,
        args: &[],
        env: &[],
        cwd: Path::new("/"),
        stdin: devnull.as_fd(),
        output: devnull.as_fd(),
        limits: &Limits::default(),
        user: None,
        gate: None,
        mounts: None,
        cgroups: &[],
    };
    let error = spawn(&spec).expect_err("a missing program cannot start");
    assert_eq!(error.kind(), io::ErrorKind::NotFound, "{error}");
}
