"""``mysql://user:pass@host:port/db?opts`` to the keyword arguments of ``aiomysql.create_pool``.

As fastapi-taskflow 0.12.1 reads it: the options go to the driver, ``ssl-mode`` other
than ``DISABLED`` turns TLS on, and any other hyphenated option is refused.
"""

from __future__ import annotations

import ssl
from typing import Final
from urllib.parse import parse_qsl, unquote, urlsplit

_INT_OPTIONS: Final = frozenset({"minsize", "pool_recycle"})
_FLOAT_OPTIONS: Final = frozenset({"connect_timeout"})
_BOOL_OPTIONS: Final = frozenset({"local_infile", "echo"})
_TEXT_OPTIONS: Final = frozenset(
    {"unix_socket", "read_default_file", "read_default_group", "auth_plugin", "program_name", "server_public_key"}
)
#: Options the backend sets itself, and why a URL may not.
_FIXED: Final[dict[str, str]] = {
    **dict.fromkeys(("host", "port", "user", "password", "db"), "it is part of the URL"),
    **dict.fromkeys(
        ("autocommit", "init_command", "sql_mode", "conv", "use_unicode", "cursorclass", "loop"),
        "the backend relies on its own setting",
    ),
    "charset": "the backend always uses utf8mb4",
    "client_flag": "the backend relies on the default flags (CLIENT_FOUND_ROWS would break its locks)",
    "ssl": "use ssl-mode=REQUIRED, VERIFY_CA or VERIFY_IDENTITY",
    "maxsize": "use MySQLBackend(max_workers=...)",
}
_SSL_MODES: Final = frozenset({"DISABLED", "PREFERRED", "REQUIRED", "VERIFY_CA", "VERIFY_IDENTITY"})
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


def _tls(mode: str) -> ssl.SSLContext | None:
    mode = mode.upper()
    if mode not in _SSL_MODES:
        raise ValueError(f"unknown ssl-mode {mode!r}; expected one of {', '.join(sorted(_SSL_MODES))}")
    if mode == "DISABLED":
        return None
    context = ssl.create_default_context()
    if mode in ("PREFERRED", "REQUIRED"):
        # As the mysql client: encrypted, the server's certificate not checked.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif mode == "VERIFY_CA":
        context.check_hostname = False
    return context


def _option(name: str, value: str) -> object:
    if name in _FIXED:
        raise ValueError(f"the option {name!r} cannot be set in a MySQL URL: {_FIXED[name]}")
    try:
        if name in _INT_OPTIONS:
            return int(value)
        if name in _FLOAT_OPTIONS:
            return float(value)
    except ValueError:
        raise ValueError(f"the option {name!r} needs a number, got {value!r}") from None
    if name in _BOOL_OPTIONS:
        if value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ValueError(f"the option {name!r} needs true or false, got {value!r}")
    if name in _TEXT_OPTIONS:
        return value
    known = sorted(_INT_OPTIONS | _FLOAT_OPTIONS | _BOOL_OPTIONS | _TEXT_OPTIONS | {"ssl-mode"})
    raise ValueError(f"unknown MySQL URL option {name!r}; known: {', '.join(known)}")


def pool_arguments(url: str) -> dict[str, object]:
    """Keyword arguments for ``aiomysql.create_pool`` (connection and pool options) from ``url``.

    Raises ``ValueError`` for another scheme, a URL without a database, an unknown or
    hyphenated option (``ssl-mode`` excepted) or a bad option value.
    """
    parts = urlsplit(url)
    if not parts.scheme.startswith(("mysql", "mariadb")):
        raise ValueError(f"a MySQL URL starts with mysql:// (got scheme {parts.scheme!r})")
    database = unquote(parts.path.lstrip("/"))
    if not database:
        raise ValueError("the MySQL URL names no database: mysql://user:pass@host:port/database")
    arguments: dict[str, object] = {
        "host": parts.hostname or "localhost",
        "port": parts.port or 3306,
        "user": unquote(parts.username or ""),
        "password": unquote(parts.password or ""),
        "db": database,
    }
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name == "ssl-mode":
            arguments["ssl"] = _tls(value)
        elif "-" in name:
            raise ValueError(f"unsupported MySQL URL option {name!r} (of the hyphenated ones only ssl-mode is)")
        else:
            arguments[name] = _option(name, value)
    return arguments
