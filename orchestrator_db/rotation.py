"""Re-encrypting stored secrets: key status, key rotation, plaintext migration.

These are operator tools. They run as the operator role (BYPASSRLS), because
they must see every user's rows, and refuse to run as a role that row-level
security would hide them from: there they would find nothing and report success.

The work goes in small batches. Each batch is its own transaction and locks its
rows with ``FOR UPDATE SKIP LOCKED``, so readers and writers keep working, a
row a writer holds is left for a later pass, and an interrupted run leaves only
whole batches behind. Batches walk the primary key in order (keyset
pagination), so each pass reads every row at most once and memory stays flat
whatever the size of the table. Rows that are already current are never
touched, which makes a re-run finish what is left and nothing more.

Rotation also upgrades the envelope format: a v1 envelope is re-sealed as
v2 (bound to every identifying field, see crypto/envelopes.py) even when
its key is already the active one, and the admin's MFA secrets are re-sealed
the same way (see crypto/mfa.py). Every name in the SQL is schema-qualified.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import asyncpg

from orchestrator_db.crypto import mfa
from orchestrator_db.crypto.envelopes import (
    CREDENTIALS_TABLE,
    SECRET_COLUMNS,
    row_cells,
    seal,
    unseal,
)
from orchestrator_db.crypto.keyring import (
    CURRENT_VERSION,
    KeyRing,
    envelope_sql_predicate,
    is_envelope,
)
from orchestrator_db.crypto.providers import get_key_ring
from orchestrator_db.errors import ConfigurationError, DecryptionError

__all__ = [
    "PLAINTEXT",
    "BatchProgress",
    "envelope_counts",
    "format_counts",
    "rotate_mfa_secrets",
    "ReencryptResult",
    "encrypt_plaintext",
    "key_status",
    "missing_key_ids",
    "retirable_key_ids",
    "rotate_keys",
]

#: The key_status bucket for values that are not envelopes. Parentheses cannot
#: occur in a key id, so it never collides with a real key.
PLAINTEXT = "(plaintext)"

DEFAULT_BATCH_SIZE = 500

CREDENTIALS = f"public.{CREDENTIALS_TABLE}"

_ENVELOPE_COUNTS = f"""
SELECT CASE WHEN {envelope_sql_predicate('v.value')}
            THEN pg_catalog.split_part(v.value, '.', 1) END AS version,
       CASE WHEN {envelope_sql_predicate('v.value')}
            THEN pg_catalog.split_part(v.value, '.', 2) END AS key_id,
       pg_catalog.count(*) AS n
FROM {CREDENTIALS} CROSS JOIN LATERAL (VALUES (api_key), (secret_key)) AS v(value)
GROUP BY 1, 2
"""

# $1 is the LIKE pattern of current-format envelopes under the active key.
_NOT_CURRENT = "(api_key NOT LIKE $1 OR secret_key NOT LIKE $1)"
_NOT_ALL_ENCRYPTED = (
    f"NOT ({envelope_sql_predicate('api_key')} AND {envelope_sql_predicate('secret_key')})"
)

# One round trip per batch. "c.id = ANY($1)" lets the planner find the rows
# by primary key; with the join condition alone it hashes the whole table.
_UPDATE_BATCH = f"""
UPDATE {CREDENTIALS} AS c
SET api_key = u.api_key, secret_key = u.secret_key
FROM ROWS FROM (pg_catalog.unnest($1::uuid[]), pg_catalog.unnest($2::text[]),
                pg_catalog.unnest($3::text[])) AS u(id, api_key, secret_key)
WHERE c.id = u.id AND c.id = ANY($1::uuid[])
"""

# A pass that re-encrypts nothing while rows remain means writers hold them:
# wait a little and look again, a bounded number of times.
_IDLE_PASSES = 5
_MAX_PASSES = 20
_IDLE_WAIT_SECONDS = 0.05


@dataclass(frozen=True)
class BatchProgress:
    """Reported after each committed batch."""

    batch: int
    rows: int  # rows rewritten by this batch
    total_rows: int  # rows rewritten so far in this run
    total_values: int  # column values re-encrypted so far in this run


@dataclass(frozen=True)
class ReencryptResult:
    """What a run did, and what it had to leave."""

    key_id: str  # the active key everything was encrypted under
    rows: int  # rows rewritten
    values: int  # column values (re-)encrypted; a row holds two
    batches: int
    #: Rows still needing work when the run ended: held by writers through
    #: every pass (a re-run picks them up).
    remaining: int


Progress = Callable[[BatchProgress], object]
# Returns the new (api_key, secret_key) and how many of them changed.
_Transform = Callable[[asyncpg.Record], tuple[str, str, int]]


# Key status ##################################################################


async def envelope_counts(connection: asyncpg.Connection) -> dict[tuple[str, str], int]:
    """Stored values per (format version, key id), over both secret columns, in one scan.

    Values that are not envelopes count under ``("", PLAINTEXT)``.
    """
    await _require_all_rows_visible(connection)
    rows = await connection.fetch(_ENVELOPE_COUNTS)
    counts = {
        (row["version"] or "", row["key_id"] or PLAINTEXT): row["n"] for row in rows
    }
    return dict(sorted(counts.items()))


def by_key(counts: dict[tuple[str, str], int]) -> dict[str, int]:
    """Values per key id (any format); :data:`PLAINTEXT` for values that are not envelopes."""
    out: dict[str, int] = {}
    for (_, key_id), n in counts.items():
        out[key_id] = out.get(key_id, 0) + n
    return dict(sorted(out.items()))


def format_counts(counts: dict[tuple[str, str], int]) -> dict[str, int]:
    """Envelopes per format version ("v1", "v2"); plaintext is not counted."""
    out: dict[str, int] = {}
    for (version, _), n in counts.items():
        if version:
            out[version] = out.get(version, 0) + n
    return dict(sorted(out.items()))


async def key_status(connection: asyncpg.Connection) -> dict[str, int]:
    """Stored values per key id, over both secret columns, in one scan.

    Values that are not envelopes count under :data:`PLAINTEXT`. A key id
    absent from the result encrypts nothing and can be retired.
    :func:`envelope_counts` also splits them by format version.
    """
    return by_key(await envelope_counts(connection))


def missing_key_ids(counts: dict[str, int], key_ring: KeyRing) -> list[str]:
    """Key ids that encrypt stored values but are not in the ring: those values are unreadable."""
    return sorted(
        kid for kid, n in counts.items() if n and kid != PLAINTEXT and kid not in key_ring.key_ids
    )


def retirable_key_ids(counts: dict[str, int], key_ring: KeyRing) -> list[str]:
    """Ring keys, other than the active one, that no stored value needs any more."""
    return [kid for kid in key_ring.key_ids[1:] if not counts.get(kid)]


# Rotation ####################################################################


async def rotate_keys(
    connection: asyncpg.Connection,
    key_ring: KeyRing | None = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress | None = None,
) -> ReencryptResult:
    """Re-encrypt every value not under the ring's active key.

    ``key_ring`` defaults to the process's ring. A value that does not
    decrypt (tampered, plaintext, or under a key not in the ring) stops the
    run with DecryptionError naming its row; the batches before it stay
    committed. ``progress`` is called after each batch commits, so
    cancelling the task from it stops the run between batches.
    """
    ring = key_ring if key_ring is not None else get_key_ring()
    active = ring.active_key_id
    # '_' is a LIKE wildcard and may occur in a key id.
    pattern = f"{CURRENT_VERSION}." + active.replace("_", r"\_") + ".%"

    def rotate(row: asyncpg.Record) -> tuple[str, str, int]:
        cell = row_cells(row)
        values, changed = [], 0
        for column in SECRET_COLUMNS:
            value = row[column]
            if not is_envelope(value):
                raise DecryptionError(
                    f"cannot rotate {CREDENTIALS_TABLE}.{column} of row {str(row['id'])!r}: "
                    "it is not encrypted; run `piccolo orchestrator_db encrypt_plaintext` first"
                )
            if not ring.is_current(value):
                plaintext = unseal(ring, value, cell[column])
                value = seal(ring, plaintext, cell[column])
                changed += 1
            values.append(value)
        return values[0], values[1], changed

    return await _reencrypt(
        connection, ring, _NOT_CURRENT, [pattern], rotate, batch_size, progress
    )


async def rotate_mfa_secrets(
    connection: asyncpg.Connection, key_ring: KeyRing | None = None
) -> int:
    """Re-seal the admin's stored MFA secrets under the active key, in the v2 format.

    Legacy ``odbmfa-<key_id>.<body>`` values are read by the one legacy
    reader (crypto/mfa.py) here and nowhere else. One transaction; the table
    is small (one row per enrolled operator). Returns how many were re-sealed.
    A table that does not exist (the admin never migrated) counts as empty.
    """
    ring = key_ring if key_ring is not None else get_key_ring()
    await _require_all_rows_visible(connection)
    table = await connection.fetchval(
        "SELECT pg_catalog.to_regclass($1)::text", mfa.SECRET_TABLE
    )
    if table is None:
        return 0
    changed = 0
    async with connection.transaction():
        rows = await connection.fetch(
            f"SELECT id, secret FROM {mfa.SECRET_TABLE} ORDER BY id FOR UPDATE"
        )
        for row in rows:
            value = row["secret"]
            if value is None or mfa.is_current(ring, value):
                continue
            resealed = mfa.reseal(ring, value)
            await connection.execute(
                f"UPDATE {mfa.SECRET_TABLE} SET secret = $1 WHERE id = $2", resealed, row["id"]
            )
            changed += 1
    return changed


async def encrypt_plaintext(
    connection: asyncpg.Connection,
    key_ring: KeyRing | None = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress | None = None,
) -> ReencryptResult:
    """Encrypt, under the active key, every stored value that is not an envelope yet.

    For deployments of the original plan, which stored plaintext. Envelopes
    are left as they are, whatever their key, so a re-run changes nothing.
    """
    ring = key_ring if key_ring is not None else get_key_ring()

    def encrypt(row: asyncpg.Record) -> tuple[str, str, int]:
        cell = row_cells(row)
        values, changed = [], 0
        for column in SECRET_COLUMNS:
            value = row[column]
            if not is_envelope(value):
                value = seal(ring, value, cell[column])
                changed += 1
            values.append(value)
        return values[0], values[1], changed

    return await _reencrypt(connection, ring, _NOT_ALL_ENCRYPTED, [], encrypt, batch_size, progress)


# The batch engine ############################################################


async def _require_all_rows_visible(connection: asyncpg.Connection) -> None:
    # Only BYPASSRLS (or superuser) sees every user's rows. A broken policy
    # setup is no substitute: a missing policy hides every row, and the run
    # would report success having touched nothing.
    role = await connection.fetchrow(
        "SELECT rolname, rolsuper OR rolbypassrls AS sees_all "
        "FROM pg_catalog.pg_roles WHERE rolname = current_user"
    )
    if not role["sees_all"]:
        raise ConfigurationError(
            f"role {role['rolname']} is subject to row-level security, so it sees no "
            "user's credentials: run this as the operator role (BYPASSRLS) made by "
            "`piccolo orchestrator_db create_roles`"
        )


class _Run:
    """One run's statements and running totals."""

    def __init__(self, where: str, args: Sequence[object], progress: Progress | None) -> None:
        n = len(args)
        columns = (
            "SELECT id, user_id, user_account_id, credential_type, api_key, secret_key "
            f"FROM {CREDENTIALS} WHERE "
        )
        locked_batch = f" ORDER BY id LIMIT ${n + 1} FOR UPDATE SKIP LOCKED"
        self.select_first = columns + where + locked_batch
        self.select_after = columns + f"id > ${n + 2} AND " + where + locked_batch
        self.count_left = f"SELECT pg_catalog.count(*) FROM {CREDENTIALS} WHERE {where}"
        self.args = args
        self.progress = progress
        self.rows = self.values = self.batches = 0

    def record(self, rows: int, values: int) -> None:
        self.batches += 1
        self.rows += rows
        self.values += values
        if self.progress is not None:
            self.progress(BatchProgress(self.batches, rows, self.rows, self.values))


async def _batch(
    connection: asyncpg.Connection,
    run: _Run,
    transform: _Transform,
    batch_size: int,
    after: uuid.UUID | None,
) -> list[asyncpg.Record]:
    """Lock, transform and write back the next rows after ``after``: one transaction."""
    async with connection.transaction():
        if after is None:
            batch = await connection.fetch(run.select_first, *run.args, batch_size)
        else:
            batch = await connection.fetch(run.select_after, *run.args, batch_size, after)
        ids, api_keys, secret_keys, values = [], [], [], 0
        for row in batch:
            api_key, secret_key, changed = transform(row)
            if changed:
                ids.append(row["id"])
                api_keys.append(api_key)
                secret_keys.append(secret_key)
                values += changed
        if ids:
            await connection.execute(_UPDATE_BATCH, ids, api_keys, secret_keys)
    if batch:
        run.record(len(ids), values)
    return batch


def check_batch_size(batch_size: object) -> None:
    """Refuse a bad batch size before any database work."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigurationError(f"batch_size must be a positive integer, got {batch_size!r}")


async def _reencrypt(
    connection: asyncpg.Connection,
    ring: KeyRing,
    where: str,
    args: Sequence[object],
    transform: _Transform,
    batch_size: int,
    progress: Progress | None,
) -> ReencryptResult:
    check_batch_size(batch_size)
    await _require_all_rows_visible(connection)
    run = _Run(where, args, progress)
    idle = remaining = 0
    for _ in range(_MAX_PASSES):
        rows_before = run.rows
        after: uuid.UUID | None = None
        while True:  # one pass: walk the primary key once
            batch = await _batch(connection, run, transform, batch_size, after)
            if len(batch) < batch_size:
                break
            after = batch[-1]["id"]
        remaining = await connection.fetchval(run.count_left, *args)
        if remaining == 0:
            break
        idle = idle + 1 if run.rows == rows_before else 0
        if idle >= _IDLE_PASSES:
            break
        await asyncio.sleep(_IDLE_WAIT_SECONDS * idle)
    return ReencryptResult(ring.active_key_id, run.rows, run.values, run.batches, remaining)
