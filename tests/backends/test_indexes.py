"""Pages of the SQL backends are served by an index walk in page order: never a scan of every row, never a sort."""

from __future__ import annotations

from typing import Any

import pytest

from fastapi_taskflow.backends import SharedBackend

from .conftest import require_server
from .rows import task_row

pytestmark = pytest.mark.anyio

T0 = 1_700_000_000_000_000
STATUSES = ["pending", "running", "success", "cancelled"]

#: (page filters, the index the walk must use: PostgreSQL's name, MySQL's name).
SHAPES = [
    ({}, "taskflow_history_created", "taskflow_history_created"),
    ({"status": "failed"}, "taskflow_history_status", "taskflow_history_status"),
    ({"func_name": "job3"}, "taskflow_history_name", "taskflow_history_name"),
    ({"tag": ("shard", "7")}, "taskflow_tags_pkey", "PRIMARY"),
]
CURSORS = [None, (T0 + 1_500, "t01500")]


@pytest.fixture(params=["postgres", "mysql"])
async def kind(request: pytest.FixtureRequest) -> str:
    """The SQL backends only: Redis pages walk sorted sets by construction, with no planner to ask."""
    await require_server(request.param)
    return str(request.param)


@pytest.fixture
async def filled(backend: SharedBackend) -> SharedBackend:
    # Each filter matches one row in fifty, so that the walk of its own index is the plan to beat.
    rows = [
        task_row(
            f"t{i:05d}",
            created_us=T0 + i,
            status="failed" if i % 50 == 0 else STATUSES[i % len(STATUSES)],
            func_name=f"job{i % 50}",
            tags_json=f'{{"shard": "{i % 50}"}}',
        )
        for i in range(3_000)
    ]
    await backend.upsert(rows)
    # Fresh statistics, as a server that has been running a while has them.
    if backend.kind == "postgres":
        async with backend._connection("analyze") as conn:  # type: ignore[attr-defined]
            await conn.execute(f"ANALYZE {backend._history}, {backend._tags}")  # type: ignore[attr-defined]
    else:
        await backend._fetch("analyze", "ANALYZE TABLE taskflow_history, taskflow_tags")  # type: ignore[attr-defined]
    return backend


async def explain(backend: Any, filters: dict[str, Any], before: tuple[int, str] | None) -> list[Any]:
    sql, params = backend._page_query(limit=5, before=before, **filters)
    return list(await backend._fetch("explain", "EXPLAIN " + sql, params))


@pytest.mark.parametrize("before", CURSORS, ids=["first-page", "next-page"])
@pytest.mark.parametrize(("filters", "pg_index", "mysql_index"), SHAPES, ids=["all", "status", "name", "tag"])
async def test_a_page_walks_an_index_in_page_order(
    filled: SharedBackend, filters: dict[str, Any], pg_index: str, mysql_index: str, before: Any
) -> None:
    plan = await explain(filled, filters, before)
    if filled.kind == "postgres":
        text = "\n".join(line for (line,) in plan)
        assert "Seq Scan" not in text, text
        assert "Sort" not in text, text  # the index gives the order
        assert f"Index Scan Backward using {pg_index}" in text or f"Index Only Scan Backward using {pg_index}" in text
    else:
        # MariaDB's EXPLAIN: id, select_type, table, type, possible_keys, key, key_len, ref, rows, Extra.
        walked = plan[0]
        assert walked[5] == mysql_index, plan
        assert walked[3] != "ALL", plan
        assert "filesort" not in (walked[9] or ""), plan
        if before is not None:
            assert walked[3] == "range", plan  # a next page starts at the cursor, not at the top
        for joined in plan[1:]:
            assert (joined[3], joined[5]) == ("eq_ref", "PRIMARY"), plan
