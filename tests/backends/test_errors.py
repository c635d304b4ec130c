"""Failures: unreachable servers, redacted URLs, missing drivers, bad constructor arguments. No server needed."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap

import pytest

from fastapi_taskflow.backends import BackendError, MySQLBackend, PostgresBackend, RedisBackend, SharedBackend
from fastapi_taskflow.backends.base import redact

pytestmark = pytest.mark.anyio


def closed_port() -> int:
    """A local port nothing listens on (it was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def unreachable(kind: str) -> SharedBackend:
    port = closed_port()
    if kind == "redis":
        return RedisBackend(f"redis://:s3cret-pw@127.0.0.1:{port}/0")
    if kind == "postgres":
        return PostgresBackend(f"postgresql://app:s3cret-pw@127.0.0.1:{port}/tasks")
    return MySQLBackend(f"mysql://app:s3cret-pw@127.0.0.1:{port}/tasks")


@pytest.mark.parametrize("kind", ["redis", "postgres", "mysql"])
async def test_an_unreachable_server_raises_backend_error_with_the_password_redacted(kind: str) -> None:
    backend = unreachable(kind)
    with pytest.raises(BackendError) as caught:
        await backend.open()
    error = caught.value
    assert (error.kind, backend.kind) == (kind, kind)
    assert "s3cret-pw" not in str(error)
    assert "***@127.0.0.1" in error.url
    assert str(error).startswith(f"{kind} backend at {error.url}: cannot connect: ")
    assert error.__cause__ is not None
    with pytest.raises(BackendError, match="not open"):
        await backend.ping()
    await backend.close()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@host:6379/0", "redis://:***@host:6379/0"),
        ("postgresql://user:p%40ss@db:5432/x", "postgresql://user:***@db:5432/x"),
        ("mysql://root@host/db", "mysql://root@host/db"),
        (
            "postgresql://db/x?user=u&password=pw&sslmode=require",
            "postgresql://db/x?user=u&password=***&sslmode=require",
        ),
        ("host=db user=u password='it\\'s secret' dbname=x", "host=db user=u password=*** dbname=x"),
        ("host=db password = pw", "host=db password = ***"),
    ],
)
def test_urls_are_shown_without_their_password(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_backend_error_hides_a_password_the_driver_quoted() -> None:
    error = BackendError("postgres", "postgresql://u:hunter2@db/x", "ping the server", OSError("bad hunter2"))
    assert str(error) == "postgres backend at postgresql://u:***@db/x: cannot ping the server: OSError: bad ***"


def test_constructor_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="url or a pool"):
        PostgresBackend()
    with pytest.raises(ValueError, match="decode_responses"):
        RedisBackend(decode_responses=True)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://h/db", "starts with mysql://"),
        ("mysql://root@h", "names no database"),
        ("mysql://root@h/db?ssl-ca=/x.pem", "only ssl-mode"),
        ("mysql://root@h/db?ssl-mode=SOMETIMES", "unknown ssl-mode"),
        ("mysql://root@h/db?charset=latin1", "always uses utf8mb4"),
        ("mysql://root@h/db?init_command=SET+x", "relies on its own setting"),
        ("mysql://root@h/db?maxsize=9", "max_workers"),
        ("mysql://root@h/db?connect_timeout=soon", "needs a number"),
        ("mysql://root@h/db?local_infile=maybe", "true or false"),
        ("mysql://root@h/db?colour=blue", "unknown MySQL URL option 'colour'"),
    ],
)
def test_bad_mysql_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MySQLBackend(url)


def test_mysql_url_options_reach_the_driver() -> None:
    from fastapi_taskflow.backends._mysql_url import pool_arguments

    arguments = pool_arguments(
        "mysql://app:p%40ss@db.example:3307/tasks?connect_timeout=2.5&local_infile=false&ssl-mode=VERIFY_CA&minsize=2"
    )
    tls = arguments.pop("ssl")
    assert arguments == {
        "host": "db.example",
        "port": 3307,
        "user": "app",
        "password": "p@ss",
        "db": "tasks",
        "connect_timeout": 2.5,
        "local_infile": False,
        "minsize": 2,
    }
    assert tls is not None and tls.check_hostname is False and tls.verify_mode.name == "CERT_REQUIRED"
    required = pool_arguments("mysql://h/db?ssl-mode=required")["ssl"]
    assert required is not None and required.verify_mode.name == "CERT_NONE"
    assert pool_arguments("mysql://h/db?ssl-mode=DISABLED")["ssl"] is None
    assert "ssl" not in pool_arguments("mysql://h/db")


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_importing_the_backends_imports_no_driver() -> None:
    loaded = run_python(
        """
        import sys
        import fastapi_taskflow.backends
        print(sorted(m for m in ("redis", "psycopg", "psycopg_pool", "aiomysql", "pymysql") if m in sys.modules))
        """
    )
    assert loaded.strip() == "[]"


def test_a_missing_driver_names_the_extra_to_install() -> None:
    output = run_python(
        """
        import importlib.abc, json, sys

        class Missing(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.partition(".")[0] in {"redis", "psycopg", "psycopg_pool", "aiomysql", "pymysql"}:
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None

        sys.meta_path.insert(0, Missing())
        from fastapi_taskflow.backends import MySQLBackend, PostgresBackend, RedisBackend

        messages = {}
        for name, make in [
            ("redis", lambda: RedisBackend()),
            ("postgres", lambda: PostgresBackend("postgresql://h/db")),
            ("mysql", lambda: MySQLBackend("mysql://h/db")),
        ]:
            try:
                make()
            except ImportError as exc:
                messages[name] = str(exc)
        print(json.dumps(messages))
        """
    )
    messages = json.loads(output)
    assert set(messages) == {"redis", "postgres", "mysql"}
    for extra, message in messages.items():
        assert f"pip install 'fastapi-taskflow-rs[{extra}]'" in message
        assert "No module named" in message
