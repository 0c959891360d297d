"""Scoped writes and reads whose outcomes are recorded, for the reliability tests.

tests/test_reliability.py imports :func:`write_once` and :func:`read_once` for
load in its own process, and runs this file as a script where a test needs
a process of its own: load across a server restart, or pool settings, which
are read once per process::

    python tests/reliability_worker.py restart-load USER_ID...
    python tests/reliability_worker.py pool-exhaustion HOLDER_A HOLDER_B WAITER

Settings come from the environment (DATABASE_URL, ORCHESTRATOR_DB_KEYS,
ORCHESTRATOR_DB_POOL_*), as in an application. Output is JSON lines.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from dataclasses import asdict, dataclass

from orchestrator_db import ConnectionLost, CredentialNotFound, PoolTimeout, connected, user_scope


def is_connection_error(error: BaseException) -> bool:
    """A lost or refused connection must surface as the package's typed error.

    Anything else during connection faults is a bug.
    """
    return isinstance(error, ConnectionLost)

#: The scope exited normally, so the transaction committed.
COMMITTED = "committed"
#: put_credential raised, so COMMIT was never sent: the server rolled back.
NOT_COMMITTED = "not_committed"
#: put_credential returned but leaving the scope raised: the COMMIT may have
#: been carried out by the server with its reply lost on the way back, so the
#: row may or may not exist. If it exists it must still be whole and exact.
AMBIGUOUS = "ambiguous"


@dataclass
class Write:
    user_id: str
    credential_type: str
    api_key: str
    secret_key: str
    outcome: str
    error: str | None = None
    connection_error: bool = False
    started: float = 0.0
    finished: float = 0.0


@dataclass
class Read:
    user_id: str
    credential_type: str
    ok: bool
    api_key: str | None = None
    secret_key: str | None = None
    error: str | None = None
    connection_error: bool = False
    started: float = 0.0
    finished: float = 0.0


def _name(error: BaseException) -> str:
    return f"{type(error).__module__}.{type(error).__qualname__}: {error}"


async def write_once(user_id: str, credential_type: str, api_key: str, secret_key: str) -> Write:
    """One scope holding exactly one put_credential, so its outcome is unambiguous
    except when the COMMIT itself fails."""
    write = Write(user_id, credential_type, api_key, secret_key, COMMITTED, started=time.monotonic())
    put_returned = False
    try:
        async with user_scope(user_id) as scope:
            await scope.put_credential(credential_type, api_key, secret_key)
            put_returned = True
    except Exception as error:  # noqa: BLE001 - recorded and judged by the test
        write.outcome = AMBIGUOUS if put_returned else NOT_COMMITTED
        write.error = _name(error)
        write.connection_error = is_connection_error(error)
    write.finished = time.monotonic()
    return write


async def read_once(user_id: str, credential_type: str) -> Read:
    read = Read(user_id, credential_type, ok=True, started=time.monotonic())
    try:
        async with user_scope(user_id) as scope:
            credential = await scope.get_credential(credential_type)
        read.api_key = credential.api_key.get_secret_value()
        read.secret_key = credential.secret_key.get_secret_value()
    except Exception as error:  # noqa: BLE001 - recorded and judged by the test
        read.ok = False
        read.error = _name(error)
        read.connection_error = is_connection_error(error)
    read.finished = time.monotonic()
    return read


def _emit(kind: str, record: object) -> None:
    line = {"kind": kind, **(asdict(record) if record is not None else {})}
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


# restart-load ################################################################


async def _restart_load(user_ids: list[str]) -> None:
    """Each user's task writes a new credential type, then reads back its last
    committed one, until stdin closes."""
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    async with connected():
        for user_id in user_ids:
            async with user_scope(user_id) as scope:
                await scope.create_account("Restart Account")
        _emit("ready", None)

        async def load(task: int, user_id: str) -> None:
            last_committed: Write | None = None
            number = 0
            while not stop.is_set():
                number += 1
                write = await write_once(
                    user_id, f"r{task}-{number}", f"api-{task}-{number}-é", f"sec-{task}-{number}-\x00"
                )
                _emit("write", write)
                if write.outcome == COMMITTED:
                    last_committed = write
                if last_committed is not None:
                    _emit("read", await read_once(user_id, last_committed.credential_type))
                if write.outcome != COMMITTED:
                    await asyncio.sleep(0.02)  # the server may be down; do not spin

        await asyncio.gather(*(load(task, user_id) for task, user_id in enumerate(user_ids)))
    _emit("done", None)


# pool-exhaustion #############################################################


async def _pool_exhaustion(holder_a: str, holder_b: str, waiter: str) -> dict:
    """Two scopes hold both pooled connections (ORCHESTRATOR_DB_POOL_MAX_SIZE=2);
    a third times out (after ORCHESTRATOR_DB_POOL_TIMEOUT), then a fourth
    waits until one is released 0.2 s later."""
    result: dict = {}
    async with connected():
        release = asyncio.Event()
        inside: list[str] = []

        async def hold(user_id: str) -> list[str]:
            async with user_scope(user_id) as scope:
                await scope.put_credential(f"held-{user_id[-8:]}", f"api-{user_id}", f"sec-{user_id}")
                inside.append(user_id)
                await release.wait()
                return [c.credential_type for c in await scope.list_credentials()]

        holders = [asyncio.create_task(hold(holder_a)), asyncio.create_task(hold(holder_b))]
        while len(inside) < 2:
            await asyncio.sleep(0.01)

        started = time.monotonic()
        try:
            async with user_scope(waiter) as scope:
                await scope.get_account()
            result["timed_out"] = None
        except PoolTimeout as error:
            result["timed_out"] = {"type": type(error).__name__, "message": str(error)}
        result["timeout_after"] = time.monotonic() - started

        async def wait_then_work() -> dict:
            begun = time.monotonic()
            async with user_scope(waiter) as scope:
                waited = time.monotonic() - begun
                before = [c.credential_type for c in await scope.list_credentials()]
                await scope.put_credential("waiter", "api-waiter", "sec-waiter")
                after = [c.credential_type for c in await scope.list_credentials()]
                try:
                    await scope.get_credential(f"held-{holder_a[-8:]}")
                    foreign = "visible"
                except CredentialNotFound as error:
                    foreign = error.reason
            return {"waited": waited, "before": before, "after": after, "foreign": foreign}

        waiting = asyncio.create_task(wait_then_work())
        await asyncio.sleep(0.2)
        result["waiter_done_before_release"] = waiting.done()
        release.set()
        result["holders"] = dict(zip((holder_a, holder_b), await asyncio.gather(*holders)))
        result["waiter"] = await waiting
    return result


def main(argv: list[str]) -> int:
    command, *user_ids = argv
    if command == "restart-load":
        asyncio.run(_restart_load(user_ids))
    elif command == "pool-exhaustion":
        result = asyncio.run(asyncio.wait_for(_pool_exhaustion(*user_ids), timeout=30))
        print(json.dumps(result))
    else:
        raise SystemExit(f"unknown command {command!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
