"""Authentication: tokens, the login flow, guarded routes, cookies and cross-site refusal (in-process)."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from fastapi_taskflow import TaskAdmin, TaskManager
from fastapi_taskflow.auth import (
    COOKIE_NAME,
    TaskAuthBackend,
    create_token,
    decode_token,
    refuse_cross_site,
    verify_token,
)

SECRET = "s3cret-key-for-tests"


def make_client(**admin: Any) -> TestClient:
    app = FastAPI()
    TaskAdmin(app, TaskManager(), **admin)
    return TestClient(app, follow_redirects=False)


def b64json(part: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def login(client: TestClient, username: str = "admin", password: str = "pw") -> Any:
    return client.post("/tasks/auth/login", data={"username": username, "password": password})


# -- tokens ---------------------------------------------------------------------------


def test_token_is_the_specified_hs256_jwt() -> None:
    token = create_token("ada", SECRET, 60)
    header, payload, _signature = token.split(".")
    assert "=" not in token
    assert b64json(header) == {"alg": "HS256", "typ": "JWT"}
    claims = b64json(payload)
    assert claims["sub"] == "ada"
    assert time.time() + 55 < claims["exp"] <= time.time() + 60
    assert verify_token(token, SECRET)
    assert decode_token(token, SECRET) == claims


def test_token_is_refused_when_tampered_expired_or_signed_elsewhere() -> None:
    token = create_token("ada", SECRET, 60)
    header, _payload, signature = token.split(".")
    forged = base64.urlsafe_b64encode(b'{"exp":9999999999,"sub":"root"}').rstrip(b"=").decode()
    assert not verify_token(f"{header}.{forged}.{signature}", SECRET)
    assert not verify_token(token, "another-key")
    assert not verify_token(create_token("ada", SECRET, -1), SECRET)
    for junk in ("", "a.b", "a.b.c", "é.é.é", token + "x"):
        assert decode_token(junk, SECRET) is None


# -- TaskAdmin(auth=...) --------------------------------------------------------------


def test_missing_secret_key_is_a_loud_warning() -> None:
    with pytest.warns(UserWarning, match="without secret_key"):
        client = make_client(auth=("admin", "pw"))
    with client:
        assert login(client).status_code == 302


def test_auth_accepts_tuples_lists_and_backends_and_nothing_else() -> None:
    class OnlyGrace(TaskAuthBackend):
        def authenticate_user(self, username: str, password: str) -> bool:
            return username == "grace" and password == "hopper"

    with make_client(auth=[("ada", "1"), ("alan", "2")], secret_key=SECRET) as client:
        assert login(client, "alan", "2").status_code == 302
        assert login(client, "alan", "1").status_code == 401
    with make_client(auth=OnlyGrace(), secret_key=SECRET) as client:
        assert login(client, "grace", "hopper").status_code == 302
        assert login(client, "ada", "1").status_code == 401
    for bad in ("admin:pw", ("only-user",), [], [("a", "b"), "c"], 42):
        with pytest.raises(TypeError, match="auth must be"):
            TaskAdmin(FastAPI(), TaskManager(), auth=bad, secret_key=SECRET)


def test_every_data_route_is_guarded_until_login() -> None:
    with make_client(auth=("admin", "pw"), secret_key=SECRET, title="Acme <ops>") as client:
        for route in ("/tasks", "/tasks/metrics", "/tasks/some-id", "/tasks/dashboard/registered"):
            response = client.get(route)
            assert response.status_code == 401, route
            assert response.json() == {"detail": "Unauthorized"}
        assert client.get("/tasks/dashboard/stream").status_code == 401
        page = client.get("/tasks/dashboard")
        assert page.status_code == 302
        assert page.headers["location"] == "auth/login"
        form = client.get("/tasks/auth/login")
        assert form.status_code == 200
        assert "<title>Sign in · Acme &lt;ops&gt;</title>" in form.text
        assert 'name="password"' in form.text

        bad = login(client, "admin", "wrong")
        assert bad.status_code == 401
        assert "Invalid username or password" in bad.text
        assert COOKIE_NAME not in bad.cookies

        good = login(client)
        assert good.status_code == 302
        assert good.headers["location"] == "../dashboard"
        cookie = good.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE_NAME}=")
        assert "HttpOnly" in cookie
        assert "SameSite=lax" in cookie
        assert "Max-Age=86400" in cookie
        assert decode_token(good.cookies[COOKIE_NAME], SECRET)["sub"] == "admin"  # type: ignore[index]

        assert client.get("/tasks").status_code == 200
        assert client.get("/tasks/metrics").status_code == 200
        assert client.get("/tasks/some-id").status_code == 404
        dashboard = client.get("/tasks/dashboard")
        assert dashboard.status_code == 200
        assert "<title>Acme &lt;ops&gt;</title>" in dashboard.text

        out = client.get("/tasks/auth/logout")
        assert out.status_code == 302
        assert out.headers["location"] == "login"
        assert client.get("/tasks").status_code == 401


def test_cookie_signed_with_another_key_is_refused() -> None:
    with make_client(auth=("admin", "pw"), secret_key=SECRET) as client:
        client.cookies.set(COOKIE_NAME, create_token("admin", "other-key"))
        assert client.get("/tasks").status_code == 401
        client.cookies.set(COOKIE_NAME, create_token("admin", SECRET))
        assert client.get("/tasks").status_code == 200


def test_token_expiry_sets_the_cookie_lifetime() -> None:
    with make_client(auth=("admin", "pw"), secret_key=SECRET, token_expiry=120) as client:
        response = login(client)
        assert "Max-Age=120" in response.headers["set-cookie"]
        assert decode_token(response.cookies[COOKIE_NAME], SECRET)["exp"] <= time.time() + 120  # type: ignore[index]
    with pytest.raises(ValueError, match="token_expiry"):
        TaskAdmin(FastAPI(), TaskManager(), auth=("a", "b"), secret_key=SECRET, token_expiry=0)


def test_cross_site_login_is_refused() -> None:
    with make_client(auth=("admin", "pw"), secret_key=SECRET) as client:
        form = {"username": "admin", "password": "pw"}
        evil = client.post("/tasks/auth/login", data=form, headers={"Sec-Fetch-Site": "cross-site"})
        assert evil.status_code == 403
        evil_origin = client.post("/tasks/auth/login", data=form, headers={"Origin": "https://evil.example"})
        assert evil_origin.status_code == 403
        same = client.post(
            "/tasks/auth/login", data=form, headers={"Sec-Fetch-Site": "same-origin", "Origin": "http://testserver"}
        )
        assert same.status_code == 302


def test_cross_site_guard_refuses_unsafe_requests_from_other_sites_only() -> None:
    # The guard TaskAdmin puts on the task router; state-changing routes (retry, cancel) meet it there.
    app = FastAPI()

    @app.post("/act", dependencies=[Depends(refuse_cross_site)])
    async def act() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/read", dependencies=[Depends(refuse_cross_site)])
    async def read() -> dict[str, bool]:
        return {"ok": True}

    with TestClient(app) as client:
        assert client.post("/act").status_code == 200  # scripts and tools send no browser headers
        assert client.post("/act", headers={"Sec-Fetch-Site": "same-origin"}).status_code == 200
        assert client.post("/act", headers={"Origin": "http://testserver"}).status_code == 200
        for headers in (
            {"Sec-Fetch-Site": "cross-site"},
            {"Sec-Fetch-Site": "same-site"},
            {"Origin": "https://evil.example"},
            {"Origin": "null"},
        ):
            response = client.post("/act", headers=headers)
            assert response.status_code == 403, headers
            assert response.json() == {"detail": "Cross-site request refused"}
        assert client.get("/read", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200


def test_without_auth_everything_is_open_and_there_is_no_login() -> None:
    with make_client() as client:
        assert client.get("/tasks").status_code == 200
        assert client.get("/tasks/dashboard").status_code == 200
        assert client.get("/tasks/auth/login").status_code == 404
