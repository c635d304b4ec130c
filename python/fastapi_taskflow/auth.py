"""Dashboard and API authentication: signed session tokens, the login page, request guards.

The token is the HS256 JSON Web Token of the ``fastapi_taskflow`` API: unpadded base64url
of the header, of ``{"exp", "sub"}`` and of the HMAC-SHA256 signature, joined with dots.
It travels in the ``taskflow_token`` cookie (``HttpOnly``, ``SameSite=Lax``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import secrets
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, cast

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

COOKIE_NAME = "taskflow_token"

_HEADER = {"alg": "HS256", "typ": "JWT"}
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class TaskAuthBackend(ABC):
    """Decides who may use the dashboard and the task routes."""

    @abstractmethod
    def authenticate_user(self, username: str, password: str) -> bool:
        """True when ``password`` is right for ``username``. Called synchronously."""


class CredentialsBackend(TaskAuthBackend):
    """Fixed ``(username, password)`` pairs, compared in constant time."""

    def __init__(self, credentials: Sequence[tuple[str, str]]) -> None:
        self._credentials = [(user.encode(), password.encode()) for user, password in credentials]

    def authenticate_user(self, username: str, password: str) -> bool:
        user_bytes, password_bytes = username.encode(), password.encode()
        found = False
        for user, expected in self._credentials:
            # Every pair is compared, so the time taken does not say which user exists.
            user_ok = hmac.compare_digest(user, user_bytes)
            password_ok = hmac.compare_digest(expected, password_bytes)
            found |= user_ok and password_ok
        return found


def auth_backend(auth: object) -> TaskAuthBackend:
    """The backend for ``TaskAdmin(auth=...)``: a tuple, a list of tuples or a backend."""
    if isinstance(auth, TaskAuthBackend):
        return auth
    if _is_pair(auth):
        return CredentialsBackend([cast("tuple[str, str]", tuple(cast("Sequence[str]", auth)))])
    if isinstance(auth, list) and auth and all(_is_pair(item) for item in auth):
        return CredentialsBackend([cast("tuple[str, str]", tuple(item)) for item in auth])
    raise TypeError(
        "auth must be a (username, password) tuple, a list of such tuples or a TaskAuthBackend, "
        f"got {type(auth).__name__}"
    )


def _is_pair(value: object) -> bool:
    return isinstance(value, tuple) and len(value) == 2 and all(isinstance(part, str) for part in value)


# -- tokens -------------------------------------------------------------------------


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret_key: str, signing_input: str) -> str:
    return _b64encode(hmac.new(secret_key.encode(), signing_input.encode("ascii"), hashlib.sha256).digest())


def create_token(username: str, secret_key: str, expiry: int = 86_400) -> str:
    """A token for ``username`` that expires ``expiry`` seconds from now."""
    header = _b64encode(json.dumps(_HEADER, separators=(",", ":")).encode())
    claims = {"exp": int(time.time()) + expiry, "sub": username}
    payload = _b64encode(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}"
    return f"{signing_input}.{_sign(secret_key, signing_input)}"


def decode_token(token: str, secret_key: str) -> dict[str, Any] | None:
    """The payload of a token whose signature matches and which has not expired, else None."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    header, payload, signature = parts
    try:
        expected = _sign(secret_key, f"{header}.{payload}")
    except UnicodeEncodeError:
        return None
    if not hmac.compare_digest(expected, signature):
        return None
    try:
        claims = json.loads(_b64decode(payload))
    except ValueError:
        return None
    if not isinstance(claims, dict):
        return None
    exp = claims.get("exp")
    if not isinstance(exp, (int, float)) or isinstance(exp, bool) or exp <= time.time():
        return None
    return claims


def verify_token(token: str, secret_key: str) -> bool:
    """True when the token is signed with ``secret_key`` and has not expired."""
    return decode_token(token, secret_key) is not None


# -- request guards ---------------------------------------------------------------


def is_cross_site(request: Request) -> bool:
    """True for a browser request sent by another site.

    Browsers send ``Sec-Fetch-Site`` (and ``Origin`` on unsafe methods); requests from
    scripts and tools send neither, and are not what cross-site request forgery abuses.
    """
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None:
        return fetch_site not in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None:
        return False
    host = request.headers.get("host", "")
    return origin == "null" or origin.split("://", 1)[-1] != host


async def refuse_cross_site(request: Request) -> None:
    """Dependency: a state-changing request from another site gets 403."""
    if request.method not in _SAFE_METHODS and is_cross_site(request):
        raise HTTPException(status_code=403, detail="Cross-site request refused")


@dataclass(frozen=True)
class AuthSettings:
    """What the guards and the login routes need to know."""

    backend: TaskAuthBackend
    secret_key: str
    token_expiry: int
    title: str

    @classmethod
    def create(cls, auth: object, *, secret_key: str | None, token_expiry: int, title: str) -> AuthSettings:
        backend = auth_backend(auth)
        if token_expiry <= 0:
            raise ValueError(f"token_expiry must be a positive number of seconds, got {token_expiry!r}")
        if not secret_key:
            warnings.warn(
                "TaskAdmin(auth=...) without secret_key: a random key was generated, so every session ends "
                "when the process restarts and sessions are not shared between processes. "
                "Pass secret_key= (e.g. from an environment variable).",
                UserWarning,
                stacklevel=3,
            )
            secret_key = secrets.token_hex(32)
        return cls(backend=backend, secret_key=secret_key, token_expiry=token_expiry, title=title)

    def claims(self, request: Request) -> dict[str, Any] | None:
        """The valid token's payload of the request's cookie, else None."""
        token = request.cookies.get(COOKIE_NAME)
        return None if token is None else decode_token(token, self.secret_key)

    async def require(self, request: Request) -> None:
        """Dependency: 401 ``{"detail": "Unauthorized"}`` without a valid session cookie."""
        claims = self.claims(request)
        if claims is None:
            raise HTTPException(status_code=401, detail="Unauthorized")
        request.state.taskflow_user = claims.get("sub")


# -- login routes ---------------------------------------------------------------------


def _login_page(settings: AuthSettings, error: str | None) -> str:
    template = files("fastapi_taskflow.dashboard").joinpath("login.html").read_text(encoding="utf-8")
    error_html = f'<p class="login-error" role="alert">{html.escape(error)}</p>' if error else ""
    return template.replace("{{title}}", html.escape(settings.title)).replace("{{error}}", error_html)


def create_auth_router(settings: AuthSettings) -> APIRouter:
    """``GET/POST <admin path>/auth/login`` and ``GET <admin path>/auth/logout``, outside the OpenAPI schema."""
    router = APIRouter(include_in_schema=False)

    @router.get("/auth/login")
    async def login_form() -> HTMLResponse:
        return HTMLResponse(_login_page(settings, None), headers=PAGE_HEADERS)

    @router.post("/auth/login")
    async def login(request: Request) -> Response:
        if is_cross_site(request):
            # Logging a victim into an attacker's account is a forgery too.
            raise HTTPException(status_code=403, detail="Cross-site request refused")
        form = await request.form()
        username, password = form.get("username"), form.get("password")
        if (
            isinstance(username, str)
            and isinstance(password, str)
            and settings.backend.authenticate_user(username, password)
        ):
            # Relative locations keep working when the app is mounted under a prefix.
            response = RedirectResponse("../dashboard", status_code=302)
            response.set_cookie(
                COOKIE_NAME,
                create_token(username, settings.secret_key, settings.token_expiry),
                max_age=settings.token_expiry,
                path="/",
                httponly=True,
                samesite="lax",
                secure=request.url.scheme == "https",
            )
            return response
        page = _login_page(settings, "Invalid username or password")
        return HTMLResponse(page, status_code=401, headers=PAGE_HEADERS)

    @router.get("/auth/logout")
    async def logout() -> RedirectResponse:
        response = RedirectResponse("login", status_code=302)
        response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="lax")
        return response

    return router


#: Headers of every HTML page: no external resource may load, no framing, no sniffing.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
