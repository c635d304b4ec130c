//! Python bindings: convert arguments and results, map errors; no logic of their own.

pub(crate) mod errors;
pub(crate) mod store;
