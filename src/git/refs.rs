//! What the transports and [`crate::git::dispatch_refs`] say of the refs under `refs/dispatch/`:
//! an update with the value it expects ([`RefUpdate`]), what became of it ([`RefOutcome`]), and one
//! look at the remote ([`Look`]). Types only, below both.

use std::collections::BTreeMap;

use git2::Oid;

use crate::claim::protocol::PREFIX;

/// A change to one ref under refs/dispatch/ on the remote, made only if the remote's ref is
/// `expect`: a create when `expect` is `None`, a delete when `new` is `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RefUpdate {
    /// The full ref name, e.g. `refs/dispatch/claims/db`.
    pub name: String,
    pub expect: Option<Oid>,
    pub new: Option<Oid>,
}

/// What became of one [`RefUpdate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RefOutcome {
    /// The remote's ref now holds `new` (or is gone, for a delete).
    Updated,
    /// The remote's ref was not `expect`: someone else moved it. `current` is what it holds
    /// (`None`: no such ref), as seen by this push or by a look right after it.
    Lost { current: Option<Oid> },
    /// Not applied for another reason (a name outside `refs/dispatch/`, a hook or the server's
    /// configuration refused it, a ref locked by another writer): the remote still holds `expect`.
    Refused(String),
}

/// The remote as one look shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Look {
    /// The branch's head (`None`: no such branch).
    pub head: Option<Oid>,
    /// Every ref under `refs/dispatch/`, by full name.
    pub dispatch: BTreeMap<String, Oid>,
}

impl Look {
    /// The look at a remote that advertises `refs` (name, oid), whose branch is the ref `branch`.
    pub(crate) fn from_refs<'a>(
        branch: &str,
        refs: impl IntoIterator<Item = (&'a str, Oid)>,
    ) -> Self {
        let mut look = Look::default();
        for (name, oid) in refs {
            if name == branch {
                look.head = Some(oid);
            } else if name.starts_with(PREFIX) && !name.ends_with("^{}") {
                look.dispatch.insert(name.to_owned(), oid);
            }
        }
        look
    }
}

/// The oid of the tree with no entries, which every note names.
pub(crate) const EMPTY_TREE: &str = "4b825dc642cb6eb9a060e54bf8d69288fbee4904";
