//! The operator's switches, committed in a clone and obeyed by dispatchers serving a `git daemon`
//! remote: `pause`/`resume` and `drain`/`undrain` (`control.yml`), `cancel` (the request's file
//! withdrawn, recorded `cancelled` by whoever withdrew it, stopped first where it runs, `git rm` by
//! hand alike), and a broken index that makes requests wait instead of burning their ids.

use std::time::Duration;

use crate::support::{RunOutput, World};

// `pause`/`resume`: nothing starts, nothing is rejected, running ones finish.
mod pause;
// `drain`/`undrain`: one dispatcher of two starts nothing new.
mod drain;
// `cancel` and `git rm`: queued, running on another dispatcher, finished, unknown, twice.
mod cancel;
// A broken index: requests wait; a fixed one lets them run.
mod blockers;

/// How long a dispatcher of these tests may take to do what a test waits for.
const DEADLINE: Duration = Duration::from_secs(40);

/// `git-dispatch ARGS` in the submitter's clone, as an operator would run it.
fn operate(world: &World, args: &[&str]) -> RunOutput {
    crate::everyday::everyday(world, &world.submitter.dir, args)
}
