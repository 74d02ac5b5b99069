//! STUB for the lead's branch only: replaced by the transport helper's file at merge.
#![allow(dead_code, unused_variables)]
use std::collections::BTreeMap;

use git2::Oid;

use crate::git::sync::{Sync, SyncError};

pub(crate) struct RefUpdate {
    pub name: String,
    pub expect: Option<Oid>,
    pub new: Option<Oid>,
}
pub(crate) enum RefOutcome {
    Updated,
    Lost { current: Option<Oid> },
    Refused(String),
}
pub(crate) struct Look {
    pub head: Option<Oid>,
    pub dispatch: BTreeMap<String, Oid>,
}
impl Sync {
    pub(crate) fn look(&self) -> Result<Look, SyncError> {
        todo!()
    }
    pub(crate) fn note(&self, message: &str) -> Result<Oid, SyncError> {
        todo!()
    }
    pub(crate) fn update_dispatch_refs(
        &self,
        updates: &[RefUpdate],
    ) -> Result<Vec<RefOutcome>, SyncError> {
        todo!()
    }
    pub(crate) fn note_message(&self, name: &str, oid: Oid) -> Result<String, SyncError> {
        todo!()
    }
}
