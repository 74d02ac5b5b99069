//! Reaching the remote over real servers (OpenSSH's `sshd`, smart HTTP through `git http-backend`
//! behind basic auth) with both transports, and what the dispatcher does when it cannot: a drain that
//! could not look at the remote is not a drain, a give-up lets the running handler finish, ssh never
//! prompts, a password in the URL is neither shown nor stored.

use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::support::servers::{Http, Sshd};
use crate::support::{RunOutput, World, add_kinds, wait_until};

/// Every file and folder name under `dir`, and every file's bytes, that hold `needle`.
fn mentions(dir: &Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.to_string_lossy().contains(needle) {
            found.push(path.display().to_string());
        }
        if path.is_dir() && !path.is_symlink() {
            found.extend(mentions(&path, needle));
        } else if fs::read(&path).is_ok_and(|b| String::from_utf8_lossy(&b).contains(needle)) {
            found.push(format!("{} (its content)", path.display()));
        }
    }
    found
}

fn assert_not_drained(out: &RunOutput) {
    out.assert_exit(3);
    assert!(
        out.stderr.contains("not drained"),
        "it does not say the inbox was not drained:\n{out}"
    );
    assert!(
        !out.stderr.contains("done:"),
        "it claims to be done:\n{out}"
    );
}

#[test]
fn until_empty_exits_3_when_the_http_remote_is_down_after_a_sync() {
    let world = World::new().build();
    let Some(mut http) = Http::serve(&world, "until_empty_exits_3_when_the_http_remote_is_down")
    else {
        return;
    };
    let url = http.url_with_password();
    world.run_via(&url, &[]).assert_exit(0);
    http.stop();
    world.submit("stranded.yml", "kind: echo\n");

    let out = world.run_via(&url, &["--push-attempts", "3"]);

    assert_not_drained(&out);
    assert_eq!(
        world.fresh_clone().ls("requests"),
        [".gitkeep", "stranded.yml"]
    );
}

#[test]
fn until_empty_exits_3_over_ssh_with_a_wrong_key_and_names_what_it_tried() {
    let world = World::new().build();
    let Some(sshd) = Sshd::serve(&world, "until_empty_exits_3_over_ssh_with_a_wrong_key") else {
        return;
    };
    sshd.trust(&world);
    let url = sshd.url(&world);
    let key = sshd.key.to_str().expect("utf-8");
    world.submit("first.yml", "kind: echo\n");
    world.run_via(&url, &["--ssh-key", key]).assert_exit(0);
    assert_eq!(world.fresh_clone().status("first")["state"], "succeeded");
    world.submit("second.yml", "kind: echo\n");

    let wrong = sshd.wrong_key.to_str().expect("utf-8");
    let out = world.run_via(&url, &["--ssh-key", wrong, "--push-attempts", "3"]);

    assert_not_drained(&out);
    assert!(
        out.stderr.contains(wrong) && out.stderr.contains("--git-transport cli"),
        "the error does not name the key it tried and the other transport:\n{out}"
    );
}

#[test]
fn an_unknown_ssh_host_key_names_the_known_hosts_file_libgit2_read() {
    let world = World::new().build();
    let Some(sshd) = Sshd::serve(&world, "an_unknown_ssh_host_key_names_the_known_hosts_file")
    else {
        return;
    };
    world.submit("waits.yml", "kind: echo\n");
    let key = sshd.key.to_str().expect("utf-8");

    let out = world.run_via(
        &sshd.url(&world),
        &["--ssh-key", key, "--push-attempts", "1"],
    );

    out.assert_exit(3);
    let known_hosts = world.home.join(".ssh/known_hosts");
    assert!(
        out.stderr.contains(&format!("`{}`", known_hosts.display()))
            && out.stderr.contains("--git-transport cli"),
        "the error does not say where the host key was looked for:\n{out}"
    );
}

#[test]
fn cli_transport_runs_ssh_in_batch_mode_so_it_never_prompts() {
    let world = World::new().build();
    let Some(sshd) = Sshd::serve(&world, "cli_transport_runs_ssh_in_batch_mode") else {
        return;
    };
    world.submit("waits.yml", "kind: echo\n");
    // ssh asks its questions (here: whether to trust an unknown host key) through SSH_ASKPASS when
    // it may; in batch mode it asks nothing and fails.
    let asked = world.markers.join("asked");
    let askpass = world.root.join("askpass.sh");
    fs::write(
        &askpass,
        format!("#!/bin/sh\necho \"$1\" >> {}\nexit 1\n", asked.display()),
    )
    .expect("write askpass");
    fs::set_permissions(
        &askpass,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod askpass");
    let mut cmd = world.run_command(
        &sshd.url(&world),
        &[
            "--until-empty",
            "--git-transport",
            "cli",
            "--push-attempts",
            "1",
        ],
    );
    cmd.env("SSH_ASKPASS", &askpass)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("DISPLAY", ":0");

    let out = world.output(cmd);

    out.assert_exit(3);
    assert!(
        !asked.exists(),
        "ssh prompted: {:?}\n{out}",
        fs::read_to_string(&asked)
    );
    assert!(out.stderr.contains("Host key verification failed"), "{out}");
}

#[test]
fn cli_transport_uses_the_users_git_ssh_command() {
    let world = World::new().build();
    let Some(sshd) = Sshd::serve(&world, "cli_transport_uses_the_users_git_ssh_command") else {
        return;
    };
    world.submit("over-ssh.yml", "kind: echo\n");
    let mut cmd = world.run_command(
        &sshd.url(&world),
        &["--until-empty", "--git-transport", "cli"],
    );
    cmd.env(
        "GIT_SSH_COMMAND",
        format!(
            "ssh -o BatchMode=yes -o IdentitiesOnly=yes -i {} -o UserKnownHostsFile={}",
            sshd.key.display(),
            sshd.known_hosts_file().display()
        ),
    );

    world.output(cmd).assert_exit(0);

    assert_eq!(world.fresh_clone().status("over-ssh")["state"], "succeeded");
}

/// A drain over HTTP with the password in the URL and the default workdir, with `transport`: the
/// credentials work, and the password is in no line shown and no file or folder name written.
fn password_stays_out_of_sight(transport: &str) {
    let world = World::new().build();
    let Some(mut http) = Http::serve(&world, "password_in_the_remote_url") else {
        return;
    };
    world.submit("private.yml", "kind: echo\n");
    let state = world.root.join("state");
    let url = http.url_with_password();
    let run = |world: &World| {
        let mut cmd = world.dispatcher();
        cmd.args(["run", "--until-empty", "--push-attempts", "2"])
            .args(["--git-transport", transport, "--remote"])
            .arg(&url)
            .arg("--lock-dir")
            .arg(&world.locks)
            .env("XDG_STATE_HOME", &state);
        world.output(cmd)
    };

    let out = run(&world);

    out.assert_exit(0);
    assert_eq!(world.fresh_clone().status("private")["state"], "succeeded");
    assert!(!out.all_output().contains(Http::PASSWORD), "{out}");
    assert!(
        out.stderr.contains(&http.url(&format!("{}@", Http::USER))),
        "the remote is not named without its password:\n{out}"
    );
    assert_eq!(mentions(&state, Http::PASSWORD), Vec::<String>::new());

    http.stop();
    world.submit("later.yml", "kind: echo\n");
    let out = run(&world);
    out.assert_exit(3);
    assert!(!out.all_output().contains(Http::PASSWORD), "{out}");
    assert_eq!(mentions(&state, Http::PASSWORD), Vec::<String>::new());
}

#[test]
fn a_password_in_the_remote_url_is_neither_shown_nor_stored_with_libgit2() {
    password_stays_out_of_sight("libgit2");
}

#[test]
fn a_password_in_the_remote_url_is_neither_shown_nor_stored_with_the_git_cli() {
    password_stays_out_of_sight("cli");
}

#[test]
fn a_missing_local_remote_is_a_configuration_error() {
    let world = World::new().build();
    let missing = world.root.join("no/such/path.git");

    let out = world.run_via(missing.to_str().expect("utf-8"), &[]);

    out.assert_exit(2);
    assert!(
        out.stderr.contains("does not exist") && out.stderr.contains("no/such/path.git"),
        "{out}"
    );
}

#[test]
fn giving_up_on_the_remote_lets_the_running_handler_finish_and_records_it_locally() {
    let world = World::new().build();
    let markers = world.markers.display().to_string();
    // Runs until the test lets it finish (bounded: 30 s), so the give-up happens while it runs.
    let gated = format!(
        "#!/bin/sh\ntouch '{markers}/started'\ni=0\n\
         while [ ! -e '{markers}/go' ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done\n\
         echo finished the work\n"
    );
    add_kinds(&world, &[("gated", &gated, "")]);
    world.submit("partway.yml", "kind: gated\n");
    let cmd = world.run_command(
        world.remote_arg(),
        &[
            "--until-empty",
            "--poll-interval",
            "100ms",
            "--push-attempts",
            "2",
        ],
    );
    let mut dispatcher = world.spawn(cmd);
    assert!(
        wait_until(Duration::from_secs(30), || world
            .markers
            .join("started")
            .exists()),
        "the handler did not start: {}",
        dispatcher.output_so_far()
    );
    let away = world.root.join("remote-away.git");
    fs::rename(&world.remote, &away).expect("move the remote away");

    let waits = dispatcher.wait_for_output("waiting for 1 running", Duration::from_secs(30));
    fs::write(world.markers.join("go"), "").expect("let the handler finish");
    assert!(
        waits,
        "it did not wait for the running handler: {}",
        dispatcher.output_so_far()
    );
    let out = dispatcher.wait(Duration::from_secs(30));
    out.assert_exit(3);
    assert!(out.stderr.contains("partway"), "{out}");
    fs::rename(&away, &world.remote).expect("move the remote back");

    world.run(&[]).assert_exit(0);

    let status = world.fresh_clone().status("partway");
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(status["attempts"], 1, "{status}");
}

/// The names of the packs in the repository at `git_dir` (a pack is named by its checksum).
fn pack_names(git_dir: &Path) -> std::collections::BTreeSet<String> {
    fs::read_dir(git_dir.join("objects").join("pack"))
        .map(|dir| {
            dir.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.ends_with(".pack"))
                .collect()
        })
        .unwrap_or_default()
}

/// The remote keeps every pack pushed to it as it came (`git receive-pack` unpacks one of fewer than
/// 100 objects into loose ones by default).
fn keep_every_pack(world: &World) {
    let remote = world.remote.to_str().expect("a UTF-8 path");
    world
        .submitter
        .git(&["--git-dir", remote, "config", "receive.unpackLimit", "1"]);
}

/// The packs on the remote since `before` that the workdir holds too.
fn sent_as_written(world: &World, before: &std::collections::BTreeSet<String>) -> Vec<String> {
    let workdir = pack_names(&world.work.join("repo.git"));
    pack_names(&world.remote)
        .difference(before)
        .filter(|name| workdir.contains(*name))
        .cloned()
        .collect()
}

/// Over `git://`, a push sends the pack the dispatcher wrote while recording, as it is: the remote
/// stores a pack of the same name. libgit2's push packed the same objects again (another pack, and
/// most of a processor while a backlog drained).
#[test]
fn a_push_over_git_daemon_sends_the_pack_the_dispatcher_wrote_as_it_is() {
    let world = World::new().build();
    let daemon = crate::support::GitDaemon::serve(&world);
    let requests: Vec<(String, String)> = (0..40)
        .map(|i| {
            (
                format!("p-{i:02}.yml"),
                format!("kind: echo\nid: p-{i:02}\n"),
            )
        })
        .collect();
    let files: Vec<(&str, &[u8])> = requests
        .iter()
        .map(|(name, yaml)| (name.as_str(), yaml.as_bytes()))
        .collect();
    world.submit_many(&files);
    keep_every_pack(&world);
    let before = pack_names(&world.remote);

    world.run_via(&daemon.url(), &[]).assert_exit(0);

    assert!(
        !sent_as_written(&world, &before).is_empty(),
        "no pack of the workdir's on the remote: remote {:?}, workdir {:?}",
        pack_names(&world.remote),
        pack_names(&world.work.join("repo.git"))
    );
    let clone = world.clone_from(&daemon.url());
    assert_eq!(clone.statuses().len(), 40, "outcomes recorded");
    assert_eq!(clone.ls("requests"), [".gitkeep"], "requests left");
}
