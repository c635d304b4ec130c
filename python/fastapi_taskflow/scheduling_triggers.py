"""When a recurring schedule is due: a fixed grid of ``every`` seconds, or a cron expression in a timezone.

Times are integers of microseconds since the Unix epoch, the core's unit. Every
process computes the same tick instants from the same schedule (the grid starts at
the epoch, cron slots are absolute instants), so the instant of a tick can name its
lock: processes sharing a snapshot file then fire each tick once.
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_US = 1_000_000

CRON_EXTRA_HINT = "pip install 'fastapi-taskflow-rs[cron]'"


class EveryTrigger:
    """Ticks at the multiples of ``every`` seconds since the epoch.

    A fixed grid rather than "``every`` after the last firing": firings do not drift
    with the time a firing takes, and every process agrees on the instants.
    """

    def __init__(self, every: float) -> None:
        if isinstance(every, bool) or not isinstance(every, (int, float)) or not 0 < every < math.inf:
            raise ValueError(f"every must be a positive number of seconds, got {every!r}")
        self.every = every
        self.period_us = max(1, round(every * _US))

    def latest(self, now_us: int) -> int:
        return now_us - now_us % self.period_us

    def after(self, now_us: int) -> int:
        return self.latest(now_us) + self.period_us

    def describe(self) -> dict[str, Any]:
        return {"every": self.every, "cron": None}


class CronTrigger:
    """Ticks at the slots of a 5-field cron expression, read in ``timezone`` (by croniter)."""

    def __init__(self, expression: str, zone: ZoneInfo) -> None:
        croniter = _croniter()
        if not isinstance(expression, str) or len(expression.split()) != 5:
            raise ValueError(f"cron must be a string of 5 fields (minute hour day month weekday), got {expression!r}")
        if not croniter.is_valid(expression):
            raise ValueError(f"cron expression {expression!r} is not valid")
        self.expression = expression
        self.zone = zone
        self._croniter = croniter
        try:
            self.after(round(time.time() * _US))
        except Exception as exc:  # e.g. "0 0 30 2 *": valid fields, but no such day
            raise ValueError(f"cron expression {expression!r} has no next slot ({exc})") from exc

    def _at(self, now_us: int) -> datetime:
        return datetime.fromtimestamp(now_us // _US, self.zone) + timedelta(microseconds=now_us % _US)

    def latest(self, now_us: int) -> int:
        # croniter's previous slot is strictly before its start: start just after now.
        start = self._at(now_us) + timedelta(microseconds=1)
        return _us(self._croniter(self.expression, start).get_prev(datetime))

    def after(self, now_us: int) -> int:
        return _us(self._croniter(self.expression, self._at(now_us)).get_next(datetime))

    def describe(self) -> dict[str, Any]:
        return {"every": None, "cron": self.expression}


def load_zone(name: str) -> ZoneInfo:
    """The IANA timezone ``name``; ``ValueError`` naming it when unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise ValueError(f"unknown timezone {name!r} (expected an IANA name such as 'Europe/Paris')") from exc


#: The tick instants of one recurring schedule: ``latest(now)`` (the last tick at or before
#: now), ``after(now)`` (the first one strictly after) and ``describe()`` (``{"every", "cron"}``).
Trigger = EveryTrigger | CronTrigger


def make_trigger(every: float | None, cron: str | None, zone_name: str) -> Trigger:
    """The trigger of exactly one of ``every`` / ``cron``; ``ValueError`` otherwise."""
    if (every is None) == (cron is None):
        raise ValueError("pass exactly one of every= (seconds) or cron= (a 5-field cron expression)")
    zone = load_zone(zone_name)
    if every is not None:
        return EveryTrigger(every)
    assert cron is not None
    return CronTrigger(cron, zone)


def _croniter() -> Any:
    """The croniter class, or ``ImportError`` saying which extra installs it."""
    try:
        from croniter import croniter  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ImportError(f"cron schedules need croniter: {CRON_EXTRA_HINT}") from exc
    return croniter


def _us(moment: datetime) -> int:
    return round(moment.timestamp() * _US)
