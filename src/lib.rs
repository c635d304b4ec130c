//! `fastapi_taskflow._core`: the Rust task core of fastapi-taskflow.
//!
//! `core` is plain Rust; `py` wraps it for Python and maps errors at one boundary.

pub(crate) mod core;
mod py;

use pyo3::prelude::*;

/// Rust core of fastapi_taskflow: task store, event ring, metrics and SQLite snapshots.
#[pymodule(gil_used = false)]
mod _core {
    use pyo3::prelude::*;
    use pyo3::types::PyTuple;

    #[pymodule_export]
    use crate::py::errors::CorruptSnapshotError;
    #[pymodule_export]
    use crate::py::errors::SnapshotError;
    #[pymodule_export]
    use crate::py::store::TaskStore;

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        m.add(
            "STATUSES",
            PyTuple::new(m.py(), crate::core::record::STATUSES)?,
        )?;
        Ok(())
    }
}
