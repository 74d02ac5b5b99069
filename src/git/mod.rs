//! Git, the bus and the store: the only code that uses git2. [`sync`] keeps the dispatcher's bare
//! clone (fetch, reconcile, commit, push) on top of the hand-written plumbing beside it: [`tree_edit`]
//! splices trees, [`pack`] writes the packs of outcomes; [`view`] reads a commit's tree (or a working
//! tree) for the checks above.

pub(crate) mod pack;
pub(crate) mod pack_writer;
pub(crate) mod sync;
pub(crate) mod tree_edit;
pub(crate) mod url;
pub(crate) mod view;
