//! One request on a worker: [`runner`] takes a `--jobs` slot (in ticket order, from [`slots`],
//! which also carry the stop) and the resource's [`lock`], journals
//! each attempt ([`journal`], with files reused from [`spare`]), runs the handler in the [`sandbox`]
//! (started by [`spawn`]; what escapes it is found by [`escapees`]), caps its output
//! ([`capture`]) and retries with backoff.

pub(crate) mod capture;
pub(crate) mod cgroup;
pub(crate) mod escapees;
pub(crate) mod in_flight;
pub(crate) mod isolate;
pub(crate) mod journal;
pub(crate) mod lock;
pub(crate) mod runner;
pub(crate) mod sandbox;
pub(crate) mod scratch;
pub(crate) mod slots;
pub(crate) mod spare;
pub(crate) mod spawn;
