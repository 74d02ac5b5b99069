//! The inbox at a fetched commit: [`queue`] lists `requests/` in arrival order, [`request`] checks one
//! request's bytes, [`router`] maps its kind to a handler and limits through `handlers/index.yml`,
//! [`schema`] compiles the JSON Schemas and [`snapshot`] holds one commit's compiled configuration
//! with its handlers written out.

pub(crate) mod approval;
pub(crate) mod chain;
pub(crate) mod control;
pub(crate) mod queue;
pub(crate) mod request;
pub(crate) mod router;
pub(crate) mod schedule;
pub(crate) mod schema;
pub(crate) mod snapshot;
pub(crate) mod withdrawal;
pub(crate) mod yaml;
