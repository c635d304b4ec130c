"""aiomysql's cursor with bytes parameters escaped by PyMySQL itself.

aiomysql 0.3 escapes a ``bytes`` parameter with ``pymysql.converters.escape_bytes_prefixed``,
which PyMySQL 1.2 replaced by a placeholder string, so every query with a bytes
parameter fails with ``TypeError: 'str' object is not callable``. PyMySQL's own
``escape_bytes`` exists in every 1.x and writes a ``_binary`` literal.
"""

from __future__ import annotations

from typing import Any

import aiomysql  # type: ignore[import-untyped]
from pymysql.converters import escape_bytes  # type: ignore[import-untyped]


class Cursor(aiomysql.Cursor):  # type: ignore[misc]
    def _escape_args(self, args: object, conn: Any) -> object:
        if isinstance(args, (tuple, list)):
            return tuple(escape_bytes(arg) if isinstance(arg, bytes) else conn.escape(arg) for arg in args)
        return super()._escape_args(args, conn)
