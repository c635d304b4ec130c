"""Read a snapshot file from another process, which is the only safe way while the Rust core has it open.

The Rust core links its own copy of SQLite. Two copies in one process do not see each
other's POSIX locks: a connection of Python's ``sqlite3`` opened here would believe it is
alone, and could reset the shared-memory file under the core (SIGBUS) or checkpoint and
delete its write-ahead log (lost writes). Users are told the same in the README.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

_READER = r"""
import base64, json, sqlite3, sys
connection = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
cursor = connection.execute(sys.argv[2], json.loads(sys.argv[3]))
names = [d[0] for d in cursor.description]
def plain(v):
    return {"$bytes": base64.b64encode(v).decode()} if isinstance(v, bytes) else v
print(json.dumps([dict(zip(names, map(plain, row))) for row in cursor]))
"""


def _value(v: Any) -> Any:
    return base64.b64decode(v["$bytes"]) if isinstance(v, dict) else v


def query(db: Path | str, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """Rows of ``sql`` on ``db`` (opened read-only, in a subprocess) as dicts by column name."""
    done = subprocess.run(
        [sys.executable, "-c", _READER, str(db), sql, json.dumps(list(params))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [{k: _value(v) for k, v in row.items()} for row in json.loads(done.stdout)]


def rows(db: Path | str) -> dict[str, dict[str, Any]]:
    """Every history row by task id."""
    return {row["task_id"]: row for row in query(db, "SELECT * FROM task_history")}


def count(db: Path | str, where: str = "1", params: tuple[Any, ...] = ()) -> int:
    (row,) = query(db, f"SELECT count(*) AS n FROM task_history WHERE {where}", params)
    return int(row["n"])
