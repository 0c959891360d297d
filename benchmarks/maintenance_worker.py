"""One timed maintenance job in a fresh process: W4/W5 and the memory check.

``python -m benchmarks.maintenance_worker JOB BATCH_SIZE`` with DATABASE_URL
(the operator role) and ORCHESTRATOR_DB_KEYS set by the caller. JOB is

* ``package_rotate`` / ``package_encrypt_plaintext``: the package's own
  ``orchestrator_db.rotation.rotate_keys`` / ``encrypt_plaintext``;
* ``raw_batch``: a hand-written asyncpg batch that re-encrypts every value
  not under the active key, and encrypts plaintext, in one pass.

A fresh process per job keeps the jobs from sharing caches and gives the
job its own memory high-water mark. That is read from VmHWM in
/proc/self/status, which starts afresh at exec; ``ru_maxrss`` would not do:
Linux carries it over from the parent across fork and exec, so it would
report the benchmark's own size. Prints one JSON line: seconds (the call
only, process start-up excluded), rss_before_kb (after imports), maxrss_kb,
and, when the package has no such function, available=false and why.

The package interface used: ``orchestrator_db.rotation.rotate_keys`` and
``encrypt_plaintext``, ``async (connection, key_ring=None, *, batch_size,
progress=None)``, with an asyncpg connection as the operator role; the ring
defaults to the process's (ORCHESTRATOR_DB_KEYS). Should they ever connect
from settings instead (no ``connection`` parameter), DATABASE_URL already
names the operator role.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import os
import resource
import sys
import time
import uuid
from typing import Any

import asyncpg

from benchmarks.sealing import active_prefix, reseal_value
from orchestrator_db.crypto.keyring import KeyRing

_SELECT_BATCH = """
SELECT id, user_id, user_account_id, credential_type, api_key, secret_key FROM user_credentials
WHERE id > $1 AND (NOT starts_with(api_key, $2) OR NOT starts_with(secret_key, $2))
ORDER BY id LIMIT $3
"""
# Optimistic: a row a user rewrote meanwhile (under the active key) is left alone.
_UPDATE_BATCH = """
UPDATE user_credentials AS c SET api_key = v.new_api, secret_key = v.new_secret
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[])
    AS v(id, old_api, old_secret, new_api, new_secret)
WHERE c.id = v.id AND c.api_key = v.old_api AND c.secret_key = v.old_secret
"""


class Unavailable(Exception):
    pass


def _maxrss_kb() -> int:
    """Peak resident set of this process image, KiB."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


async def raw_batch(url: str, ring: KeyRing, batch_size: int) -> int:
    """Keyset pass over the primary key; each batch is its own short transaction."""
    prefix = active_prefix(ring.active_key_id)
    connection = await asyncpg.connect(url)
    done = 0
    try:
        last = uuid.UUID(int=0)
        while True:
            rows = await connection.fetch(_SELECT_BATCH, last, prefix, batch_size)
            if not rows:
                return done
            last = rows[-1]["id"]
            ids, old_api, old_secret, new_api, new_secret = [], [], [], [], []
            for row in rows:
                ids.append(row["id"])
                old_api.append(row["api_key"])
                old_secret.append(row["secret_key"])
                new_api.append(reseal_value(ring, row["api_key"], "api_key", row))
                new_secret.append(reseal_value(ring, row["secret_key"], "secret_key", row))
            async with connection.transaction():
                status = await connection.execute(
                    _UPDATE_BATCH, ids, old_api, old_secret, new_api, new_secret
                )
            done += int(status.split()[-1])
    finally:
        await connection.close()


def _package_function(name: str) -> Any:
    try:
        module = importlib.import_module("orchestrator_db.rotation")
    except ModuleNotFoundError as error:
        if error.name != "orchestrator_db.rotation":
            raise
        raise Unavailable("orchestrator_db.rotation does not exist yet") from None
    function = getattr(module, name, None)
    if function is None:
        raise Unavailable(f"orchestrator_db.rotation has no {name}()")
    return function


async def package_job(function: Any, url: str, batch_size: int) -> Any:
    parameters = inspect.signature(function).parameters
    kwargs: dict[str, Any] = {}
    if "batch_size" in parameters:
        kwargs["batch_size"] = batch_size
    connection = None
    if "connection" in parameters:
        connection = await asyncpg.connect(url)
        kwargs["connection"] = connection
    try:
        result = function(**kwargs)
        if inspect.isawaitable(result):
            result = await result
    finally:
        if connection is not None:
            await connection.close()
    return result


def _summary(result: Any) -> Any:
    if result is None or isinstance(result, (int, float, str, bool)):
        return result
    if isinstance(result, dict):
        return {str(k): _summary(v) for k, v in result.items()}
    if hasattr(result, "__dataclass_fields__"):
        return {k: _summary(getattr(result, k)) for k in result.__dataclass_fields__}
    return repr(result)[:500]


async def main(job: str, batch_size: int) -> dict[str, Any]:
    url = os.environ["DATABASE_URL"]
    ring = KeyRing.parse(os.environ["ORCHESTRATOR_DB_KEYS"])
    out: dict[str, Any] = {"job": job, "available": True}
    package_names = {"package_rotate": "rotate_keys", "package_encrypt_plaintext": "encrypt_plaintext"}
    if job not in package_names and job != "raw_batch":
        raise SystemExit(f"unknown job {job!r}")
    try:
        function = _package_function(package_names[job]) if job in package_names else None
    except Unavailable as why:
        out.update(available=False, reason=str(why))
        return out
    out["rss_before_kb"] = _maxrss_kb()  # everything imported, nothing done
    began = time.perf_counter()
    if function is None:
        out["result"] = await raw_batch(url, ring, batch_size)
    else:
        out["result"] = _summary(await package_job(function, url, batch_size))
    out["seconds"] = time.perf_counter() - began
    out["maxrss_kb"] = _maxrss_kb()
    return out


if __name__ == "__main__":
    job_name, batch = sys.argv[1], int(sys.argv[2])
    print(json.dumps(asyncio.run(main(job_name, batch))))
