//! `git-dispatch pause [--reason R]`, `resume`, `drain NAME [--reason R]`, `undrain NAME`: in a
//! clone of an inbox, change `control.yml` ([`crate::inbox::control`]) on the upstream's newest tip,
//! commit it with the user's `git` and push it. Asking for what is so already changes nothing and
//! says so.

use crate::cli::{ControlArgs, DrainArgs, PauseArgs};
use crate::error::CommandError;
use crate::inbox::control::{CONTROL_PATH, Control};
use crate::layout::is_valid_name;
use crate::submitter::change::{Plan, change};
use crate::submitter::checkout::Checkout;

/// The switch a command turns.
enum Switch<'a> {
    Pause(&'a str),
    Resume,
    Drain(&'a str, &'a str),
    Undrain(&'a str),
}

pub(crate) fn pause(args: &PauseArgs) -> Result<(), CommandError> {
    turn(
        &args.control,
        Switch::Pause(args.reason.as_deref().unwrap_or("")),
    )
}

pub(crate) fn resume(args: &ControlArgs) -> Result<(), CommandError> {
    turn(args, Switch::Resume)
}

pub(crate) fn drain(args: &DrainArgs) -> Result<(), CommandError> {
    check_name(&args.name)?;
    turn(
        &args.control,
        Switch::Drain(&args.name, args.reason.as_deref().unwrap_or("")),
    )
}

pub(crate) fn undrain(args: &DrainArgs) -> Result<(), CommandError> {
    check_name(&args.name)?;
    turn(&args.control, Switch::Undrain(&args.name))
}

fn check_name(name: &str) -> Result<(), CommandError> {
    if is_valid_name(name) {
        return Ok(());
    }
    Err(CommandError::config(anyhow::anyhow!(
        "`{name}` is not a dispatcher id (expected [A-Za-z0-9][A-Za-z0-9._-]{{0,127}}, as \
         `run --dispatcher-id` takes)"
    )))
}

fn turn(args: &ControlArgs, switch: Switch<'_>) -> Result<(), CommandError> {
    let checkout = Checkout::open(args.repo.path.as_deref()).map_err(CommandError::config)?;
    let said = change(&checkout, args.no_push, |checkout| {
        let path = checkout.root.join(CONTROL_PATH);
        let control = match std::fs::read(&path) {
            Ok(bytes) => Control::parse(&bytes).map_err(|e| {
                CommandError::config(anyhow::anyhow!(
                    "{e}; fix it by hand (or remove it) before using this command"
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Control::default(),
            Err(e) => {
                return Err(CommandError::config(anyhow::anyhow!(
                    "`{}`: {e}",
                    path.display()
                )));
            }
        };
        Ok(plan(control, &switch))
    })?;
    eprintln!("{said}");
    Ok(())
}

/// What `switch` changes in `control`, or why nothing.
fn plan(mut control: Control, switch: &Switch<'_>) -> Plan {
    let message = match switch {
        Switch::Pause(reason) => {
            if control.paused.as_deref() == Some(reason) {
                return Plan::Nothing("already paused; nothing changed".to_owned());
            }
            control.paused = Some((*reason).to_owned());
            with_reason("pause: no dispatcher starts a request", reason)
        }
        Switch::Resume => {
            if control.paused.take().is_none() {
                return Plan::Nothing("not paused; nothing changed".to_owned());
            }
            "resume: dispatchers start requests again".to_owned()
        }
        Switch::Drain(name, reason) => {
            if control.drained(name) == Some(reason) {
                return Plan::Nothing(format!("`{name}` is already drained; nothing changed"));
            }
            control
                .drained
                .insert((*name).to_owned(), (*reason).to_owned());
            with_reason(&format!("drain {name}: it starts nothing new"), reason)
        }
        Switch::Undrain(name) => {
            if control.drained.remove(*name).is_none() {
                return Plan::Nothing(format!("`{name}` is not drained; nothing changed"));
            }
            format!("undrain {name}: it starts requests again")
        }
    };
    Plan::Commit {
        path: CONTROL_PATH.to_owned(),
        contents: Some(control.to_yaml()),
        message,
        signed: false,
    }
}

fn with_reason(what: &str, reason: &str) -> String {
    if reason.is_empty() {
        what.to_owned()
    } else {
        format!("{what} ({reason})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commits(plan: Plan) -> Control {
        match plan {
            Plan::Commit {
                contents: Some(text),
                ..
            } => Control::parse(text.as_bytes()).unwrap(),
            _ => panic!("expected a commit"),
        }
    }

    #[test]
    fn each_switch_turns_only_its_own_and_again_is_nothing() {
        let paused = commits(plan(Control::default(), &Switch::Pause("freeze")));
        assert_eq!(paused.paused.as_deref(), Some("freeze"));
        assert!(matches!(
            plan(paused.clone(), &Switch::Pause("freeze")),
            Plan::Nothing(_)
        ));
        let drained = commits(plan(paused.clone(), &Switch::Drain("ops-1", "")));
        assert_eq!(drained.paused.as_deref(), Some("freeze"));
        assert_eq!(drained.drained("ops-1"), Some(""));
        let resumed = commits(plan(drained, &Switch::Resume));
        assert_eq!(resumed.paused, None);
        assert_eq!(resumed.drained("ops-1"), Some(""));
        assert!(matches!(
            plan(resumed.clone(), &Switch::Resume),
            Plan::Nothing(_)
        ));
        let undrained = commits(plan(resumed, &Switch::Undrain("ops-1")));
        assert_eq!(undrained, Control::default());
        assert!(matches!(
            plan(undrained, &Switch::Undrain("ops-1")),
            Plan::Nothing(_)
        ));
    }
}
