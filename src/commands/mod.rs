//! One file per subcommand: the glue between the command line and the library.

pub(crate) mod demo;
pub(crate) mod run;
pub(crate) mod validate;
