"""The four ways to read and write a credential that the benchmark compares.

Each implementation has the same three operations, all as the application
role (RLS applies), all decrypting or encrypting with the package's KeyRing:

* ``get_one(user_id)``: W1, the active, unexpired "alpaca" credential;
* ``list_all(user_id)``: W2, the user's active, unexpired credentials;
* ``put_one(user_id, api_key, secret_key)``: W3, encrypt and replace in place.

Round trips per operation (pool acquire/release included) are noted on each;
the benchmark also counts them through a proxy (roundtrips.py).
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import asyncpg

from benchmarks.sealing import CREDENTIALS_TABLE, open_row, seal_credential, seal_row
from orchestrator_db import (
    close_pool,
    get_credential,
    list_credentials,
    open_pool,
    put_credential,
)
from orchestrator_db.crypto.keyring import KeyRing
from orchestrator_db.settings import CURRENT_USER_SETTING, database_settings

W1_TYPE = "alpaca"

_SET_USER = f"SELECT pg_catalog.set_config('{CURRENT_USER_SETTING}', $1, true)"
_SELECT_ONE = f"SELECT * FROM {CREDENTIALS_TABLE} WHERE user_id = $1 AND credential_type = $2"
_SELECT_ALL = f"SELECT * FROM {CREDENTIALS_TABLE} WHERE user_id = $1 ORDER BY credential_type"
_LOCK_ONE = (
    f"SELECT id, user_id, user_account_id, credential_type FROM {CREDENTIALS_TABLE} "
    "WHERE user_id = $1 AND credential_type = $2 FOR UPDATE"
)
_UPDATE = (
    f"UPDATE {CREDENTIALS_TABLE} SET api_key = $3, secret_key = $4, "
    "expires_at = NULL, is_active = true WHERE id = $1 AND user_id = $2"
)
_ACCOUNT_ID = "SELECT id FROM user_accounts WHERE user_id = $1"
_INSERT = (
    f"INSERT INTO {CREDENTIALS_TABLE} "
    "(id, user_account_id, user_id, credential_type, api_key, secret_key) "
    "VALUES ($1, $2, $3, $4, $5, $6)"
)
_SCOPED_ONE = "SELECT * FROM orchestrator_db_scoped_credential($1, $2)"
_SCOPED_ALL = "SELECT * FROM orchestrator_db_scoped_credentials($1)"


def _usable(row: Any, now: datetime.datetime) -> bool:
    return row["is_active"] and (row["expires_at"] is None or row["expires_at"] > now)


def pool_bounds() -> tuple[int, int]:
    """The package's pool bounds (ORCHESTRATOR_DB_POOL_MIN_SIZE / _MAX_SIZE, default 1 and 10).

    Every baseline's pool gets the same, so W6 (64 tasks on one pool) compares like with like.
    """
    settings = database_settings()
    return settings.pool_min_size, settings.pool_max_size


def raw_pool_options() -> dict[str, int]:
    """A raw asyncpg pool configured like the package's: bounds and statement cache."""
    low, high = pool_bounds()
    return {"min_size": low, "max_size": high,
            "statement_cache_size": database_settings().statement_cache_size}


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _sql_literal(text: str) -> str:
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


class Implementation:
    key: str  # "a".."d"
    label: str
    users: list[str]

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def get_one(self, user_id: str) -> Any: ...
    async def list_all(self, user_id: str) -> Any: ...
    async def put_one(self, user_id: str, api_key: str, secret_key: str) -> Any: ...


class PackageAPI(Implementation):
    """(a) the standalone ``get_credential`` / ``list_credentials`` / ``put_credential(uid, ...)``.

    Each is one operation as its own transaction (orchestrator_db.standalone),
    with every guarantee of a ``user_scope``. Reads: 1 round trip (scoped SQL
    function). Put: 2 round trips
    (scoped slot lookup, then a scoped upsert that commits by itself); a put
    inside a user_scope takes 4 (BEGIN + set_config, locking lookup, write,
    COMMIT). The pool's reset is a no-op.
    """

    key, label = "a", "orchestrator_db public API"

    def __init__(self, users: list[str]) -> None:
        self.users = users

    async def start(self) -> None:
        await open_pool()

    async def close(self) -> None:
        await close_pool()

    async def get_one(self, user_id: str) -> Any:
        credential = await get_credential(user_id, W1_TYPE)
        return credential.api_key.get_secret_value(), credential.secret_key.get_secret_value()

    async def list_all(self, user_id: str) -> Any:
        credentials = await list_credentials(user_id)
        return [(c.api_key.get_secret_value(), c.secret_key.get_secret_value()) for c in credentials]

    async def put_one(self, user_id: str, api_key: str, secret_key: str) -> Any:
        credential = await put_credential(user_id, W1_TYPE, api_key, secret_key)
        return credential.id


class NaiveRaw(Implementation):
    """(b) what most people write: default pool, transaction, set_config, query.

    Reads: 5 round trips (BEGIN, set_config, SELECT, COMMIT, the pool's
    RESET ALL on release). Put: 6 (BEGIN, set_config, SELECT .. FOR UPDATE,
    UPDATE, COMMIT, reset).
    """

    key, label = "b", "naive raw asyncpg"

    def __init__(self, url: str, ring: KeyRing, users: list[str]) -> None:
        self.url, self.ring, self.users = url, ring, users
        self.pool: asyncpg.Pool | None = None

    async def start(self) -> None:
        self.pool = await asyncpg.create_pool(self.url, **raw_pool_options())

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()

    async def get_one(self, user_id: str) -> Any:
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                await conn.execute(_SET_USER, user_id)
                row = await conn.fetchrow(_SELECT_ONE, user_id, W1_TYPE)
        if row is None or not _usable(row, utc_now()):
            raise LookupError(W1_TYPE)
        return open_row(self.ring, row, user_id)

    async def list_all(self, user_id: str) -> Any:
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                await conn.execute(_SET_USER, user_id)
                rows = await conn.fetch(_SELECT_ALL, user_id)
        now = utc_now()
        return [open_row(self.ring, row, user_id) for row in rows if _usable(row, now)]

    async def put_one(self, user_id: str, api_key: str, secret_key: str) -> Any:
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                await conn.execute(_SET_USER, user_id)
                row = await conn.fetchrow(_LOCK_ONE, user_id, W1_TYPE)
                if row is not None:
                    row_id = row["id"]
                    api, secret = seal_row(self.ring, row, api_key, secret_key)
                    await conn.execute(_UPDATE, row_id, user_id, api, secret)
                else:
                    account_id = await conn.fetchval(_ACCOUNT_ID + " FOR NO KEY UPDATE", user_id)
                    row_id = uuid.uuid4()
                    api, secret = seal_credential(self.ring, str(row_id), user_id, str(account_id),
                                                  W1_TYPE, api_key, secret_key)
                    await conn.execute(_INSERT, row_id, account_id, user_id, W1_TYPE, api, secret)
        return row_id


async def _no_reset(connection: asyncpg.Connection) -> None:
    """Safe only because every setting made here is transaction-local."""


class OneRoundTripRaw(Implementation):
    """(c) the floor: scoped SQL function (set_config then query) in one statement.

    Reads: 1 round trip; pool reset is a no-op. Put (W3): the two-round-trip
    floor. The envelopes are bound to the row's id, account and type, so the
    client must know them before it encrypts: round trip 1 is the scoped read
    (as W1); round trip 2 is BEGIN; set_config; UPDATE; COMMIT as one
    simple-protocol message with literals. The UPDATE matches the id,
    account and type read, and raises division_by_zero if it matched
    nothing, so a row deleted or changed in between is noticed, never
    overwritten with envelopes bound to something else. What asyncpg cannot
    do in one round trip: BEGIN + set_config + a locking SELECT that returns
    the row (a simple-protocol message returns no rows, and an
    extended-protocol statement cannot carry BEGIN); so a lock held from
    the read to the write costs a third round trip, and this floor takes
    the optimistic check instead. Replaces only (W3 replaces).
    """

    key, label = "c", "one-round-trip raw asyncpg"

    def __init__(self, url: str, ring: KeyRing, users: list[str]) -> None:
        self.url, self.ring, self.users = url, ring, users
        self.pool: asyncpg.Pool | None = None

    async def start(self) -> None:
        self.pool = await asyncpg.create_pool(self.url, reset=_no_reset, **raw_pool_options())

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()

    async def get_one(self, user_id: str) -> Any:
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(_SCOPED_ONE, user_id, W1_TYPE)
        if row is None or not _usable(row, utc_now()):
            raise LookupError(W1_TYPE)
        return open_row(self.ring, row, user_id)

    async def list_all(self, user_id: str) -> Any:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(_SCOPED_ALL, user_id)
        now = utc_now()
        return [open_row(self.ring, row, user_id) for row in rows if _usable(row, now)]

    async def put_one(self, user_id: str, api_key: str, secret_key: str) -> Any:
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(_SCOPED_ONE, user_id, W1_TYPE)
            if row is None:
                raise LookupError(f"{W1_TYPE} (the floor only replaces existing rows)")
            row_id, account_id = str(row["id"]), str(row["user_account_id"])
            api, secret = seal_row(self.ring, row, api_key, secret_key)
            uid = _sql_literal(user_id)
            # Envelopes are [A-Za-z0-9_.-] only and the ids are UUIDs: safe literals.
            await conn.execute(
                "BEGIN; "
                f"SELECT pg_catalog.set_config('{CURRENT_USER_SETTING}', {uid}, true); "
                f"WITH written AS (UPDATE {CREDENTIALS_TABLE} SET api_key = '{api}', "
                f"secret_key = '{secret}', expires_at = NULL, is_active = true "
                f"WHERE id = '{row_id}' AND user_id = {uid} AND user_account_id = '{account_id}' "
                f"AND credential_type = {_sql_literal(W1_TYPE)} RETURNING 1) "
                "SELECT 1 / count(*) FROM written; "
                "COMMIT"
            )
        return row_id
