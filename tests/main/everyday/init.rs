//! `init DIR`: a new inbox that validates and the dispatcher serves; into a non-empty folder it exits 2
//! and touches nothing; its scaffold points at sections that exist and its CI validates the index.

use super::everyday;
use crate::support::{World, git_command};

#[test]
fn init_creates_an_inbox_that_validates_and_the_dispatcher_serves() {
    let world = World::new().build();
    let dir = world.root.join("new-inbox");

    let out = everyday(&world, &world.root, &["init", "new-inbox"]);
    out.assert_exit(0);
    assert!(
        out.stdout.contains("git remote add") && out.stdout.contains("git push"),
        "no next steps:\n{out}"
    );
    everyday(&world, &dir, &["validate", "--index"]).assert_exit(0);
    let readme = std::fs::read_to_string(dir.join("README.md")).expect("a README");
    for needle in [
        "git-dispatch submit",
        "git push",
        "Dispatch-State",
        "processed/",
    ] {
        assert!(readme.contains(needle), "the README lacks `{needle}`");
    }

    // Publish it on a bare remote, as the next steps say, and serve it.
    let remote = world.root.join("new-inbox.git");
    let mut bare = git_command(&world.home, &world.root);
    bare.args(["init", "-q", "--bare", "-b", "main"])
        .arg(&remote);
    assert!(bare.status().expect("spawn git").success());
    let git = |args: &[&str]| {
        let mut cmd = git_command(&world.home, &dir);
        cmd.args(args);
        let out = cmd.output().expect("spawn git");
        assert!(out.status.success(), "git {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(git(&["branch", "--show-current"]), "main");
    assert_eq!(git(&["status", "--porcelain"]), "");
    git(&["remote", "add", "origin", remote.to_str().expect("utf-8")]);
    git(&["push", "-q", "-u", "origin", "main"]);

    everyday(
        &world,
        &dir,
        &[
            "submit",
            "echo",
            "--id",
            "from-init",
            "--param",
            "message=hi",
        ],
    )
    .assert_exit(0);
    let run = world.output(world.run_command(remote.to_str().expect("utf-8"), &["--until-empty"]));
    run.assert_exit(0);

    let clone = world.clone_from(remote.to_str().expect("utf-8"));
    assert_eq!(clone.status("from-init")["state"], "succeeded", "{run}");
}

#[test]
fn init_into_a_non_empty_folder_exits_2_and_touches_nothing() {
    let world = World::new().build();
    let dir = world.root.join("occupied");
    std::fs::create_dir(&dir).expect("create dir");
    std::fs::write(dir.join("keep.txt"), "mine\n").expect("write file");

    let out = everyday(&world, &world.root, &["init", "occupied"]);
    out.assert_exit(2);
    assert!(out.stderr.contains("not empty"), "no reason given:\n{out}");
    assert!(
        !dir.join(".git").exists(),
        "a repository was created anyway"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("keep.txt")).expect("still there"),
        "mine\n"
    );
}

#[test]
fn inits_scaffold_points_at_sections_that_exist_and_its_ci_validates_the_index() {
    let world = World::new().build();
    let dir = world.root.join("scaffolded");
    everyday(&world, &world.root, &["init", "scaffolded"]).assert_exit(0);

    let readme = std::fs::read_to_string(dir.join("README.md")).expect("a README");
    let index = std::fs::read_to_string(dir.join("handlers/index.yml")).expect("an index");
    let mut pointers = 0;
    for line in index.lines().filter(|l| l.starts_with('#')) {
        let mut rest = line;
        while let Some((_, after)) = rest.split_once("README.md, \"") {
            let (section, tail) = after.split_once('"').expect("a closed quote");
            pointers += 1;
            assert!(
                readme
                    .lines()
                    .any(|l| l.starts_with("## ") && l[3..].starts_with(section)),
                "the index points at README section {section:?}, which the README lacks"
            );
            rest = tail;
        }
    }
    assert!(pointers > 0, "the index names no README section:\n{index}");

    let workflow =
        std::fs::read_to_string(dir.join(".github/workflows/replay.yml")).expect("a workflow");
    assert!(
        workflow.contains("git-dispatch validate --index"),
        "the workflow does not run `validate --index`:\n{workflow}"
    );
    assert!(
        workflow.contains("git-dispatch replay"),
        "the workflow does not replay:\n{workflow}"
    );
    assert!(
        !workflow.contains("your-org") && !workflow.contains("://"),
        "the workflow installs from a placeholder URL:\n{workflow}"
    );
}
