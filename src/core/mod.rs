//! Pure Rust core: no Python types here, so everything is testable with `cargo test`.

pub(crate) mod compact;
pub(crate) mod error;
pub(crate) mod health;
pub(crate) mod held;
pub(crate) mod index;
pub(crate) mod json;
pub(crate) mod metrics;
pub(crate) mod owners;
pub(crate) mod prometheus;
pub(crate) mod record;
pub(crate) mod ring;
pub(crate) mod served;
pub(crate) mod snapshot;
pub(crate) mod store;
pub(crate) mod write_behind;
