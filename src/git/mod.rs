//! Git, the bus and the store: the only code that uses git2. [`sync`] keeps the dispatcher's bare
//! clone (fetch, reconcile, commit, push) on top of the parts beside it: [`transport`] reaches the
//! remote (libgit2, the `git` command line, a local path), [`staging`] holds new commits in memory
//! ([`mempack`] is libgit2's in-memory store, reached by hand) until they are written out as a pack
//! ([`pack_writer`] makes it, [`pack`] writes, copies and merges pack files, [`written`] keeps those
//! a local push copies), and [`housekeeping`] repacks after a push. [`tree_edit`] splices trees;
//! [`view`] reads a commit's tree (or a working tree) for the checks above; [`url`] reads the
//! remote's URL; [`dispatch_refs`] looks at and writes the refs several dispatchers share on the
//! remote; [`settings`] tunes libgit2 once per process; [`error`] is what can go wrong.

pub(crate) mod dispatch_refs;
pub(crate) mod error;
pub(crate) mod housekeeping;
pub(crate) mod mempack;
pub(crate) mod pack;
pub(crate) mod pack_writer;
pub(crate) mod refs;
pub(crate) mod settings;
pub(crate) mod staging;
pub(crate) mod sync;
pub(crate) mod transport;
pub(crate) mod tree_edit;
pub(crate) mod url;
pub(crate) mod verify;
pub(crate) mod view;
pub(crate) mod written;

#[cfg(test)]
mod dispatch_refs_tests;
#[cfg(test)]
mod tests;
