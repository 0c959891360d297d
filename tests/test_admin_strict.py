"""The admin with MFA mandatory, and its login rate limit (its own server each).

Both need a server of their own: one runs with ORCHESTRATOR_DB_ADMIN_MFA_REQUIRED,
and the rate-limit test leaves its address blocked.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from admin_support import (
    AdminServer,
    create_operator,
    login,
    start_admin_server,
    stop_admin_server,
)

from orchestrator_db.admin.app import LOGIN_ATTEMPTS


@pytest.fixture
def mfa_server(test_db) -> Iterator[AdminServer]:
    server = start_admin_server(test_db, "mfa", ORCHESTRATOR_DB_ADMIN_MFA_REQUIRED="true")
    yield server
    stop_admin_server(server)


@pytest.fixture
def fresh_server(test_db) -> Iterator[AdminServer]:
    server = start_admin_server(test_db, "rate-limit")
    yield server
    stop_admin_server(server)


@pytest.mark.asyncio
async def test_mandatory_mfa_allows_only_enrollment(mfa_server, owner) -> None:
    """Make sure that with MFA mandatory an unenrolled operator can reach only MFA setup until enrolled."""
    account = await create_operator(owner, superuser=True)
    client = login(mfa_server, account)

    assert client.get("/api/tables/").status_code == 403
    assert client.get("/api/tables/user_credentials_admin/").status_code == 403
    assert client.post("/api/forms/set-credential-secrets/", json={}).status_code == 403
    assert client.get("/api/mfa-setup/").status_code == 200

    enrolled = client.post(
        "/api/mfa-setup/", json={"action": "register", "password": account.password, "format": "json"}
    )
    assert enrolled.status_code == 200, enrolled.text
    assert client.get("/api/tables/").status_code == 200


@pytest.mark.asyncio
async def test_login_is_rate_limited(fresh_server, owner) -> None:
    """Make sure repeated login attempts from one address are refused with 429 once over the limit, even with the right password."""
    account = await create_operator(owner)
    client = httpx.Client(base_url=fresh_server.admin_url)
    client.get("/")
    headers = {"X-CSRFToken": client.cookies.get("csrftoken")}
    wrong = {"username": account.username, "password": "not-the-password"}

    statuses = [
        client.post("/public/login/", json=wrong, headers=headers).status_code
        for _ in range(LOGIN_ATTEMPTS)
    ]
    right = client.post(
        "/public/login/", json={**wrong, "password": account.password}, headers=headers
    )

    assert statuses == [401] * LOGIN_ATTEMPTS
    assert right.status_code == 429
    assert "id" not in client.cookies


@pytest.fixture
def proxied_server(test_db) -> Iterator[AdminServer]:
    server = start_admin_server(test_db, "trusted-proxy", ORCHESTRATOR_DB_ADMIN_TRUSTED_PROXIES="127.0.0.1")
    yield server
    stop_admin_server(server)


@pytest.fixture
def production_server(test_db) -> Iterator[AdminServer]:
    server = start_admin_server(
        test_db, "production", ORCHESTRATOR_DB_ENV="production", ORCHESTRATOR_DB_ALLOWED_HOSTS="127.0.0.1"
    )
    yield server
    stop_admin_server(server)


def _attempts(server: AdminServer, username: str, password: str, addresses: list[str]) -> list[int]:
    """One login attempt per address, each claiming it in X-Forwarded-For."""
    client = httpx.Client(base_url=server.admin_url)
    client.get("/")
    headers = {"X-CSRFToken": client.cookies.get("csrftoken")}
    return [
        client.post(
            "/public/login/",
            json={"username": username, "password": password},
            headers={**headers, "X-Forwarded-For": address},
        ).status_code
        for address in addresses
    ]


@pytest.mark.asyncio
async def test_rate_limit_ignores_x_forwarded_for_by_default(fresh_server, owner) -> None:
    """Make sure a client claiming a new X-Forwarded-For address on each attempt is still limited by its own address."""
    account = await create_operator(owner)
    addresses = [f"203.0.113.{n}" for n in range(LOGIN_ATTEMPTS + 1)]

    wrong = _attempts(fresh_server, account.username, "not-the-password", addresses[:-1])
    [right] = _attempts(fresh_server, account.username, account.password, addresses[-1:])

    assert wrong == [401] * LOGIN_ATTEMPTS
    assert right == 429


@pytest.mark.asyncio
async def test_trusted_proxy_forwards_the_client_address(proxied_server, owner) -> None:
    """Make sure that behind a proxy named in ORCHESTRATOR_DB_ADMIN_TRUSTED_PROXIES each forwarded client is limited on its own."""
    account = await create_operator(owner)

    blocked = _attempts(proxied_server, account.username, "not-the-password", ["203.0.113.1"] * (LOGIN_ATTEMPTS + 1))
    [other] = _attempts(proxied_server, account.username, account.password, ["203.0.113.2"])

    assert blocked[-1] == 429
    assert other == 200


def test_production_marks_the_csrf_cookie_secure(production_server) -> None:
    """Make sure that in production the CSRF cookie is Secure, and the pages still carry the CSP."""
    page = httpx.get(f"{production_server.admin_url}/", headers={"Host": "127.0.0.1"})

    [cookie] = [v for k, v in page.headers.multi_items() if k == "set-cookie" and v.startswith("csrftoken=")]
    assert "secure" in [part.strip().lower() for part in cookie.split(";")]
    assert "content-security-policy" in page.headers
