//! The submitter's side, in a clone of an inbox: [`draft`] writes a request, [`checkout`] commits and
//! pushes with the user's own `git`, [`history`] reads the queue and the recorded outcomes.

pub(crate) mod change;
pub(crate) mod checkout;
pub(crate) mod draft;
pub(crate) mod history;
