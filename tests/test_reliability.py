"""The store under stress, through the public API, as the application role.

Contention, connections killed under load, a server restarted under load,
and pool exhaustion. Fuzzing lives in test_fuzz.py. Everything here is
bounded by timeouts, so a deadlock or hang fails the test instead of the run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import asyncpg
import pytest
from helpers import SOAK_FACTOR, run_piccolo
from reliability_worker import (
    AMBIGUOUS,
    COMMITTED,
    NOT_COMMITTED,
    Read,
    Write,
    read_once,
    write_once,
)

from orchestrator_db import CredentialNotFound, user_scope
from orchestrator_db.crypto.envelopes import row_cells, unseal
from orchestrator_db.crypto.providers import get_key_ring
from orchestrator_db.devdb import (
    EmbeddedPostgres,
    create_database,
    with_credentials,
    with_database,
)
from orchestrator_db.engine import get_engine

pytestmark = pytest.mark.asyncio

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).with_name("reliability_worker.py")


# Helpers #####################################################################


async def _users_with_accounts(new_user, count: int) -> list[str]:
    user_ids = [await new_user() for _ in range(count)]
    for user_id in user_ids:
        async with user_scope(user_id) as scope:
            await scope.create_account("Reliability Account")
    return user_ids


async def _warm_pool() -> None:
    """Open every pooled connection at once, as a busy application would have them."""
    pool = get_engine().pool
    gate = asyncio.Event()
    entered = 0

    async def occupy() -> None:
        nonlocal entered
        async with pool.acquire():
            entered += 1
            await gate.wait()

    tasks = [asyncio.create_task(occupy()) for _ in range(pool.get_max_size())]
    while entered < len(tasks):
        await asyncio.sleep(0.005)
    gate.set()
    await asyncio.gather(*tasks)


def _decrypt_row(row: asyncpg.Record) -> tuple[str, str]:
    """Both secrets of a stored row, opened with the AAD that binds them to it."""
    ring = get_key_ring()
    cell = row_cells(row)
    return (
        unseal(ring, row["api_key"], cell["api_key"]),
        unseal(ring, row["secret_key"], cell["secret_key"]),
    )


def _check_writes_against_rows(writes: Iterable[Write], rows: Iterable[asyncpg.Record]) -> dict:
    """The guarantees of a store under faults, checked against what is stored:
    committed writes are there exactly, writes that raised before COMMIT left
    nothing, ambiguous ones are either absent or exact, every row is whole,
    and no row exists that no write made."""
    writes = list(writes)
    stored = {(row["user_id"], row["credential_type"]): _decrypt_row(row) for row in rows}
    expected = {(w.user_id, w.credential_type): w for w in writes}
    assert len(expected) == len(writes), "each write must use its own credential type"
    strays = set(stored) - set(expected)
    assert not strays, f"rows no write made: {sorted(strays)[:5]}"
    tally = {COMMITTED: 0, NOT_COMMITTED: 0, AMBIGUOUS: 0, "ambiguous_present": 0}
    for key, write in expected.items():
        tally[write.outcome] += 1
        if write.outcome == COMMITTED:
            assert stored.get(key) == (write.api_key, write.secret_key), (key, write)
        elif write.outcome == NOT_COMMITTED:
            assert key not in stored, f"a write that failed before COMMIT left a row: {write}"
        else:
            assert key not in stored or stored[key] == (write.api_key, write.secret_key), write
            tally["ambiguous_present"] += key in stored
    return tally


def _check_reads(reads: Iterable[Read], writes: Iterable[Write]) -> int:
    """Reads that succeeded returned exactly what was written; return how many succeeded."""
    values = {(w.user_id, w.credential_type): (w.api_key, w.secret_key) for w in writes}
    succeeded = 0
    for read in reads:
        if read.ok:
            succeeded += 1
            assert (read.api_key, read.secret_key) == values[(read.user_id, read.credential_type)]
        else:
            assert read.connection_error, f"a read failed for another reason than the fault: {read}"
    return succeeded


# Contention ##################################################################


async def test_concurrent_puts_on_one_slot_leave_one_whole_row(user_with_account, owner):
    """Make sure 200 concurrent put_credential calls on one (user, type) all succeed and leave one row holding one writer's pair."""
    user_id = user_with_account
    await _warm_pool()  # connections already open: writers really overlap
    start = asyncio.Event()

    async def put(number: int):
        await start.wait()
        async with user_scope(user_id) as scope:
            return await scope.put_credential("alpaca", f"api-{number}", f"secret-{number}")

    tasks = [asyncio.create_task(put(number)) for number in range(200)]
    start.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=60)

    errors = [result for result in results if isinstance(result, BaseException)]
    assert not errors, f"{len(errors)} writers failed, e.g. {errors[0]!r}"
    assert {result.api_key.get_secret_value() for result in results} == {
        f"api-{number}" for number in range(200)
    }
    rows = await owner.fetch(
        "SELECT * FROM user_credentials WHERE user_id = $1 AND credential_type = 'alpaca'", user_id
    )
    assert len(rows) == 1
    assert {result.id for result in results} == {rows[0]["id"]}  # replaced in place
    async with user_scope(user_id) as scope:
        stored = await scope.get_credential("alpaca")
    api_key, secret_key = stored.api_key.get_secret_value(), stored.secret_key.get_secret_value()
    number = api_key.removeprefix("api-")
    assert number.isdigit() and int(number) < 200
    assert secret_key == f"secret-{number}"  # both halves from the same writer
    assert _decrypt_row(rows[0]) == (api_key, secret_key)


async def test_concurrent_puts_and_deletes_stay_consistent(user_with_account, owner):
    """Make sure put_credential racing delete_credential on one slot raises nothing but CredentialNotFound and leaves at most one whole row."""
    user_id = user_with_account
    await _warm_pool()
    start = asyncio.Event()

    async def put(number: int) -> str:
        await start.wait()
        async with user_scope(user_id) as scope:
            await scope.put_credential("alpaca", f"api-{number}", f"secret-{number}")
        return "put"

    async def delete() -> str:
        await start.wait()
        try:
            async with user_scope(user_id) as scope:
                await scope.delete_credential("alpaca")
        except CredentialNotFound as error:
            return f"delete: {error.reason}"
        return "deleted"

    tasks = [
        asyncio.create_task(put(number) if number % 2 else delete()) for number in range(200)
    ]
    start.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=60)

    errors = [result for result in results if isinstance(result, BaseException)]
    assert not errors, f"{len(errors)} calls failed, e.g. {errors[0]!r}"
    assert results.count("put") == 100
    assert set(results) <= {"put", "deleted", "delete: missing"}
    rows = await owner.fetch(
        "SELECT * FROM user_credentials WHERE user_id = $1 AND credential_type = 'alpaca'", user_id
    )
    assert len(rows) <= 1
    if rows:
        api_key, secret_key = _decrypt_row(rows[0])
        assert secret_key == api_key.replace("api-", "secret-")


# Connection faults ###########################################################


async def test_terminated_connections_lose_no_committed_write(test_db, owner, new_user, caplog):
    """Make sure killing the app role's backends under load loses no committed write, keeps no failed one, logs no error, and the store recovers."""
    user_ids = await _users_with_accounts(new_user, 20)
    writes: list[Write] = []
    reads: list[Read] = []
    stop = asyncio.Event()
    kills = 0

    async def load(task: int, user_id: str) -> None:
        last_committed: Write | None = None
        number = 0
        while not stop.is_set():
            number += 1
            write = await write_once(user_id, f"f{task}-{number}", f"api-{task}-{number}", f"sec-{task}-{number}")
            writes.append(write)
            if write.outcome == COMMITTED:
                last_committed = write
            if last_committed is not None:
                reads.append(await read_once(user_id, last_committed.credential_type))
            await asyncio.sleep(0)  # never starve the others, whatever fails

    async def kill() -> None:
        nonlocal kills
        while not stop.is_set():
            await asyncio.sleep(random.uniform(0.02, 0.08))
            # In the select list, so it runs only on rows the WHERE kept: in
            # the WHERE the planner may call it before filtering on usename.
            killed = await owner.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE usename = $1 AND datname = $2 AND pid <> pg_backend_pid()",
                test_db.app_role,
                test_db.name,
            )
            kills += sum(row[0] for row in killed)

    async def until_enough_faults() -> None:
        deadline = time.monotonic() + 8 * SOAK_FACTOR
        while time.monotonic() < deadline:
            failed = sum(w.outcome != COMMITTED for w in writes)
            if failed >= 10 * SOAK_FACTOR and len(writes) - failed >= 100 * SOAK_FACTOR:
                break
            await asyncio.sleep(0.05)
        stop.set()

    async def run_all() -> None:
        async with asyncio.TaskGroup() as group:  # one failure cancels the rest
            group.create_task(until_enough_faults())
            group.create_task(kill())
            for task, user_id in enumerate(user_ids):
                group.create_task(load(task, user_id))

    await asyncio.wait_for(run_all(), timeout=60 * SOAK_FACTOR)

    failures = [w for w in writes if w.outcome != COMMITTED]
    assert kills > 0 and len(failures) >= 10, (kills, len(failures))
    assert all(w.connection_error for w in failures), [w.error for w in failures if not w.connection_error]
    assert _check_reads(reads, writes) > 0
    # Dead connections are discarded quietly: no "Resetting connection with
    # an active transaction" or unretrieved-exception errors from the pool.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []

    # Recovery: the killer has stopped; new scopes on new connections succeed.
    await asyncio.sleep(0.2)
    after = await asyncio.wait_for(
        asyncio.gather(*(write_once(u, "after", f"api-after-{u}", f"sec-after-{u}") for u in user_ids)),
        timeout=30,
    )
    assert [w.outcome for w in after] == [COMMITTED] * len(user_ids), [w.error for w in after]
    writes += after
    committed = [w for w in writes if w.outcome == COMMITTED]
    reread = await asyncio.wait_for(
        asyncio.gather(*(read_once(w.user_id, w.credential_type) for w in committed)), timeout=30
    )
    assert all(read.ok for read in reread), [read.error for read in reread if not read.ok][:3]
    assert _check_reads(reread, writes) == len(committed)

    rows = await owner.fetch("SELECT * FROM user_credentials WHERE user_id = ANY($1)", user_ids)
    tally = _check_writes_against_rows(writes, rows)
    assert tally[NOT_COMMITTED] >= 1, tally


# Server restart ##############################################################


def _app_url(server_url: str, database: str, role: str, password: str) -> str:
    return with_credentials(with_database(server_url, database), role, password)


class _Lines:
    """A subprocess's JSON output lines, collected on a thread as they arrive."""

    def __init__(self, stream) -> None:
        self.records: list[dict] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.records.append(json.loads(line))

    def of(self, kind: str) -> list[dict]:
        return [record for record in list(self.records) if record["kind"] == kind]

    async def wait_for(self, condition, what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.05)


@pytest.fixture
def private_cluster():
    """A PostgreSQL cluster of our own, so restarting it cannot disturb the suite's server."""
    root = Path(tempfile.mkdtemp(prefix="odb_reliability-", dir="/var/tmp"))
    root.chmod(0o755)  # the server runs as "postgres" when we are root
    cluster = EmbeddedPostgres(root / "pg")
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


async def test_server_restart_under_load(private_cluster, test_db):
    """Make sure a server restart under load loses no committed write, keeps no failed one, and operations succeed once it is back."""
    server_url = await asyncio.to_thread(private_cluster.ensure_running)
    database_url = await create_database(server_url, "odb_restart")
    await asyncio.to_thread(run_piccolo, database_url, "migrations", "forwards", "all")
    password = uuid.uuid4().hex
    await asyncio.to_thread(
        run_piccolo, database_url, "orchestrator_db", "create_roles",
        "--app_role=odb_restart_app", "--operator_role=odb_restart_operator",
        f"--app_password={password}", f"--operator_password={uuid.uuid4().hex}",
    )
    user_ids = [f"restart-{number}-{uuid.uuid4()}" for number in range(8)]
    superuser = await asyncpg.connect(database_url)
    try:
        await superuser.executemany(
            'INSERT INTO "user" (id, name, email, "emailVerified") VALUES ($1, $1, $1, true)',
            [(user_id,) for user_id in user_ids],
        )
    finally:
        await superuser.close()

    env = {
        **os.environ,
        "DATABASE_URL": _app_url(server_url, "odb_restart", "odb_restart_app", password),
        "ORCHESTRATOR_DB_KEYS": test_db.keys,
    }
    stderr = tempfile.TemporaryFile(mode="w+")  # a file, so a chatty worker never blocks on a full pipe
    worker = subprocess.Popen(
        [sys.executable, str(WORKER), "restart-load", *user_ids],
        cwd=ROOT, env=env, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
    )

    def worker_log() -> str:
        stderr.seek(0)
        return stderr.read()[-5000:]

    try:
        lines = _Lines(worker.stdout)

        def committed() -> list[dict]:
            return [w for w in lines.of("write") if w["outcome"] == COMMITTED]

        await lines.wait_for(lambda: len(committed()) >= 20 or worker.poll() is not None, "writes before the restart")
        assert worker.poll() is None, worker_log()
        restart_began = time.monotonic()
        await asyncio.to_thread(private_cluster.restart)
        restart_ended = time.monotonic()
        await lines.wait_for(
            # time.monotonic() is CLOCK_MONOTONIC: one clock for every process here.
            lambda: sum(w["started"] > restart_ended for w in committed()) >= 20,
            "writes after the restart",
        )
        worker.stdin.close()
        await asyncio.to_thread(worker.wait, 30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode == 0, worker_log()
    assert lines.of("done"), worker_log()
    stderr.close()

    writes = [Write(**{k: v for k, v in w.items() if k != "kind"}) for w in lines.of("write")]
    reads = [Read(**{k: v for k, v in r.items() if k != "kind"}) for r in lines.of("read")]
    failures = [w for w in writes if w.outcome != COMMITTED]
    assert failures, "the restart interrupted nothing; the test proved nothing"
    assert all(restart_began - 1 < w.finished for w in failures), "failures before the restart"
    assert all(w.connection_error for w in failures), [w.error for w in failures if not w.connection_error]
    assert all(w.outcome == COMMITTED for w in writes if w.started > restart_ended), [
        w.error for w in writes if w.started > restart_ended and w.outcome != COMMITTED
    ]
    assert all(r.ok for r in reads if r.started > restart_ended)
    assert _check_reads(reads, writes) > 0

    superuser = await asyncpg.connect(database_url)
    try:
        rows = await superuser.fetch("SELECT * FROM user_credentials")
    finally:
        await superuser.close()
    _check_writes_against_rows(writes, rows)


# Pool exhaustion #############################################################


async def test_pool_exhaustion_times_out_clearly_without_cross_talk(test_db, new_user, owner):
    """Make sure a scope beyond a full pool fails after the configured wait with a clear PoolTimeout, waits when a connection frees, and never sees another user's rows."""
    holder_a, holder_b, waiter = await _users_with_accounts(new_user, 3)
    async with user_scope(waiter) as scope:
        await scope.put_credential("mine", "api-mine", "sec-mine")
    env = {
        **os.environ,
        "DATABASE_URL": test_db.app_url,
        "ORCHESTRATOR_DB_KEYS": test_db.keys,
        "ORCHESTRATOR_DB_POOL_MAX_SIZE": "2",
        "ORCHESTRATOR_DB_POOL_TIMEOUT": "1",
    }
    finished = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(WORKER), "pool-exhaustion", holder_a, holder_b, waiter],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert finished.returncode == 0, finished.stderr
    result = json.loads(finished.stdout.splitlines()[-1])

    assert result["timed_out"] is not None, "a third scope got in although both connections were held"
    assert result["timed_out"]["type"] == "PoolTimeout"
    message = result["timed_out"]["message"]
    for part in ("within 1s", "max_size 2", "ORCHESTRATOR_DB_POOL_MAX_SIZE", "ORCHESTRATOR_DB_POOL_TIMEOUT"):
        assert part in message, message
    assert 0.95 <= result["timeout_after"] < 4, result["timeout_after"]

    assert result["waiter_done_before_release"] is False
    assert 0.15 <= result["waiter"]["waited"] < 1, result["waiter"]["waited"]  # waited, then got in
    assert result["waiter"]["before"] == ["mine"]
    assert result["waiter"]["after"] == ["mine", "waiter"]
    assert result["waiter"]["foreign"] == "missing"
    assert result["holders"] == {
        holder_a: [f"held-{holder_a[-8:]}"],
        holder_b: [f"held-{holder_b[-8:]}"],
    }
    stored = await owner.fetch(
        "SELECT user_id, credential_type FROM user_credentials WHERE user_id = ANY($1)",
        [holder_a, holder_b, waiter],
    )
    assert sorted((r["user_id"], r["credential_type"]) for r in stored) == sorted(
        [(holder_a, f"held-{holder_a[-8:]}"), (holder_b, f"held-{holder_b[-8:]}"),
         (waiter, "mine"), (waiter, "waiter")]
    )
