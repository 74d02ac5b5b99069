//! Claims: how several dispatchers on one remote share the inbox, with the Git server as the only
//! coordinator. A request is started only by the dispatcher that holds its resource's claim and
//! lists it there; see `docs/dispatchers.md` for the protocol and its states.
//!
//! - [`protocol`]: the refs, and the records they carry;
//! - [`ledger`]: the claims one dispatcher holds and sees, and the decisions on them.

pub(crate) mod ledger;
pub(crate) mod protocol;
