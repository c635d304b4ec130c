//! The one error type of the core; `src/py` maps each variant to a Python exception.

use std::fmt;

/// Everything the core can refuse or fail at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreError {
    /// No record with this id is held in memory (Python: `KeyError`).
    UnknownTask(String),
    /// An argument is out of range or malformed (Python: `ValueError`).
    InvalidInput(String),
    /// The snapshot database cannot be opened, read or written (Python: `SnapshotError`).
    Snapshot(String),
    /// The file met at open is damaged or not SQLite at all (Python: `CorruptSnapshotError`).
    CorruptSnapshot(String),
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoreError::UnknownTask(id) => write!(f, "unknown task id {id:?}"),
            CoreError::InvalidInput(msg)
            | CoreError::Snapshot(msg)
            | CoreError::CorruptSnapshot(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for CoreError {}

pub type CoreResult<T> = Result<T, CoreError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_the_problem() {
        assert_eq!(
            CoreError::UnknownTask("x".into()).to_string(),
            "unknown task id \"x\""
        );
        assert_eq!(
            CoreError::InvalidInput("bad limit".into()).to_string(),
            "bad limit"
        );
        assert_eq!(
            CoreError::Snapshot("/a.db: gone".into()).to_string(),
            "/a.db: gone"
        );
        assert_eq!(
            CoreError::CorruptSnapshot("/a.db: damaged".into()).to_string(),
            "/a.db: damaged"
        );
    }
}
