//! `git-dispatch doctor`: preflight before enabling a host. Takes the same options as `run` and checks
//! everything `run` will need, changing nothing: the configuration (run-as user, secrets file, handlers
//! dir), the remote (reachable, the branch exists, pushable), the index, each handler and each schema
//! at the remote's tip, the workdir and the lock directory. Prints every problem with its fix; exit 1
//! if there is any. `--service` (the unit's `ExecStartPre`) fails only on faults of the host.

use std::fs;
use std::path::Path;

use git2::{Direction, Repository};

use crate::cli::DoctorArgs;
use crate::config::RunConfig;
use crate::error::CommandError;
use crate::git::view::{DirView, HostHandlers, TreeView};
use crate::inbox::router::Catalog;

/// What one check found.
enum Finding {
    Ok(String),
    Problem {
        what: String,
        fix: String,
    },
    /// A problem the running dispatcher tolerates, told as such with `--service`.
    Warning {
        what: String,
        fix: String,
    },
}

pub(crate) fn run(args: &DoctorArgs) -> Result<(), CommandError> {
    let findings = match RunConfig::from_args(&args.run) {
        Ok(config) => check(&config, args.service),
        Err(e) => vec![Finding::Problem {
            what: format!("configuration: {e:#}"),
            fix: "correct the option named above (see `git-dispatch run --help`)".to_owned(),
        }],
    };
    let mut problems = 0;
    for finding in &findings {
        match finding {
            Finding::Ok(what) => println!("ok       {what}"),
            Finding::Problem { what, fix } => {
                problems += 1;
                println!(
                    "PROBLEM  {}\n         fix: {fix}",
                    crate::error::user_text(what)
                );
            }
            Finding::Warning { what, fix } => {
                println!(
                    "warning  {}\n         fix: {fix}",
                    crate::error::user_text(what)
                );
            }
        }
    }
    if problems == 0 {
        println!("\nall {} checks passed", findings.len());
        Ok(())
    } else {
        Err(CommandError::subject(anyhow::anyhow!(
            "{problems} problem(s) found"
        )))
    }
}

/// With `service`, the remote's problems (unreachable, a broken kind) are warnings: `run` retries
/// the remote and records a broken kind's requests `rejected`, so neither may keep it from starting.
fn check(config: &RunConfig, service: bool) -> Vec<Finding> {
    let mut findings = vec![Finding::Ok(match &config.run_as {
        Some(user) => format!("handlers run as uid {} gid {}", user.uid, user.gid),
        None => format!(
            "handlers run as the dispatcher's own user (uid {})",
            nix::unistd::geteuid()
        ),
    })];
    if !config.secrets.is_empty() {
        findings.push(Finding::Ok(format!(
            "secrets file readable by its owner only ({} secrets)",
            config.secrets.len()
        )));
    }
    let isolation = crate::run::isolate::Isolation::new(Vec::new());
    findings.extend(isolation.report().into_iter().map(|(ok, line)| {
        let what = format!("isolation: {line}");
        if ok {
            Finding::Ok(what)
        } else {
            Finding::Warning {
                what,
                fix:
                    "run the dispatcher as root (it runs handlers as --run-as), on cgroup v2 as a \
                      service with `Delegate=yes`, or accept the weaker confinement \
                      (docs/handlers.md)"
                        .to_owned(),
            }
        }
    }));
    findings.push(writable(&config.lock_dir, "lock directory"));
    findings.push(workdir(config));
    findings.extend(remote(config).into_iter().map(|f| match f {
        Finding::Problem { what, fix } if service => Finding::Warning { what, fix },
        f => f,
    }));
    findings
}

/// Whether `run` will be able to write in `dir`, without creating or writing anything: an existing
/// folder must be writable; a missing one must be creatable (its nearest existing ancestor writable).
fn writable(dir: &Path, what: &str) -> Finding {
    use nix::unistd::{AccessFlags, access};
    let fix = format!(
        "create it and give it to the dispatcher's user, or choose another with --{}",
        if what.starts_with("lock") {
            "lock-dir"
        } else {
            "workdir"
        }
    );
    let problem = |what: String| Finding::Problem {
        what,
        fix: fix.clone(),
    };
    if dir.exists() {
        if !dir.is_dir() {
            return problem(format!("{what} `{}` is not a directory", dir.display()));
        }
        return match access(dir, AccessFlags::W_OK | AccessFlags::X_OK) {
            Ok(()) => Finding::Ok(format!("{what} `{}` is writable", dir.display())),
            Err(e) => problem(format!(
                "{what} `{}` is not writable: {}",
                dir.display(),
                e.desc()
            )),
        };
    }
    let Some(parent) = dir.ancestors().skip(1).find(|a| a.exists()) else {
        return problem(format!("{what} `{}` has no existing parent", dir.display()));
    };
    match access(parent, AccessFlags::W_OK | AccessFlags::X_OK) {
        Ok(()) if parent.is_dir() => Finding::Ok(format!(
            "{what} `{}` does not exist yet; `run` will create it (`{}` is writable)",
            dir.display(),
            parent.display()
        )),
        Ok(()) => problem(format!(
            "{what} `{}` cannot be created: `{}` is not a directory",
            dir.display(),
            parent.display()
        )),
        Err(e) => problem(format!(
            "{what} `{}` cannot be created: `{}` is not writable: {}",
            dir.display(),
            parent.display(),
            e.desc()
        )),
    }
}

fn workdir(config: &RunConfig) -> Finding {
    let lock = config.workdir.join("dispatcher.lock");
    if let Ok(file) = fs::File::open(&lock)
        && file.try_lock().is_err()
    {
        return Finding::Ok(format!(
            "workdir `{}` is in use by a running dispatcher",
            config.workdir.display()
        ));
    }
    writable(&config.workdir, "workdir")
}

/// The remote, from a throw-away bare clone so that nothing of the dispatcher's is touched.
fn remote(config: &RunConfig) -> Vec<Finding> {
    let mut findings = Vec::new();
    let problem = |what: String, fix: &str| Finding::Problem {
        what,
        fix: fix.to_owned(),
    };
    let Ok(scratch) = tempfile::tempdir() else {
        return vec![problem("no temporary directory".into(), "check TMPDIR")];
    };
    let sync = match crate::git::sync::Sync::open(
        &scratch.path().join("repo.git"),
        &config.remote,
        &config.branch,
        &config.dispatcher_id,
        config.access.clone(),
    ) {
        Ok(sync) => sync,
        Err(e) => return vec![problem(e.to_string(), "check --remote")],
    };
    let tip = match sync.fetch() {
        Ok(tip) => {
            findings.push(Finding::Ok(format!(
                "remote `{}` is reachable; branch `{}` is at {}",
                config.remote,
                config.branch,
                crate::git::view::short(tip)
            )));
            tip
        }
        Err(e) => {
            findings.push(problem(
                e.to_string(),
                "check the URL, the network and the credentials (SSH agent, --ssh-key, the credential \
                 helper, or --git-transport cli)",
            ));
            return findings;
        }
    };
    findings.push(pushable(&sync.repo, config));
    let commit = match sync.repo.find_commit(tip) {
        Ok(c) => c,
        Err(e) => return vec![problem(e.to_string(), "re-run doctor")],
    };
    let Ok(tree) = commit.tree() else {
        return findings;
    };
    let view = TreeView {
        repo: &sync.repo,
        tree,
        commit: tip,
    };
    let catalog = match &config.handlers_dir {
        Some(dir) => Catalog::load(&HostHandlers {
            dir: DirView { root: dir.clone() },
            rest: &view,
        }),
        None => Catalog::load(&view),
    };
    let problems = catalog.problems();
    if problems.is_empty() {
        findings.push(Finding::Ok(format!(
            "index, handlers and schemas at {} are usable ({} kinds)",
            crate::git::view::short(tip),
            catalog.kinds().len()
        )));
    }
    for p in problems {
        findings.push(problem(
            p,
            "fix `handlers/index.yml`, the handler or the schema named, commit and push",
        ));
    }
    if let Ok(tree) = commit.tree() {
        for (_, _, parsed) in crate::inbox::schedule::of_tree(&sync.repo, &tree, &catalog) {
            match parsed {
                Ok(s) => findings.push(Finding::Ok(format!("schedule `{}` is valid", s.name))),
                Err(e) => findings.push(problem(
                    e,
                    "fix the schedule named (its keys, or its request), commit and push",
                )),
            }
        }
    }
    if let Some(trust) = &config.trust {
        findings.push(trusted(&sync.repo, tip, trust));
    }
    findings
}

/// With `--trust`: whether the index, handlers and schemas at the tip were signed in by an admin
/// (which also proves `git verify-commit` and `ssh-keygen` work here).
fn trusted(repo: &Repository, tip: git2::Oid, trust: &crate::config::Trust) -> Finding {
    let verifier = crate::git::verify::Verifier::new(repo.path(), &trust.file);
    let short = crate::git::view::short;
    match verifier.trusted_version(repo, tip, &["handlers", "schemas"], &trust.admins) {
        Ok(found) if found.newest.is_none() => Finding::Ok(format!(
            "--trust: the index, handlers and schemas at {} were signed in by an admin ({})",
            short(tip),
            trust.admins.join(", ")
        )),
        Ok(found) => Finding::Warning {
            what: format!(
                "--trust: the index, handlers and schemas at {} are not trusted: the commit that \
                 made them ({}) is {}; {}",
                short(tip),
                found
                    .newest
                    .as_ref()
                    .map(|(c, _)| short(*c))
                    .unwrap_or_default(),
                found
                    .newest
                    .as_ref()
                    .map(|(_, s)| s.describe())
                    .unwrap_or_default(),
                found.at.map_or_else(
                    || "no version was signed by an admin, so nothing will start".to_owned(),
                    |at| format!("the version of {} will be used", short(at))
                )
            ),
            fix: format!(
                "an admin ({}) signs a commit that touches `handlers/` (docs/identity.md)",
                trust.admins.join(", ")
            ),
        },
        Err(e) => Finding::Problem {
            what: format!("--trust: the history could not be read: {e}"),
            fix: "re-run doctor".to_owned(),
        },
    }
}

/// Connects for a push and lists the refs: proves the credentials are accepted for pushing without
/// sending anything.
fn pushable(repo: &Repository, config: &RunConfig) -> Finding {
    let result = repo.find_remote("origin").and_then(|mut remote| {
        remote.connect(Direction::Push)?;
        remote.list().map(|_| ())
    });
    match result {
        Ok(()) => Finding::Ok(format!(
            "remote `{}` accepts a push connection",
            config.remote
        )),
        Err(e) => Finding::Problem {
            what: format!(
                "remote `{}` refuses a push connection: {}",
                config.remote,
                e.message()
            ),
            fix: "give the dispatcher's key or token write access to the repository".to_owned(),
        },
    }
}
