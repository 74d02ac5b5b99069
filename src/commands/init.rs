//! `git-dispatch init DIR`: a new inbox repository in an empty or new folder: `git init` on branch
//! `main`, the example inbox (index, handlers, schemas, `requests/`, `processed/`, `logs/`), a README
//! for the people who submit requests, and one commit. Prints what to do next.

use std::fs;
use std::path::Path;

use anyhow::Context;

use crate::cli::InitArgs;
use crate::commands::scaffold;
use crate::error::CommandError;
use crate::inbox::router::{INDEX_PATH, parse_index};
use crate::submitter::checkout::run_git;

/// The README of a new inbox: how to submit, where outcomes appear, how to query the history.
const README: &str = r"# An inbox for git-dispatch

Requests are YAML files committed to `requests/` on `main`. A git-dispatch dispatcher takes them
first in, first out, checks them against `schemas/`, runs the handler `handlers/index.yml` names for
their `kind`, and pushes the outcome back as a commit.

## Submit a request

With git-dispatch (it checks the request with the dispatcher's own checks, commits it alone, pushes
it, and prints its id):

    git-dispatch submit echo --param message=hello
    git-dispatch submit greet --param name=Ada --param times=2 --id greet-ada

With plain Git:

    cat > requests/greet-ada.yml <<'EOF'
    kind: greet          # required: a key of handlers/index.yml
    id: greet-ada        # optional: default the file name; an id is used once
    params:              # checked against schemas/greet.schema.json
      name: Ada
      times: 2
    EOF
    git-dispatch validate requests/greet-ada.yml    # optional: the same checks, locally
    git add requests/greet-ada.yml
    git commit -m 'request: greet-ada greet'
    git push

A pushed request is immutable; to change your mind, submit another one.

## Outcomes

For request `ID`, one commit by the dispatcher removes `requests/ID.yml` and adds
`processed/S/ID.yml` (the request as it ran), `processed/S/ID.status.json` (its `state`:
`succeeded`, `failed`, `timed_out`, `rejected`, `abandoned` or `cancelled`, with the exit code,
times and any error) and `logs/S/ID.log`. `S` is a shard, three folders named by the first three hex
digits of the SHA-256 of the id (`hello` is in `2/c/f`), so that no folder grows with the history.

    git pull
    git-dispatch show ID --log    # one request's outcome and log
    git-dispatch status           # the queue, recent outcomes, the last 24 hours
    cat processed/$(printf %s ID | sha256sum | sed 's|^\(.\)\(.\)\(.\).*|\1/\2/\3|')/ID.status.json

## Golden fixtures

`tests/fixtures/NAME/` holds a request (`request.yml`) and the outcome it must have
(`expected.status.json`, `expected.log`). `git-dispatch replay` runs every fixture through the real
pipeline in a temporary copy of `handlers/` and `schemas/` and shows a diff where a handler's
behaviour changed; `git-dispatch replay --bless` writes the expectations after an intended change.
`.github/workflows/replay.yml` runs it on every push.

## History

Outcome commits carry the trailers `Dispatch-Id`, `Dispatch-Kind` and `Dispatch-State`:

    git log --format='%h %(trailers:key=Dispatch-Id,valueonly,separator=) %(trailers:key=Dispatch-State,valueonly,separator=)'
    git log --grep='^Dispatch-State: failed$'    # every failure
    git log --grep='^Dispatch-Id: greet-ada$'    # one request's outcome

## The index

`handlers/index.yml` maps each kind to an executable in `handlers/` and its limits;
`schemas/KIND.schema.json` checks its `params`:

    backup:
      handler: backup.sh            # path inside handlers/
      schema: backup.schema.json    # optional params schema in schemas/
      timeout: 10m                  # default 15m
      resource: db                  # lock key: one run at a time per resource (default: the kind)
      memory: 512MiB                # address-space limit
      env: [LANG]                   # variables passed through from the dispatcher's environment
      secrets: [DB_PASSWORD]        # names looked up in the host's secrets file, never in the repo
      retries: 2                    # re-runs on failure or timeout, with backoff

A new kind is a handler and an index entry: the dispatcher picks it up from the next commit it
fetches. `git-dispatch validate --index` checks the index, the handlers and the schemas (the CI
workflow runs it). Whoever can push to `handlers/` can run code on the dispatcher's host: protect it
with a review rule. The git-dispatch README lists every key.
";

pub(crate) fn run(args: &InitArgs) -> Result<(), CommandError> {
    let dir = &args.dir;
    ensure_empty(dir)?;
    fs::create_dir_all(dir)
        .with_context(|| format!("could not create `{}`", dir.display()))
        .map_err(CommandError::config)?;
    run_git(dir, &["init", "--quiet", "--initial-branch=main"]).map_err(CommandError::config)?;
    scaffold::write(dir)
        .and_then(|()| scaffold::write_files(dir, scaffold::INIT_EXTRAS))
        .and_then(|()| fs::write(dir.join("README.md"), README))
        .with_context(|| format!("could not write the inbox into `{}`", dir.display()))
        .map_err(CommandError::config)?;
    run_git(dir, &["add", "--all"]).map_err(CommandError::config)?;
    run_git(
        dir,
        &[
            "commit",
            "--quiet",
            "-m",
            "an inbox for git-dispatch: index, example handlers, schemas, folders",
        ],
    )
    .map_err(|e| {
        CommandError::config(anyhow::anyhow!(e).context(format!(
            "the inbox is written in `{}` but not committed; set your Git identity \
             (`git config --global user.name ...`, `user.email`) and run `git commit` there",
            dir.display()
        )))
    })?;
    let kinds: Vec<String> = scaffold::EXAMPLE_INBOX
        .iter()
        .find(|f| f.path == INDEX_PATH)
        .and_then(|f| parse_index(f.contents.as_bytes()).ok())
        .map(|index| index.kinds.into_keys().collect())
        .unwrap_or_default();
    let shown = dir.display();
    println!(
        "an inbox repository in `{shown}` (branch `main`): `{INDEX_PATH}` with the example \
         kinds {}, schemas/, requests/, processed/, logs/, README.md, a golden fixture in \
         tests/fixtures/ and a CI workflow that replays it (.github/workflows/replay.yml)",
        kinds.join(", ")
    );
    println!(
        "\nnext:\n  \
         cd {shown}\n  \
         git remote add origin git@example.org:ops/inbox.git   # an empty repository on your Git server\n  \
         git push -u origin main\n  \
         git-dispatch run --remote git@example.org:ops/inbox.git   # on the operations host\n  \
         git-dispatch submit echo --param message=hello            # in any clone"
    );
    Ok(())
}

/// `init` only creates: a folder that exists must be empty.
fn ensure_empty(dir: &Path) -> Result<(), CommandError> {
    let refuse = |what: &str| {
        Err(CommandError::config(anyhow::anyhow!(
            "`{}` {what}; `init` creates an inbox in a new or empty folder only",
            dir.display()
        )))
    };
    match fs::read_dir(dir) {
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(_) => refuse("is not empty"),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => refuse("is not a folder"),
        Err(e) => Err(CommandError::config(
            anyhow::anyhow!(e).context(format!("could not read `{}`", dir.display())),
        )),
    }
}
