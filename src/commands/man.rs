//! `git-dispatch man [SUBCOMMAND] [--dir DIR]`: the man pages, one per subcommand
//! (`git-dispatch.1`, `git-dispatch-run.1`, ...), generated from the command line's own definition
//! by clap_mangen, each with the EXIT STATUS and ENVIRONMENT sections clap does not know about.
//! `git dispatch --help` runs `man git-dispatch`, so installing them with `--dir` makes it work.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;

use crate::cli::{Cli, ManArgs};
use crate::error::CommandError;

pub(crate) fn run(args: &ManArgs) -> Result<(), CommandError> {
    let pages = pages().map_err(|e| CommandError::config(anyhow::anyhow!("{e}")))?;
    if let Some(dir) = &args.dir {
        return write_all(&pages, dir).map_err(CommandError::config);
    }
    let wanted = match &args.subcommand {
        Some(sub) => format!("git-dispatch-{sub}.1"),
        None => "git-dispatch.1".to_owned(),
    };
    let Some((_, page)) = pages.iter().find(|(name, _)| *name == wanted) else {
        let known: Vec<&str> = pages
            .iter()
            .filter_map(|(name, _)| name.strip_prefix("git-dispatch-")?.strip_suffix(".1"))
            .collect();
        return Err(CommandError::config(anyhow::anyhow!(
            "there is no man page for `{}`; the subcommands are {}",
            args.subcommand.as_deref().unwrap_or_default(),
            known.join(", ")
        )));
    };
    io::stdout()
        .write_all(page)
        .map_err(|e| CommandError::config(anyhow::anyhow!("could not write the man page: {e}")))
}

fn write_all(pages: &[(String, Vec<u8>)], dir: &Path) -> anyhow::Result<()> {
    for (name, page) in pages {
        let path = dir.join(name);
        fs::write(&path, page).with_context(|| format!("could not write `{}`", path.display()))?;
        println!("{}", path.display());
    }
    Ok(())
}

/// Every page, as (file name, roff): the top one first, then one per subcommand.
fn pages() -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut top = Cli::command().disable_help_subcommand(true);
    top.build();
    let mut pages = vec![page(&top, None)?];
    for sub in top.get_subcommands().filter(|s| !s.is_hide_set()) {
        pages.push(page(sub, Some(sub.get_name()))?);
    }
    Ok(pages)
}

fn page(cmd: &clap::Command, sub: Option<&str>) -> io::Result<(String, Vec<u8>)> {
    let man = clap_mangen::Man::new(cmd.clone())
        .source(format!("git-dispatch {}", env!("CARGO_PKG_VERSION")))
        .manual("git-dispatch manual");
    let mut roff = Vec::new();
    man.render(&mut roff)?;
    roff.extend_from_slice(exit_status(sub).as_bytes());
    roff.extend_from_slice(environment(cmd, sub).as_bytes());
    if sub.is_some() {
        roff.extend_from_slice(b".SH \"SEE ALSO\"\n\\fBgit-dispatch\\fR(1)\n");
    }
    Ok((man.get_filename(), roff))
}

/// One `.TP` entry: a bold tag and its text.
fn entry(tag: &str, text: &str) -> String {
    format!(".TP\n\\fB{}\\fR\n{}\n", escape(tag), escape(text))
}

/// Text safe in roff: backslashes doubled, no line starting with a control character.
fn escape(text: &str) -> String {
    text.replace('\\', "\\\\")
        .lines()
        .map(|l| {
            if l.starts_with(['.', '\'']) {
                format!("\\&{l}")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The exit codes of `src/error.rs`, in the words of each subcommand.
fn exit_status(sub: Option<&str>) -> String {
    let one = match sub {
        None => Some("the command's subject failed (see each subcommand's page)"),
        Some("validate") => Some("a request (or, with --index, the index) is invalid"),
        Some("submit") => Some("the request is invalid, or the push met a conflict"),
        Some("show") => Some("no outcome is recorded for the id"),
        Some("rerun") => Some("the id is unknown, the rerun's id too long, or the request invalid"),
        Some("cancel") => Some("the request has another outcome already, or nobody submitted it"),
        Some("approve" | "deny") => {
            Some("the request is not waiting: it has an outcome, or none was submitted")
        }
        Some("replay") => Some("a fixture differs from its expectations, or none was found"),
        Some("doctor") => Some("a problem was found (each is printed with its fix)"),
        Some("selftest") => Some("the self-test failed"),
        _ => None,
    };
    let three = match sub {
        None => Some("the remote could not be reached or pushed to after all retries"),
        Some("run") => Some(
            "the remote could not be reached or pushed to after --push-attempts (with --once or \
             --until-empty)",
        ),
        Some(
            "submit" | "rerun" | "pause" | "resume" | "drain" | "undrain" | "cancel" | "approve"
            | "deny",
        ) => Some("the push was refused after all attempts"),
        Some("status") => Some("the remote could not be fetched"),
        _ => None,
    };
    let mut out = String::from(".SH \"EXIT STATUS\"\n");
    out += &entry("0", "success");
    if let Some(text) = one {
        out += &entry("1", text);
    }
    out += &entry("2", "usage or configuration error");
    if let Some(text) = three {
        out += &entry("3", text);
    }
    out
}

/// The variables the subcommand reads: its options' `GIT_DISPATCH_*` ones, then the others.
fn environment(cmd: &clap::Command, sub: Option<&str>) -> String {
    let mut out = String::from(".SH ENVIRONMENT\n");
    // The top page lists those of `run` (and `doctor`), where they all are.
    let source = match sub {
        None => cmd.find_subcommand("run").unwrap_or(cmd),
        Some(_) => cmd,
    };
    let mut any = false;
    for arg in source.get_arguments() {
        if let Some(env) = arg.get_env() {
            any = true;
            out += &entry(
                &env.to_string_lossy(),
                &format!("the same as --{}", arg.get_long().unwrap_or_default()),
            );
        }
    }
    if any {
        out += &entry(
            "XDG_STATE_HOME, HOME",
            "the default workdir is $XDG_STATE_HOME/git-dispatch/REMOTE, else \
             $HOME/.local/state/git-dispatch/REMOTE",
        );
        out += &entry(
            "DISPATCH_ID, DISPATCH_KIND, DISPATCH_ATTEMPT, DISPATCH_RESOURCE, DISPATCH_PARAMS",
            "set for each handler, with PATH, the variables its kind lists under env: and its \
             secrets; nothing else of the dispatcher's environment reaches a handler",
        );
    }
    let in_a_clone = matches!(
        sub,
        Some(
            "submit"
                | "rerun"
                | "status"
                | "show"
                | "pause"
                | "resume"
                | "drain"
                | "undrain"
                | "cancel"
        )
    );
    if in_a_clone {
        out += &entry(
            "GIT_*",
            "the git commands run in the clone read Git's own environment and configuration \
             (e.g. GIT_SSH_COMMAND, credential helpers)",
        );
    }
    if matches!(sub, None | Some("status")) {
        out += &entry(
            "NO_COLOR",
            "when set and not empty, `status` prints no colours",
        );
    }
    if !any && !in_a_clone && sub.is_some() {
        out += "No variables of its own.\n";
    }
    out
}
