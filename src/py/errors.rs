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

impl From<CoreError> for PyErr {
    fn from(e: CoreError) -> PyErr {
        match e {
            CoreError::UnknownTask(id) => PyKeyError::new_err(id),
            CoreError::InvalidInput(msg) => PyValueError::new_err(msg),
            CoreError::Snapshot(msg) => SnapshotError::new_err(msg),
        }
    }
}
