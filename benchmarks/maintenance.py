"""W4 (key rotation), W5 (encrypt_plaintext) and the rotation memory check.

Every user's data is under the active key. Before each timed run, a fixed
subset of rows (from the maintenance users) is put back under an old key
(W4) or back to plaintext (W5), untimed, as the operator role; then the
package's job and the raw asyncpg batch each take their turn, in an order
that alternates by round, each in a fresh process (maintenance_worker.py).
Rows/s counts the subset's rows; both jobs must also find them among all
the others, which is part of what is measured. After each run the subset
is checked: nothing may be left to do.

Memory: the package's rotation of the whole table (every row, under a newly
added active key) in a fresh process, against its rotation of the subset;
flat means peak RSS does not grow with the row count.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
from dataclasses import dataclass
from typing import Any

import asyncpg

from benchmarks.database import ROOT
from benchmarks.sealing import CREDENTIALS_TABLE, active_prefix, open_column_only, seal_row
from orchestrator_db.crypto.keyring import KeyRing

_SET_VALUES = f"""
UPDATE {CREDENTIALS_TABLE} AS c SET api_key = v.api, secret_key = v.secret
FROM unnest($1::uuid[], $2::text[], $3::text[]) AS v(id, api, secret)
WHERE c.id = v.id
"""


@dataclass(frozen=True)
class Keys:
    """Ring entries ("kid:base64"): main is active throughout W1-W5."""

    main: str
    old: str
    newer: str  # only for the whole-table memory run

    @property
    def ring_text(self) -> str:
        return f"{self.main},{self.old}"

    @property
    def memory_ring_text(self) -> str:
        return f"{self.newer},{self.main},{self.old}"


async def subset_rows(operator_url: str, users: list[str], rows: int) -> list[Any]:
    """Rows (id, user_id, user_account_id, credential_type) of the maintenance users."""
    connection = await asyncpg.connect(operator_url)
    try:
        found = await connection.fetch(
            f"SELECT id, user_id, user_account_id, credential_type FROM {CREDENTIALS_TABLE} "
            "WHERE user_id = ANY($1::text[]) "
            "ORDER BY user_id, credential_type",
            users[: (rows + 1) // 2 + 1],
        )
    finally:
        await connection.close()
    return [dict(r) for r in found[:rows]]


async def _set_subset(operator_url: str, subset: list[Any], values) -> None:
    connection = await asyncpg.connect(operator_url)
    try:
        for low in range(0, len(subset), 5000):
            part = subset[low : low + 5000]
            ids, apis, secrets = [], [], []
            for row in part:
                api, secret = values(row)
                ids.append(row["id"])
                apis.append(api)
                secrets.append(secret)
            await connection.execute(_SET_VALUES, ids, apis, secrets)
    finally:
        await connection.close()


async def put_under_old_key(operator_url: str, keys: Keys, subset) -> None:
    old_ring = KeyRing.parse(keys.old)
    await _set_subset(
        operator_url,
        subset,
        lambda row: seal_row(old_ring, row, "PKROTATE" + str(row["id"])[:8], "rotate-" + str(row["id"])),
    )


async def put_back_to_plaintext(operator_url: str, keys: Keys, subset) -> None:
    await _set_subset(
        operator_url,
        subset,
        lambda row: ("PKLEGACY" + str(row["id"])[:8], "legacy-" + str(row["id"])),
    )


async def left_to_do(operator_url: str, keys: Keys, subset) -> int:
    """Subset rows with a value not under the active key (old key or plaintext)."""
    prefix = active_prefix(keys.main.partition(":")[0])
    connection = await asyncpg.connect(operator_url)
    try:
        return await connection.fetchval(
            f"SELECT count(*) FROM {CREDENTIALS_TABLE} WHERE id = ANY($1::uuid[]) "
            "AND (NOT starts_with(api_key, $2) OR NOT starts_with(secret_key, $2))",
            [row["id"] for row in subset],
            prefix,
        )
    finally:
        await connection.close()


async def run_worker(job: str, batch_size: int, operator_url: str, ring_text: str) -> dict[str, Any]:
    # Raw keys in either mode: W4/W5 compare the package with a raw batch on the same ring.
    env = {**os.environ, "DATABASE_URL": operator_url, "ORCHESTRATOR_DB_KEYS": ring_text,
           "ORCHESTRATOR_DB_KEY_PROVIDER": "env"}
    env.pop("ORCHESTRATOR_DB_KEYS_FILE", None)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.maintenance_worker", job, str(batch_size),
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    if process.returncode != 0:
        lines = stderr.decode(errors="replace").strip().splitlines() or ["(no output)"]
        return {"job": job, "available": False, "error": True, "stderr_tail": lines[-20:],
                "reason": f"{job} failed: {lines[-1].strip()[:200]}"}
    return json.loads(stdout.decode().strip().splitlines()[-1])


async def measure_job(
    workload: str,
    package_job: str,
    prepare,
    *,
    operator_url: str,
    keys: Keys,
    subset,
    rounds: int,
    batch_size: int,
    log=print,
) -> dict[str, Any]:
    """Alternating package / raw runs over the same prepared subset.

    A package without the function is skipped from then on; a run that
    fails is recorded as that round's error and the next round tries again.
    """
    per_round: list[dict[str, Any]] = []
    unavailable: str | None = None
    errors: list[str] = []
    for number in range(rounds):
        order = ["package", "raw"] if number % 2 == 0 else ["raw", "package"]
        entry: dict[str, Any] = {}
        for who in order:
            if who == "package" and unavailable:
                continue
            await prepare(operator_url, keys, subset)
            job = package_job if who == "package" else "raw_batch"
            outcome = await run_worker(job, batch_size, operator_url, keys.ring_text)
            if outcome.get("error"):
                errors.append(f"round {number + 1} {who}: {outcome['reason']}")
                entry[f"{who}_error"] = outcome["reason"]
                log(f"  {workload} {who}: {outcome['reason']}")
                continue
            if not outcome.get("available", False):
                unavailable = outcome.get("reason", "not available")
                log(f"  {workload} package: not available ({unavailable})")
                continue
            remaining = await left_to_do(operator_url, keys, subset)
            outcome["rows"] = len(subset)
            outcome["rows_left"] = remaining
            outcome["rows_per_s"] = len(subset) / outcome["seconds"] if remaining == 0 else None
            entry[who] = outcome
        if entry.get("package", {}).get("rows_per_s") and entry.get("raw", {}).get("rows_per_s"):
            entry["ratio"] = entry["package"]["rows_per_s"] / entry["raw"]["rows_per_s"]
        per_round.append(entry)
        log(
            f"  {workload} round {number + 1}: "
            + ", ".join(
                f"{who} {entry[who]['rows_per_s']:,.0f} rows/s"
                if entry[who].get("rows_per_s")
                else f"{who} incomplete"
                for who in order
                if who in entry
            )
        )
    summary: dict[str, Any] = {"rows": len(subset), "batch_size": batch_size, "rounds": per_round}
    for who in ("package", "raw"):
        rates = [r[who]["rows_per_s"] for r in per_round if r.get(who, {}).get("rows_per_s")]
        if rates:
            summary[f"{who}_rows_per_s"] = statistics.median(rates)
    ratios = [r["ratio"] for r in per_round if "ratio" in r]
    if ratios:
        summary["ratio"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
    summary["available"] = unavailable is None and "package_rows_per_s" in summary
    if unavailable or not summary["available"]:
        summary["reason"] = unavailable or "; ".join(errors) or "no complete package run"
    if errors:
        summary["errors"] = errors
    incomplete = [
        who for r in per_round for who in ("package", "raw") if who in r and r[who]["rows_left"]
    ]
    if incomplete:
        summary["incomplete"] = incomplete
    return summary


async def memory_check(
    *, operator_url: str, keys: Keys, total_rows: int, subset_runs: list[dict[str, Any]],
    batch_size: int, log=print,
) -> dict[str, Any]:
    """Whole-table rotation (every row moves to a newly added key) in a fresh process."""
    log(f"  rotating all {total_rows:,} rows under a new key (memory check) ...")
    outcome = await run_worker("package_rotate", batch_size, operator_url, keys.memory_ring_text)
    if not outcome.get("available", False):
        return {"available": False, "reason": outcome.get("reason", "not available")}
    small = [r["maxrss_kb"] for r in subset_runs]
    result = {
        "available": True,
        "full_rows": total_rows,
        "full_seconds": outcome["seconds"],
        "full_rows_per_s": total_rows / outcome["seconds"],
        "full_maxrss_kb": outcome["maxrss_kb"],
        "full_rss_before_kb": outcome["rss_before_kb"],
        "subset_maxrss_kb": max(small) if small else None,
        "subset_rss_before_kb": max(r["rss_before_kb"] for r in subset_runs) if subset_runs else None,
    }
    prefix = active_prefix(keys.newer.partition(":")[0])
    connection = await asyncpg.connect(operator_url)
    try:
        result["full_rows_left"] = await connection.fetchval(
            f"SELECT count(*) FROM {CREDENTIALS_TABLE} "
            "WHERE NOT starts_with(api_key, $1) OR NOT starts_with(secret_key, $1)",
            prefix,
        )
    finally:
        await connection.close()
    if result["subset_maxrss_kb"]:
        growth = result["full_maxrss_kb"] - result["subset_maxrss_kb"]
        result["growth_kb"] = growth
        # Flat: the whole table peaks within 25% (or 16 MiB) of the subset's peak.
        result["flat"] = growth <= max(0.25 * result["subset_maxrss_kb"], 16384)
    return result


async def reseal_for_package(operator_url: str, ring: KeyRing, users: list[str]) -> None:
    """Give the SQLAlchemy users' rows the package's AAD, so a whole-table rotation can read them."""
    connection = await asyncpg.connect(operator_url)
    try:
        rows = await connection.fetch(
            f"SELECT id, user_id, user_account_id, credential_type, api_key, secret_key "
            f"FROM {CREDENTIALS_TABLE} WHERE user_id = ANY($1::text[])",
            users,
        )
        ids, apis, secrets = [], [], []
        for row in rows:
            api = open_column_only(ring, row["api_key"], "api_key")
            secret = open_column_only(ring, row["secret_key"], "secret_key")
            sealed = seal_row(ring, row, api, secret)
            ids.append(row["id"])
            apis.append(sealed[0])
            secrets.append(sealed[1])
        for low in range(0, len(ids), 5000):
            await connection.execute(
                _SET_VALUES, ids[low : low + 5000], apis[low : low + 5000], secrets[low : low + 5000]
            )
    finally:
        await connection.close()
