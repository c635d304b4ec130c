"""Task ids: random UUID4 strings."""

from __future__ import annotations

from os import urandom

# The variant nibble of a UUID4 is 10xx in binary: one of 8, 9, a, b.
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def new_task_id() -> str:
    """``str(uuid.uuid4())``, built without the ``UUID`` object (the create path is hot)."""
    h = urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"
