"""JSON as bytes: orjson when it is installed, else the standard library."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

dumps: Callable[[Any], bytes]
loads: Callable[[str | bytes], Any]

try:
    import orjson
except ImportError:  # pragma: no cover - orjson is a dependency, this is the safety net
    import json

    def dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()

    loads = json.loads
else:
    dumps = orjson.dumps
    loads = orjson.loads
