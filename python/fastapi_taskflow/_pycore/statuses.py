"""Task statuses and the moves allowed between them."""

from __future__ import annotations

from typing import Final

#: In the order used by metrics. Twin of ``STATUSES`` in the Rust core and ``TaskStatus`` in ``models.py``.
STATUSES: Final[tuple[str, ...]] = ("pending", "running", "success", "failed", "interrupted", "cancelled", "rejected")

KNOWN: Final[frozenset[str]] = frozenset(STATUSES)
FINISHED: Final[tuple[str, ...]] = STATUSES[2:]
FINISHED_SET: Final[frozenset[str]] = frozenset(FINISHED)

#: A holder in one of these statuses no longer holds its idempotency key.
FREES_KEY: Final[frozenset[str]] = frozenset({"failed", "interrupted", "cancelled", "rejected"})

#: status -> statuses it may move to; finished statuses are absent (they never move).
ALLOWED: Final[dict[str, frozenset[str]]] = {
    "pending": frozenset({"running", "cancelled", "rejected", "interrupted"}),
    "running": frozenset({"running", "pending", *FINISHED}),
}
