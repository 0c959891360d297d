"""Shared by the admin tests: a real admin server, operators, and an HTTP login.

The server is the real host app, served by orchestrator_db.admin.asgi.serve
(as `make run` serves it: uvicorn, forwarded headers only from trusted
proxies) in a subprocess, connected to the test database as the test
operator role.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
from helpers import ROOT, TestDatabase
from piccolo.apps.user.tables import BaseUser

from orchestrator_db.crypto.keyring import ENVELOPE_PATTERN

#: An encryption envelope, as crypto/keyring.py defines it.
ENVELOPE = re.compile(ENVELOPE_PATTERN)
ARTIFACTS = ROOT / "test-artifacts"


@dataclass
class AdminServer:
    base_url: str  # http://127.0.0.1:<port>
    process: subprocess.Popen
    log_path: Path

    @property
    def admin_url(self) -> str:
        return f"{self.base_url}/admin"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_admin_server(test_db: TestDatabase, name: str, **env: str) -> AdminServer:
    """Serve the admin as the operator role on a free port; waits until it answers.

    The listening socket is bound here and handed to uvicorn, so no other
    process can take the port in between.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    ARTIFACTS.mkdir(exist_ok=True)
    log_path = ARTIFACTS / f"admin-server-{name}.log"
    environment = {
        **os.environ,
        "DATABASE_URL": test_db.operator_url,
        "ORCHESTRATOR_DB_KEYS": test_db.keys,
        **env,
    }
    environment.pop("ORCHESTRATOR_DB_KEYS_FILE", None)
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "orchestrator_db.admin.asgi",
                "--fd", str(listener.fileno()), "--log-level", "warning",
            ],
            cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT,
            pass_fds=(listener.fileno(),),
        )
    listener.close()
    server = AdminServer(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"admin server exited:\n{server.log()}")
        try:
            httpx.get(f"{server.admin_url}/public/meta/", timeout=1)
            return server
        except httpx.HTTPError:
            time.sleep(0.2)
    stop_admin_server(server)
    raise AssertionError(f"admin server did not answer in 30s:\n{server.log()}")


def stop_admin_server(server: AdminServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@dataclass
class OperatorAccount:
    id: int
    username: str
    password: str


async def create_operator(
    owner: asyncpg.Pool, *, admin: bool = True, superuser: bool = False, active: bool = True
) -> OperatorAccount:
    """Insert a piccolo_user row (as `piccolo user create` would) with a random password."""
    username = f"op-{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(12)
    user_id = await owner.fetchval(
        "INSERT INTO piccolo_user (username, password, email, active, admin, superuser) "
        "VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        username,
        BaseUser.hash_password(password),
        f"{username}@ops.test",
        active,
        admin,
        superuser,
    )
    return OperatorAccount(user_id, username, password)


def login(server: AdminServer, account: OperatorAccount, **extra: str) -> httpx.Client:
    """An HTTP client logged in as ``account``, sending the CSRF header like the SPA."""
    client = httpx.Client(base_url=server.admin_url, timeout=10)
    client.get("/")
    token = client.cookies.get("csrftoken")
    assert token, "the admin set no CSRF cookie"
    client.headers["X-CSRFToken"] = token
    response = client.post(
        "/public/login/", json={"username": account.username, "password": account.password, **extra}
    )
    assert response.status_code == 200, response.text
    return client
