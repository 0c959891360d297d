"""Round trips per operation, counted on the wire (not timed, not asserted).

``python -m benchmarks.roundtrips`` runs in its own process (so the package
can be pointed at the proxy through DATABASE_URL before it reads its
settings), started by :func:`count_round_trips` with the application
role's URL and the key ring in the environment and the users on stdin.

A small asyncio TCP proxy listens on 127.0.0.1 and forwards every byte to
PostgreSQL. On each client connection it counts a *round trip* each time
the client sends after the server has sent (the first send counts too):
bytes a client writes in one go, or in several writes without waiting for
an answer, are one round trip; every answer it waits for before sending
again starts another. Each implementation does a few untimed operations
first (connections opened, statements prepared), then the count runs over
``ops`` operations of W1, W2 and W3 each, one at a time; the result is
round trips per operation, pool acquire and release included (a pool's
reset on release is a round trip when it is not a no-op).

Prints one JSON line: {impl: {"label", "W1", "W2", "W3"}}.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
from typing import Any
from urllib.parse import urlsplit

from benchmarks.database import ROOT
from benchmarks.dataset import random_api_key, random_secret_key
from orchestrator_db.devdb.roundtrips import CountingProxy


async def _count(impls: dict[str, Any], proxy: CountingProxy, ops: int, warmup: int) -> dict[str, Any]:
    rng = random.Random(5)
    out: dict[str, Any] = {}
    for key, impl in impls.items():
        operations = {
            "W1": lambda i=impl: i.get_one(rng.choice(i.users)),
            "W2": lambda i=impl: i.list_all(rng.choice(i.users)),
            "W3": lambda i=impl: i.put_one(rng.choice(i.users), random_api_key(), random_secret_key()),
        }
        counted: dict[str, Any] = {"label": impl.label}
        for workload, operation in operations.items():
            for _ in range(warmup):
                await operation()
            before = proxy.round_trips
            for _ in range(ops):
                await operation()
            counted[workload] = round((proxy.round_trips - before) / ops, 2)
        out[key] = counted
    return out


async def _main(ops: int, warmup: int) -> dict[str, Any]:
    from benchmarks.implementations import NaiveRaw, OneRoundTripRaw, PackageAPI
    from benchmarks.sqlalchemy_baseline import SQLAlchemyTypeDecorator
    from orchestrator_db.crypto.keyring import KeyRing
    from orchestrator_db.settings import reload_settings

    users = json.loads(sys.stdin.read())
    target = os.environ["BENCH_TARGET_URL"]
    parts = urlsplit(target)
    proxy = CountingProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.start()
    url = proxy.url_through(target)
    os.environ["DATABASE_URL"] = url  # the package connects through the proxy too
    reload_settings()
    ring = KeyRing.parse(os.environ["ORCHESTRATOR_DB_KEYS"])
    impls = {
        "a": PackageAPI(users["main"]),
        "b": NaiveRaw(url, ring, users["main"]),
        "c": OneRoundTripRaw(url, ring, users["main"]),
        "d": SQLAlchemyTypeDecorator(url, ring, users["sqlalchemy"]),
    }
    try:
        for impl in impls.values():
            await impl.start()
        return await _count(impls, proxy, ops, warmup)
    finally:
        for impl in impls.values():
            await impl.close()
        await proxy.close()


async def count_round_trips(
    app_url: str, ring_text: str, main_users: list[str], sqlalchemy_users: list[str], *, ops: int = 50,
    warmup: int = 10,
) -> dict[str, Any]:
    """Run the counting pass in a fresh process; {impl: {...}} or {"error": ...}."""
    env = {**os.environ, "BENCH_TARGET_URL": app_url, "ORCHESTRATOR_DB_KEYS": ring_text}
    env.pop("ORCHESTRATOR_DB_KEYS_FILE", None)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.roundtrips", str(ops), str(warmup),
        cwd=ROOT, env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    payload = json.dumps({"main": main_users, "sqlalchemy": sqlalchemy_users}).encode()
    stdout, stderr = await process.communicate(payload)
    if process.returncode != 0:
        lines = stderr.decode(errors="replace").strip().splitlines() or ["(no output)"]
        return {"error": lines[-1].strip()[:300], "stderr_tail": lines[-20:]}
    return json.loads(stdout.decode().strip().splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps(asyncio.run(_main(int(sys.argv[1]), int(sys.argv[2])))))
