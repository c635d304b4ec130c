//! Owner lock files: `<db_path>.owners/<instance_id>`, locked exclusively by a store from
//! open until close, so that other stores sharing the file can tell whether the owner of
//! an unfinished journal row is still alive.
//!
//! The OS releases the lock when the process dies, so a lock file that can be locked, or
//! is missing, belongs to a store that is gone. Twin: the same rule in `_pycore` (`flock`
//! on POSIX, `LockFileEx` on Windows, both what `std::fs::File::try_lock` uses).

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::path::PathBuf;
use std::sync::Mutex;

use super::error::{CoreError, CoreResult};
use super::record::parse_uuid;

/// The owners directory of a snapshot file and this store's locked file in it.
#[derive(Debug)]
pub(crate) struct Owners {
    dir: PathBuf,
    /// This store's lock file while held.
    mine: Mutex<Option<(PathBuf, File)>>,
}

/// Whether `owner` is a name a store could have chosen (a canonical UUID). Owners come
/// from the database: no other name may reach the file system.
fn could_be_instance(owner: &str) -> bool {
    parse_uuid(owner).is_some()
}

impl Owners {
    /// Creates `<db_path>.owners/` if needed and takes the lock of `instance_id`.
    pub(crate) fn acquire(db_path: &str, instance_id: &str) -> CoreResult<Owners> {
        let dir = PathBuf::from(format!("{db_path}.owners"));
        let failed = |e: std::io::Error| {
            CoreError::Snapshot(format!(
                "{}: cannot create the owner lock file of this store ({e}); make the directory of \
                 {db_path} writable, or pass another db_path",
                dir.display()
            ))
        };
        std::fs::create_dir_all(&dir).map_err(failed)?;
        let path = dir.join(instance_id);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(failed)?;
        file.try_lock().map_err(|e| failed(e.into()))?;
        Ok(Owners {
            dir,
            mine: Mutex::new(Some((path, file))),
        })
    }

    /// Whether the store `owner` is gone: its lock file is missing or can be locked.
    /// When that cannot be told (e.g. no permission), the owner counts as alive, so its
    /// rows are left alone.
    pub(crate) fn is_dead(&self, owner: &str) -> bool {
        if !could_be_instance(owner) {
            return true; // no store has this name, so no lock file does
        }
        match File::open(self.dir.join(owner)) {
            Err(e) => e.kind() == ErrorKind::NotFound,
            // Closing the file right after releases the probe's lock.
            Ok(file) => file.try_lock().is_ok(),
        }
    }

    /// Deletes the lock file of a dead owner (a failure only leaves a stale file behind).
    pub(crate) fn remove(&self, owner: &str) {
        if could_be_instance(owner) {
            let _ = std::fs::remove_file(self.dir.join(owner));
        }
    }

    /// Releases this store's lock and deletes its file: its rows are orphans from now on.
    pub(crate) fn release(&self) {
        let held = self.mine.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((path, file)) = held {
            // Closed before the delete, which Windows refuses on an open file.
            drop(file);
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Drop for Owners {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "00000000-0000-4000-8000-00000000000a";
    const B: &str = "00000000-0000-4000-8000-00000000000b";

    fn db(dir: &tempfile::TempDir) -> String {
        dir.path().join("h.db").to_string_lossy().into_owned()
    }

    #[test]
    fn a_held_lock_is_alive_and_a_released_one_is_dead() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = db(&dir);
        let a = Owners::acquire(&path, A).expect("a");
        let b = Owners::acquire(&path, B).expect("b");
        let lock_file = dir.path().join("h.db.owners").join(A);
        assert!(lock_file.exists());
        assert!(!b.is_dead(A), "locked by a (another open file counts)");
        assert!(!a.is_dead(B));
        assert!(!b.is_dead(A), "probing does not take the lock away");
        a.release();
        assert!(!lock_file.exists(), "release deletes the file");
        assert!(b.is_dead(A), "missing");
        drop(b);
        assert!(!dir.path().join("h.db.owners").join(B).exists());
    }

    #[test]
    fn an_unlocked_file_is_dead_and_can_be_removed() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = db(&dir);
        let me = Owners::acquire(&path, A).expect("me");
        let stale = dir.path().join("h.db.owners").join(B);
        std::fs::write(&stale, b"").expect("stale");
        assert!(me.is_dead(B));
        me.remove(B);
        assert!(!stale.exists());
    }

    #[test]
    fn owner_names_never_leave_the_directory() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = db(&dir);
        let me = Owners::acquire(&path, A).expect("me");
        let outside = dir.path().join("keep");
        std::fs::write(&outside, b"x").expect("file");
        let kept = dir.path().join("h.db.owners").join("not-a-uuid");
        std::fs::write(&kept, b"").expect("file");
        for name in ["../keep", "..", ".", "", "not-a-uuid"] {
            assert!(me.is_dead(name), "{name:?}");
            me.remove(name);
        }
        assert!(outside.exists() && kept.exists());
        assert!(dir.path().join("h.db.owners").join(A).exists());
    }

    #[test]
    fn an_unwritable_place_is_reported_with_its_path() {
        let dir = tempfile::tempdir().expect("tmp");
        // A file where the owners directory should be.
        let path = db(&dir);
        std::fs::write(format!("{path}.owners"), b"").expect("file");
        let err = Owners::acquire(&path, A).expect_err("not a directory");
        assert!(
            matches!(&err, CoreError::Snapshot(m) if m.contains(&path) && m.contains("owner lock")),
            "{err}"
        );
    }
}
