"""Behind PgBouncer in transaction mode: scopes stay correct and no setting leaks.

A real pgbouncer (Debian's, 1.18) runs on 127.0.0.1 in front of the test
database, with few server connections so that many clients share them.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import asyncpg
import pytest
from helpers import ROOT

from orchestrator_db import user_scope
from orchestrator_db.settings import CURRENT_USER_SETTING

PGBOUNCER = "/usr/sbin/pgbouncer"
SETTING = CURRENT_USER_SETTING
POOL_SIZE = 3  # server connections for the main alias: far fewer than clients


@dataclass
class Bouncer:
    port: int
    user: str
    password: str
    log: Path

    def url(self, database: str) -> str:
        return f"postgresql://{quote(self.user)}:{quote(self.password)}@127.0.0.1:{self.port}/{database}"

    async def connect(self, database: str) -> asyncpg.Connection:
        # PgBouncer 1.18 cannot keep named prepared statements across transactions.
        return await asyncpg.connect(self.url(database), statement_cache_size=0)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def pgbouncer(test_db) -> Iterator[Bouncer]:
    """pgbouncer in transaction mode: alias ``odb`` (pool of 3) and ``odb_single`` (pool of 1)."""
    assert Path(PGBOUNCER).exists(), f"{PGBOUNCER} is missing: run `make system-packages`"
    server = urlsplit(test_db.app_url)
    user, password = unquote(server.username or ""), unquote(server.password or "")
    as_root = os.geteuid() == 0
    workdir = Path(tempfile.mkdtemp(prefix="odb_pgbouncer_", dir="/var/tmp"))
    port = _free_port()
    target = f"host={server.hostname} port={server.port} dbname={test_db.name}"
    (workdir / "userlist.txt").write_text(f'"{user}" "{password}"\n')
    (workdir / "pgbouncer.ini").write_text(f"""[databases]
odb = {target}
odb_single = {target} pool_size=1

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {workdir}/userlist.txt
pool_mode = transaction
default_pool_size = {POOL_SIZE}
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 500
ignore_startup_parameters = extra_float_digits
logfile = {workdir}/pgbouncer.log
pidfile = {workdir}/pgbouncer.pid
""")
    command = [PGBOUNCER, str(workdir / "pgbouncer.ini")]
    if as_root:  # pgbouncer refuses to run as root; -u drops to postgres itself
        for path in [workdir, *workdir.iterdir()]:
            shutil.chown(path, "postgres", "postgres")
        command[1:1] = ["-u", "postgres"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    log = workdir / "pgbouncer.log"
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                output = process.stdout.read().decode(errors="replace") if process.stdout else ""
                logged = log.read_text() if log.exists() else ""
                pytest.fail(f"pgbouncer exited with {process.returncode}:\n{output}\n{logged}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"pgbouncer did not listen on port {port}:\n{log.read_text() if log.exists() else ''}"
                    )
                time.sleep(0.05)
        yield Bouncer(port, user, password, log)
    finally:
        process.terminate()  # the pgbouncer process itself: it does not fork without -d
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        if process.stdout:
            process.stdout.close()
        shutil.rmtree(workdir, ignore_errors=True)


async def _probe(conn: asyncpg.Connection) -> tuple[int, str | None, int]:
    """(server pid, the setting, how many credentials are visible) in one statement."""
    row = await conn.fetchrow(
        f"SELECT pg_backend_pid() AS pid, current_setting('{SETTING}', true) AS setting,"
        " (SELECT count(*) FROM user_credentials) AS visible"
    )
    return row["pid"], row["setting"], row["visible"]


async def _user_with_credential(new_user) -> str:
    user_id = await new_user()
    async with user_scope(user_id) as scope:  # directly to PostgreSQL
        await scope.create_account("Paper Account")
        await scope.put_credential("alpaca", f"api-{user_id}", f"secret-{user_id}")
    return user_id


# --- the package's scopes through pgbouncer ------------------------------------------

_SCOPES_SCRIPT = r"""
import asyncio, json, sys
from orchestrator_db import connected, user_scope
from orchestrator_db.engine import get_engine
from orchestrator_db.tables import UserAccounts, UserCredentials

async def one_user(user_id, index):
    async with user_scope(user_id) as scope:
        await scope.create_account("Bounced Account")
        await asyncio.sleep(0.001 * (index % 5))
        (row,) = await UserCredentials.raw("SELECT pg_backend_pid() AS pid")
        await scope.put_credential("alpaca", f"api-{user_id}", f"secret-{user_id}")
        await asyncio.sleep(0)
        listed = await scope.list_credentials()
        rows = await UserCredentials.select(UserCredentials.user_id).run()
        accounts = await UserAccounts.select(UserAccounts.user_id).run()
    async with user_scope(user_id) as scope:  # read-only: one statement, no BEGIN
        again = await scope.get_credential("alpaca")
    seen = {c.user_id for c in listed} | {r["user_id"] for r in rows + accounts} | {again.user_id}
    return {
        "user": user_id,
        "pid": row["pid"],
        "seen": sorted(seen),
        "api_keys": [c.api_key.get_secret_value() for c in listed + [again]],
    }

async def main(user_ids):
    async with connected():
        pool = get_engine().pool
        results = await asyncio.gather(*(one_user(u, i) for i, u in enumerate(user_ids)))
        return {"results": results, "client_connections": pool.get_size()}

print(json.dumps(asyncio.run(main(json.loads(sys.argv[1])))))
"""


@pytest.mark.asyncio
async def test_many_concurrent_scopes_through_pgbouncer(
    pgbouncer: Bouncer, owner, new_user
) -> None:
    """Make sure 40 concurrent scopes for 40 users, sharing 3 server connections
    through pgbouncer, each see only their own rows and leave no setting behind."""
    users = [await new_user() for _ in range(40)]
    env = {
        **os.environ,
        "DATABASE_URL": pgbouncer.url("odb"),
        "ORCHESTRATOR_DB_STATEMENT_CACHE_SIZE": "0",
        "ORCHESTRATOR_DB_POOL_MAX_SIZE": "20",
    }
    completed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", _SCOPES_SCRIPT, json.dumps(users)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert completed.returncode == 0, completed.stderr + pgbouncer.log.read_text()
    outcome = json.loads(completed.stdout.strip().splitlines()[-1])
    results = outcome["results"]

    assert len(results) == len(users)
    for result in results:
        user_id = result["user"]
        assert result["seen"] == [user_id], result
        assert result["api_keys"] == [f"api-{user_id}", f"api-{user_id}"]
    scope_pids = {result["pid"] for result in results}
    # More clients than server connections: the server connections were shared.
    assert outcome["client_connections"] > POOL_SIZE >= len(scope_pids)

    stored = await owner.fetch(
        "SELECT user_id, count(*) AS n FROM user_credentials WHERE user_id = ANY($1::text[]) GROUP BY user_id",
        users,
    )
    assert {row["user_id"]: row["n"] for row in stored} == {user_id: 1 for user_id in users}

    # Hold POOL_SIZE transactions at once, so each server connection is probed.
    clients = [await pgbouncer.connect("odb") for _ in range(POOL_SIZE)]
    barrier = asyncio.Barrier(POOL_SIZE)

    async def probe_in_transaction(conn: asyncpg.Connection) -> tuple[int, str | None, int]:
        async with conn.transaction():
            state = await _probe(conn)
            await barrier.wait()
            return state

    try:
        states = await asyncio.wait_for(
            asyncio.gather(*(probe_in_transaction(conn) for conn in clients)), timeout=30
        )
    finally:
        for conn in clients:
            await conn.close()
    probed_pids = {pid for pid, _, _ in states}
    assert len(probed_pids) == POOL_SIZE
    assert scope_pids <= probed_pids
    assert [(setting in (None, ""), visible) for _, setting, visible in states] == [
        (True, 0)
    ] * POOL_SIZE


# --- raw connections through pgbouncer --------------------------------------------


@pytest.mark.asyncio
async def test_transaction_local_setting_does_not_reach_the_next_client(
    pgbouncer: Bouncer, new_user
) -> None:
    """Make sure a setting made with set_config(..., true) is gone for the next
    transaction on the same server connection, from this client or another."""
    alice = await _user_with_credential(new_user)
    first, second = await pgbouncer.connect("odb_single"), await pgbouncer.connect("odb_single")
    try:
        async with first.transaction():
            await first.execute(f"SELECT set_config('{SETTING}', $1, true)", alice)
            pid, setting, visible = await _probe(first)
        assert (setting, visible) == (alice, 1)
        other_pid, other_setting, other_visible = await _probe(second)
        same_pid, same_setting, same_visible = await _probe(first)
    finally:
        await first.close()
        await second.close()
    assert other_pid == same_pid == pid  # one server connection, shared
    assert other_setting in (None, "") and other_visible == 0
    assert same_setting in (None, "") and same_visible == 0


@pytest.mark.asyncio
async def test_session_level_setting_would_leak_through_pgbouncer(
    pgbouncer: Bouncer, new_user
) -> None:
    """Make sure we know why settings must be transaction-local: in transaction
    mode pgbouncer hands a session-level setting to the next client."""
    alice = await _user_with_credential(new_user)
    first, second = await pgbouncer.connect("odb_single"), await pgbouncer.connect("odb_single")
    try:
        await first.execute(f"SELECT set_config('{SETTING}', $1, false)", alice)
        try:
            _, leaked, visible = await _probe(second)
        finally:
            await second.execute(f"SELECT set_config('{SETTING}', '', false)")
        _, cleared, after = await _probe(second)
    finally:
        await first.close()
        await second.close()
    assert (leaked, visible) == (alice, 1)
    assert (cleared, after) == ("", 0)
