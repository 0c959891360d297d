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
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import asyncpg

from orchestrator_db.crypto.envelopes import CREDENTIALS_TABLE as CREDENTIALS
from orchestrator_db.crypto.envelopes import SECRET_COLUMNS, seal, unseal
from orchestrator_db.crypto.keyring import KeyRing, is_envelope
from orchestrator_db.crypto.providers import get_key_ring
from orchestrator_db.errors import ConfigurationError, DecryptionError

__all__ = [
    "PLAINTEXT",
    "BatchProgress",
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

# The SQL twin of crypto.is_envelope: "v1", a key id of 1-32 characters, a
# base64url body of at least 28 bytes (38 characters) whose length is not
# 1 mod 4. Lengths are checked with split_part, not with bounded regex
# repeats ({1,32}), which PostgreSQL's regex engine runs 15x slower.
# Bracketed dots keep the pattern free of backslashes, so no string-escaping
# mode matters.
_ENVELOPE_SHAPE = "'^v1[.][A-Za-z0-9_-]+[.][A-Za-z0-9_-]+$'"


def _is_envelope_sql(column: str) -> str:
    key_id, body = f"split_part({column}, '.', 2)", f"split_part({column}, '.', 3)"
    return (
        f"({column} ~ {_ENVELOPE_SHAPE} AND length({key_id}) <= 32 "
        f"AND length({body}) >= 38 AND length({body}) % 4 <> 1)"
    )


_KEY_STATUS = f"""
SELECT CASE WHEN {_is_envelope_sql('v.value')} THEN split_part(v.value, '.', 2) END
           AS key_id,
       count(*) AS n
FROM {CREDENTIALS} CROSS JOIN LATERAL (VALUES (api_key), (secret_key)) AS v(value)
GROUP BY 1
"""

# $1 is the LIKE pattern of the active key's envelopes.
_NOT_UNDER_ACTIVE_KEY = "(api_key NOT LIKE $1 OR secret_key NOT LIKE $1)"
_NOT_ALL_ENCRYPTED = f"NOT ({_is_envelope_sql('api_key')} AND {_is_envelope_sql('secret_key')})"

# One round trip per batch. "c.id = ANY($1)" lets the planner find the rows
# by primary key; with the join condition alone it hashes the whole table.
_UPDATE_BATCH = f"""
UPDATE {CREDENTIALS} AS c
SET api_key = u.api_key, secret_key = u.secret_key
FROM unnest($1::uuid[], $2::text[], $3::text[]) AS u(id, api_key, secret_key)
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


async def key_status(connection: asyncpg.Connection) -> dict[str, int]:
    """Stored values per key id, over both secret columns, in one scan.

    Values that are not envelopes count under :data:`PLAINTEXT`. A key id
    absent from the result encrypts nothing and can be retired.
    """
    await _require_all_rows_visible(connection)
    rows = await connection.fetch(_KEY_STATUS)
    counts = {row["key_id"] or PLAINTEXT: row["n"] for row in rows}
    return dict(sorted(counts.items()))


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
    pattern = "v1." + active.replace("_", r"\_") + ".%"

    def rotate(row: asyncpg.Record) -> tuple[str, str, int]:
        context = _context(row)
        values, changed = [], 0
        for column in SECRET_COLUMNS:
            value = row[column]
            if not is_envelope(value):
                raise DecryptionError(
                    f"cannot rotate {CREDENTIALS}.{column} of row {context['row_id']!r}: "
                    "it is not encrypted; run `piccolo orchestrator_db encrypt_plaintext` first"
                )
            if ring.key_id_of(value) != active:
                plaintext = unseal(ring, value, column=column, **context)
                value = seal(ring, plaintext, column=column, **context)
                changed += 1
            values.append(value)
        return values[0], values[1], changed

    return await _reencrypt(
        connection, ring, _NOT_UNDER_ACTIVE_KEY, [pattern], rotate, batch_size, progress
    )


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
        context = _context(row)
        values, changed = [], 0
        for column in SECRET_COLUMNS:
            value = row[column]
            if not is_envelope(value):
                value = seal(ring, value, column=column, **context)
                changed += 1
            values.append(value)
        return values[0], values[1], changed

    return await _reencrypt(connection, ring, _NOT_ALL_ENCRYPTED, [], encrypt, batch_size, progress)


# The batch engine ############################################################


def _context(row: asyncpg.Record) -> dict[str, str]:
    """The row half of the cell each value is sealed for (see envelopes.py)."""
    return {"row_id": str(row["id"]), "user_id": row["user_id"]}


async def _require_all_rows_visible(connection: asyncpg.Connection) -> None:
    # Only BYPASSRLS (or superuser) sees every user's rows. A broken policy
    # setup is no substitute: a missing policy hides every row, and the run
    # would report success having touched nothing.
    role = await connection.fetchrow(
        "SELECT rolname, rolsuper OR rolbypassrls AS sees_all "
        "FROM pg_roles WHERE rolname = current_user"
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
        columns = f"SELECT id, user_id, api_key, secret_key FROM {CREDENTIALS} WHERE "
        locked_batch = f" ORDER BY id LIMIT ${n + 1} FOR UPDATE SKIP LOCKED"
        self.select_first = columns + where + locked_batch
        self.select_after = columns + f"id > ${n + 2} AND " + where + locked_batch
        self.count_left = f"SELECT count(*) FROM {CREDENTIALS} WHERE {where}"
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
