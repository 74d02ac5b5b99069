//! `git-dispatch completions SHELL`: generated from the command line's own
//! definition, so they never drift from it.

use std::io::{self, Write};

use clap::CommandFactory;

use crate::cli::Cli;
use crate::error::CommandError;

/// For `git dispatch ...`: git's bash completion calls `_git_dispatch` with its own `words`, `cword`
/// and `__git_cmd_idx` (the index of `dispatch`); this hands the words from there on to the
/// generated function as if `git-dispatch` had been typed. Git's completion adds no space after a
/// word itself (`-o nospace`), so one is added to each whole word offered.
const GIT_SUBCOMMAND_BASH: &str = r#"
# `git dispatch <TAB>`: git's completion calls `_git_dispatch`.
_git_dispatch() {
    local idx=${__git_cmd_idx:-1}
    local COMP_WORDS=(git-dispatch "${words[@]:idx+1}")
    local COMP_CWORD=$((cword - idx))
    _git__dispatch git-dispatch "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
    if [[ ${#COMPREPLY[@]} -gt 0 ]]; then
        COMPREPLY=("${COMPREPLY[@]/%/ }")
    fi
}
"#;

pub(crate) fn completions(shell: clap_complete::Shell) -> Result<(), CommandError> {
    let script = script(shell);
    io::stdout()
        .write_all(script.as_bytes())
        .map_err(|e| CommandError::config(anyhow::anyhow!("could not write the completions: {e}")))
}

/// The completion script for `shell`.
fn script(shell: clap_complete::Shell) -> String {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "git-dispatch", &mut out);
    let mut script = String::from_utf8_lossy(&out).into_owned();
    if shell == clap_complete::Shell::Bash {
        // clap_complete names the per-subcommand cases `git__subcmd__dispatch__subcmd__run` but
        // selects `git__dispatch__subcmd__run` for a binary name with a hyphen
        // (clap-rs/clap#6421), so nothing after the subcommand completed. One spelling for both;
        // a no-op once clap_complete agrees with itself.
        script = script.replace("git__subcmd__dispatch__", "git__dispatch__");
        script.push_str(GIT_SUBCOMMAND_BASH);
    }
    script
}
