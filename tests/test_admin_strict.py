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
