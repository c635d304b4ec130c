"""Owner locks: which stores writing journal rows to one snapshot file are still alive.

A store with a file holds an exclusive OS lock on ``<db_path>.owners/<instance_id>`` from
open until close or the death of its process; a journal row whose owner's lock file is
missing, or can be locked, belongs to a store that is gone. The Rust core takes the same
locks with ``std::fs::File::lock``: ``flock`` on POSIX (as here) and ``LockFileEx`` over the
whole file on Windows (which overlaps the byte ``msvcrt.locking`` takes), so each core sees
the other's locks.
"""

from __future__ import annotations

import os
import re
import sys
import weakref
from collections.abc import Iterable

# Owners come from the file; only a name a store could have chosen may name a file here.
_INSTANCE_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

if sys.platform == "win32":
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


class OwnerLock:
    """This store's lock file, held until ``release``."""

    __slots__ = ("__weakref__", "_unlock", "path")

    def __init__(self, directory: str, instance_id: str) -> None:
        """Create ``directory`` if needed and lock ``directory/instance_id``; raises ``OSError``."""
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, instance_id)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        # The id is fresh and no row names it yet, so no other store looks at this file.
        if not _try_lock(fd):
            os.close(fd)
            raise BlockingIOError(f"{self.path} is locked by another process")
        # Closing the file drops the lock; a store collected without close() drops it too, silently,
        # as the Rust core's lock is dropped with its store.
        self._unlock = weakref.finalize(self, os.close, fd)

    def release(self) -> None:
        """Unlock and remove the file: a closed store is gone (Windows only removes unlocked files)."""
        if self._unlock.alive:
            self._unlock()
            _remove(self.path)


def owner_alive(directory: str, owner: object) -> bool:
    """Whether the store ``owner`` still holds its lock file; False when that file is missing."""
    if not isinstance(owner, str) or not _INSTANCE_ID.fullmatch(owner):
        return False
    try:
        fd = os.open(os.path.join(directory, owner), os.O_RDONLY)  # flock needs no write access
    except FileNotFoundError:
        return False
    try:
        return not _try_lock(fd)
    finally:
        os.close(fd)  # also drops a lock taken here


def remove_owner_files(directory: str, owners: Iterable[str]) -> None:
    """Remove the lock files of dead ``owners`` (names no store could have chosen have none)."""
    for owner in owners:
        if _INSTANCE_ID.fullmatch(owner):
            _remove(os.path.join(directory, owner))


def _remove(path: str) -> None:
    # Only tidying: a missing lock file means a dead owner too.
    try:
        os.remove(path)
    except OSError:
        pass
