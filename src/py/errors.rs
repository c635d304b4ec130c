//! The single place where core errors become Python exceptions.

use pyo3::create_exception;
use pyo3::exceptions::{PyKeyError, PyRuntimeError, PyValueError};
use pyo3::PyErr;

use crate::core::error::CoreError;

create_exception!(
    fastapi_taskflow._core,
    SnapshotError,
    PyRuntimeError,
    "The snapshot database cannot be opened, read or written.\n\nThe message names the file and says what to do about it."
);

create_exception!(
    fastapi_taskflow._core,
    CorruptSnapshotError,
    SnapshotError,
    "The file exists but is not a usable SQLite database (damaged, or not SQLite at all).\n\nRaised by ``TaskStore(db_path)`` only; the message names the file and the fix\n(restore it from a backup, or move it aside to start with an empty history)."
);

impl From<CoreError> for PyErr {
    fn from(e: CoreError) -> PyErr {
        match e {
            CoreError::UnknownTask(id) => PyKeyError::new_err(id),
            CoreError::InvalidInput(msg) => PyValueError::new_err(msg),
            CoreError::Snapshot(msg) => SnapshotError::new_err(msg),
            CoreError::CorruptSnapshot(msg) => CorruptSnapshotError::new_err(msg),
        }
    }
}
