//! The submitter's side, in a clone of an inbox: [`draft`] writes a request, [`checkout`] commits and
//! pushes with the user's own `git` (what it reads, the queue and the outcomes, is in [`crate::report`]).

pub(crate) mod change;
pub(crate) mod checkout;
pub(crate) mod draft;
