//! One file per subcommand: the glue between the command line and the library.

pub(crate) mod approve;
pub(crate) mod cancel;
pub(crate) mod completions;
pub(crate) mod control;
pub(crate) mod demo;
mod dispatchers;
pub(crate) mod doctor;
pub(crate) mod init;
pub(crate) mod man;
mod playground;
pub(crate) mod replay;
pub(crate) mod rerun;
pub(crate) mod run;
pub(crate) mod scaffold;
pub(crate) mod selftest;
pub(crate) mod show;
pub(crate) mod status;
pub(crate) mod submit;
mod table;
pub(crate) mod validate;
