"""examples/trading_api through HTTP, with real Better Auth cookies and tokens.

The app is driven through httpx's ASGI transport (the suite's pool is the
app's), and once as the README runs it: uvicorn on loopback, configured only
by the environment, with users signed in by the example's own Better Auth
script.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from better_auth_support import Issued, new_secret
from helpers import ROOT

from examples.trading_api.app import app

pytestmark = pytest.mark.asyncio(loop_scope="session")

EXAMPLE_AUTH = ROOT / "examples" / "trading_api" / "better_auth"


@pytest_asyncio.fixture(loop_scope="session")
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://trading.test") as c:
        yield c


def as_user(issued: Issued) -> dict[str, str]:
    return {"cookie": issued.cookie}


async def test_one_user_never_sees_or_changes_anothers_credentials(
    better_auth, config, client
) -> None:
    """Make sure Bob, signed in with his own real cookie, can neither list, replace nor
    delete Alice's credentials, and that neither response ever carries a secret."""
    alice = await better_auth.sign_up(config)
    bob = await better_auth.sign_up(config)

    put = await client.put(
        "/credentials/alpaca",
        json={"api_key": "AK-ALICE-0001", "secret_key": "SK-ALICE-0001"},
        headers=as_user(alice),
    )
    assert put.status_code == 200, put.text
    assert put.json() == {"credential_type": "alpaca", "is_active": True, "expires_at": None}

    listed = await client.get("/credentials", headers=as_user(bob))
    assert listed.status_code == 200 and listed.json() == []
    deleted = await client.delete("/credentials/alpaca", headers=as_user(bob))
    assert deleted.status_code == 404
    mine = await client.put(
        "/credentials/alpaca",
        json={"api_key": "AK-BOB-0001", "secret_key": "SK-BOB-0001"},
        headers={"authorization": f"Bearer {bob.bearer}"},
    )
    assert mine.status_code == 200, mine.text

    for user, key in ((alice, "ALICE"), (bob, "BOB")):
        listed = await client.get("/credentials", headers=as_user(user))
        assert listed.json() == [
            {"credential_type": "alpaca", "is_active": True, "expires_at": None}
        ]
        assert "AK-" not in listed.text and "SK-" not in listed.text
    from orchestrator_db import user_scope

    async with user_scope(alice.user_id) as scope:
        credential = await scope.get_credential("alpaca")
        assert credential.api_key.get_secret_value() == "AK-ALICE-0001"
    async with user_scope(bob.user_id) as scope:
        credential = await scope.get_credential("alpaca")
        assert credential.api_key.get_secret_value() == "AK-BOB-0001"

    gone = await client.delete("/credentials/alpaca", headers=as_user(alice))
    assert gone.status_code == 204
    assert (await client.get("/credentials", headers=as_user(alice))).json() == []
    assert len((await client.get("/credentials", headers=as_user(bob))).json()) == 1


async def test_requests_without_a_valid_session_get_401_naming_the_reason(
    better_auth, config, client
) -> None:
    """Make sure a missing, tampered or signed-out session gets 401 with the reason,
    never the token, and writes nothing."""
    issued = await better_auth.sign_up(config)
    assert issued.bearer is not None
    token, _, signature = issued.bearer.rpartition(".")
    tampered = issued.cookie.replace(token, token[:-1] + ("x" if token[-1] != "x" else "y"))
    cases = {
        "missing": {},
        "bad_signature": {"cookie": tampered},
        "malformed": {"authorization": "Bearer "},
    }
    for reason, headers in cases.items():
        response = await client.put(
            "/credentials/alpaca",
            json={"api_key": "AK-NOPE-0001", "secret_key": "SK-NOPE-0001"},
            headers=headers,
        )
        assert response.status_code == 401
        assert response.json() == {"detail": {"error": "not_authenticated", "reason": reason}}
        assert response.headers["www-authenticate"] == "Bearer"
        assert token not in response.text and signature not in response.text
    await better_auth.sign_out(config, issued.cookie)
    response = await client.get("/credentials", headers=as_user(issued))
    assert response.status_code == 401
    assert response.json()["detail"]["reason"] == "unknown_session"


async def test_invalid_input_never_echoes_a_key(better_auth, config, client) -> None:
    """Make sure a 422 names the fields, never the submitted values."""
    issued = await better_auth.sign_up(config)
    response = await client.put(
        "/credentials/NOT VALID",
        json={"api_key": "AK-ECHO-0001", "secret_key": "SK-ECHO-0001"},
        headers=as_user(issued),
    )
    assert response.status_code == 422
    response2 = await client.put(
        "/credentials/alpaca", json={"api_key": ["AK-ECHO-0002"]}, headers=as_user(issued)
    )
    assert response2.status_code == 422
    for text in (response.text, response2.text):
        assert "AK-ECHO" not in text and "SK-ECHO" not in text


# As the README runs it #######################################################


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _example_auth(owner_url: str, secret: str, *args: str) -> dict[str, str]:
    """The example's own Better Auth script; its printed headers, by name."""
    result = subprocess.run(
        ["node", "auth.mjs", *args],
        cwd=EXAMPLE_AUTH,
        env={**os.environ, "BETTER_AUTH_DATABASE_URL": owner_url, "BETTER_AUTH_SECRET": secret},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)
    return lines


async def test_the_example_runs_as_the_readme_says(test_db) -> None:
    """Make sure the example, started with uvicorn from the environment alone (the app
    role's DATABASE_URL, the key ring, BETTER_AUTH_SECRET), serves users signed in by
    its own Better Auth script, each to their own credentials."""
    assert (EXAMPLE_AUTH / "node_modules" / "better-auth").exists(), (
        "run `make test` (npm ci --prefix examples/trading_api/better_auth)"
    )
    secret = new_secret()
    migrated = await asyncio.to_thread(_example_auth, test_db.owner_url, secret, "migrate")
    assert "created" in migrated
    password = "correct horse 1"
    users = []
    for name in ("ann", "ben"):
        email = f"{name}-{new_secret()[:8].lower()}@example.test"
        users.append(await asyncio.to_thread(
            _example_auth, test_db.owner_url, secret, "sign-up", email, password
        ))
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": test_db.app_url,
        "ORCHESTRATOR_DB_KEYS": test_db.keys,
        "BETTER_AUTH_SECRET": secret,
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "examples.trading_api.app:app",
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            deadline = time.monotonic() + 30
            while True:
                try:
                    await http.get("/credentials")
                    break
                except httpx.TransportError:
                    assert server.poll() is None, "uvicorn exited"
                    assert time.monotonic() < deadline, "uvicorn did not start"
                    await asyncio.sleep(0.2)
            ann, ben = ({"cookie": user["Cookie"]} for user in users)
            put = await http.put(
                "/credentials/polygon",
                json={"api_key": "AK-ANN-0001", "secret_key": "SK-ANN-0001"},
                headers=ann,
            )
            assert put.status_code == 200, put.text
            assert (await http.get("/credentials", headers=ben)).json() == []
            bearer = {"authorization": users[0]["Authorization"]}
            listed = await http.get("/credentials", headers=bearer)
            assert [c["credential_type"] for c in listed.json()] == ["polygon"]
            assert (await http.get("/credentials")).status_code == 401
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=15)
    for user in users:
        assert user["Cookie"].split("=", 1)[1] not in output
    assert secret not in output
