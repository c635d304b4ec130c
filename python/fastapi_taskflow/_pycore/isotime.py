"""Microsecond timestamps and their ISO 8601 form."""

from __future__ import annotations

from datetime import datetime, timedelta
from time import time_ns

_EPOCH = datetime(1970, 1, 1)
# "YYYY-MM-DDTHH:MM:SS" per second: records made close together share seconds, and
# building the datetime is most of the cost of a timestamp.
_SECONDS: dict[int, str] = {}
_SECONDS_MAX = 4096


def now_us() -> int:
    """Microseconds since the Unix epoch."""
    return time_ns() // 1000


def iso_from_us(us: int) -> str:
    """What ``datetime.isoformat()`` writes for the aware UTC instant, built from integers (no float rounding).

    ``"2024-01-01T12:00:00.123456+00:00"``, the fraction omitted when it is zero.
    """
    seconds, micros = divmod(us, 1_000_000)
    prefix = _SECONDS.get(seconds)
    if prefix is None:
        if len(_SECONDS) >= _SECONDS_MAX:
            _SECONDS.clear()
        prefix = _SECONDS[seconds] = (_EPOCH + timedelta(seconds=seconds)).isoformat()
    return f"{prefix}.{micros:06d}+00:00" if micros else f"{prefix}+00:00"
