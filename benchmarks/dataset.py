"""Users with real envelopes, bulk-loaded with COPY.

Every user gets a Better Auth "user" row, an account and one credential per
type in CREDENTIAL_TYPES, each secret sealed by the package's KeyRing with
the package's binding (see sealing.py); row ids are made here, before
encryption, exactly as ``put_credential`` does.

Users are split by index so that no workload disturbs another's data:

* ``i % 10 == SQLALCHEMY_SLOT``: the SQLAlchemy baseline's users. A
  TypeDecorator sees only the value, so its AAD can bind table and column
  but not row or user; their envelopes are sealed that way or the
  baseline could not read them.
* ``i % 10 == MAINTENANCE_SLOT``: the pool W4/W5 (rotation,
  encrypt_plaintext) draw their rows from.
* everyone else: the package and the two raw asyncpg baselines.

The "user" rows go in as the table owner, the way Better Auth writes them
(the operator role may only read "user"); accounts and credentials go in as
the operator role, whose BYPASSRLS lets COPY through row-level security.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import asyncpg

from benchmarks.sealing import CREDENTIALS_TABLE, seal_column_only, seal_credential
from orchestrator_db.crypto.keyring import KeyRing

CREDENTIAL_TYPES = ("alpaca", "polygon")
SQLALCHEMY_SLOT = 9
MAINTENANCE_SLOT = 8
_CHUNK_USERS = 10_000


def user_id_for(index: int) -> str:
    # A scattered prefix, so ids arrive in the index in random order as
    # Better Auth's random ids would, and a unique suffix.
    return f"{(index * 2654435761) % 4294967296:08x}-{index:07d}"


def random_api_key() -> str:
    return "PK" + secrets.token_hex(9).upper()


def random_secret_key() -> str:
    return secrets.token_urlsafe(30)


@dataclass
class Dataset:
    """Which user ids exist, by purpose."""

    users: int = 0
    main_users: list[str] = field(default_factory=list)
    sqlalchemy_users: list[str] = field(default_factory=list)
    maintenance_users: list[str] = field(default_factory=list)

    @property
    def credentials(self) -> int:
        return self.users * len(CREDENTIAL_TYPES)

    def add(self, index: int) -> None:
        uid = user_id_for(index)
        slot = index % 10
        if slot == SQLALCHEMY_SLOT:
            self.sqlalchemy_users.append(uid)
        elif slot == MAINTENANCE_SLOT:
            self.maintenance_users.append(uid)
        else:
            self.main_users.append(uid)


@dataclass
class _Chunk:
    users: list[tuple] = field(default_factory=list)
    accounts: list[tuple] = field(default_factory=list)
    credentials: list[tuple] = field(default_factory=list)


def _make_chunk(ring: KeyRing, start: int, stop: int) -> _Chunk:
    chunk = _Chunk()
    urandom = os.urandom
    for index in range(start, stop):
        uid = user_id_for(index)
        chunk.users.append((uid, f"Bench User {index}", f"{uid}@bench.example", True))
        account_id = uuid.UUID(bytes=urandom(16), version=4)
        chunk.accounts.append((account_id, uid, "Paper Account"))
        for credential_type in CREDENTIAL_TYPES:
            row_id = uuid.UUID(bytes=urandom(16), version=4)
            if index % 10 == SQLALCHEMY_SLOT:
                api = seal_column_only(ring, random_api_key(), "api_key")
                secret = seal_column_only(ring, random_secret_key(), "secret_key")
            else:
                api, secret = seal_credential(
                    ring, str(row_id), uid, str(account_id), credential_type,
                    random_api_key(), random_secret_key(),
                )
            chunk.credentials.append(
                (row_id, account_id, uid, credential_type, api, secret)
            )
    return chunk


def _chunks(start: int, stop: int) -> Iterator[tuple[int, int]]:
    for low in range(start, stop, _CHUNK_USERS):
        yield low, min(low + _CHUNK_USERS, stop)


async def _copy(owner: asyncpg.Connection, operator: asyncpg.Connection, chunk: _Chunk) -> None:
    await owner.copy_records_to_table(
        "user", records=chunk.users, columns=["id", "name", "email", "emailVerified"]
    )
    await operator.copy_records_to_table(
        "user_accounts", records=chunk.accounts, columns=["id", "user_id", "account_name"]
    )
    await operator.copy_records_to_table(
        CREDENTIALS_TABLE,
        records=chunk.credentials,
        columns=["id", "user_account_id", "user_id", "credential_type", "api_key", "secret_key"],
    )


async def load_users(
    owner_url: str,
    operator_url: str,
    ring: KeyRing,
    dataset: Dataset,
    total_users: int,
    log=print,
) -> float:
    """Grow the dataset to ``total_users``; returns seconds taken.

    The next chunk is sealed on a worker thread while the previous one is
    copied, so the server and the encryption overlap.
    """
    start = dataset.users
    if total_users <= start:
        return 0.0
    began = time.perf_counter()
    owner = await asyncpg.connect(owner_url)
    operator = await asyncpg.connect(operator_url)
    try:
        pending: asyncio.Future | None = None
        ranges = list(_chunks(start, total_users))
        for number, (low, high) in enumerate(ranges):
            making = asyncio.ensure_future(asyncio.to_thread(_make_chunk, ring, low, high))
            if pending is not None:
                await pending
            chunk = await making
            pending = asyncio.ensure_future(_copy(owner, operator, chunk))
            for index in range(low, high):
                dataset.add(index)
            if number % 10 == 9:
                log(f"  loaded {high:,} / {total_users:,} users")
        if pending is not None:
            await pending
        dataset.users = total_users
        log("  vacuum analyze ...")
        for table in ('"user"', "user_accounts", CREDENTIALS_TABLE):
            await owner.execute(f"VACUUM (ANALYZE) {table}")
    finally:
        await owner.close()
        await operator.close()
    return time.perf_counter() - began
