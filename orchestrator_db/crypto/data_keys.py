"""The stored, Transit-wrapped data keys and their states (``orchestrator_db_data_keys``).

States follow Tink's keyset handling: a key is ``enabled`` (it decrypts;
the one primary key also encrypts), ``disabled`` (it decrypts nothing and
can be re-enabled) or ``destroyed`` (its wrapped form is deleted for good).
An operator disables a key first and runs the app: if nothing fails, nothing
needed it, and it can be destroyed. States are read when a process starts.

A new key is enabled but not primary (a *prepared* key): every process
learns it at its next start, and only then does ``activate_key`` make it the
one that encrypts, so no process meets an envelope under a key it lacks.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
from dataclasses import dataclass

import asyncpg

from orchestrator_db.crypto.keyring import KeyRing, generate_key_id
from orchestrator_db.crypto.transit import TransitClient
from orchestrator_db.errors import KeyConfigError

TABLE = "public.orchestrator_db_data_keys"
STATES = ("enabled", "disabled", "destroyed")


@dataclass(frozen=True)
class DataKey:
    """One stored data key as `key_status` shows it; never its wrapped or plain bytes."""

    key_id: str
    provider: str
    state: str
    is_primary: bool
    transit_key_name: str
    transit_key_version: int
    created_at: _dt.datetime


_COLUMNS = (
    "key_id, provider, state, is_primary, transit_key_name, transit_key_version, created_at"
)


async def list_data_keys(connection: asyncpg.Connection) -> list[DataKey]:
    """Every stored key, primary first, then newest first."""
    rows = await connection.fetch(
        f"SELECT {_COLUMNS} FROM {TABLE} ORDER BY is_primary DESC, created_at DESC, key_id"
    )
    return [DataKey(**dict(row)) for row in rows]


async def load_transit_ring(connection: asyncpg.Connection, transit: TransitClient) -> KeyRing:
    """The key ring of every enabled data key, unwrapped with one Transit call each.

    The primary key comes first, so it is the one that encrypts.
    """
    rows = await connection.fetch(
        f"SELECT key_id, wrapped_key, is_primary FROM {TABLE} "
        "WHERE state = 'enabled' ORDER BY is_primary DESC, created_at DESC, key_id"
    )
    if not rows:
        raise KeyConfigError(
            "no enabled data key in orchestrator_db_data_keys: run "
            "`piccolo orchestrator_db generate_key --provider=transit`, then `activate_key`"
        )
    if not rows[0]["is_primary"]:
        raise KeyConfigError(
            "no active data key: the primary key is disabled or none was activated; run "
            "`piccolo orchestrator_db activate_key --key_id=<an enabled key>`"
        )
    entries: list[tuple[str, bytes]] = []
    for row in rows:
        key = await asyncio.to_thread(transit.unwrap, row["wrapped_key"])
        entries.append((row["key_id"], key))
    return KeyRing(entries)


async def create_data_key(
    connection: asyncpg.Connection, transit: TransitClient, key_id: str | None = None
) -> str:
    """Generate a wrapped DEK in Transit and store it as a prepared (not primary) key."""
    key_id = generate_key_id(key_id)
    wrapped = await asyncio.to_thread(transit.generate_data_key)
    try:
        await connection.execute(
            f"INSERT INTO {TABLE} (key_id, wrapped_key, transit_key_name, transit_key_version) "
            "VALUES ($1, $2, $3, $4)",
            key_id,
            wrapped.ciphertext,
            transit.key_name,
            wrapped.key_version,
        )
    except asyncpg.UniqueViolationError:
        raise KeyConfigError(f"a data key with id {key_id!r} already exists") from None
    return key_id


async def activate_data_key(connection: asyncpg.Connection, key_id: str) -> None:
    """Make an enabled key the one that encrypts; the previous primary stays enabled."""
    async with connection.transaction():
        state = await _state_for_update(connection, key_id)
        if state != "enabled":
            raise KeyConfigError(f"data key {key_id!r} is {state}; only an enabled key can be active")
        await connection.execute(
            f"UPDATE {TABLE} SET is_primary = false, updated_at = now() WHERE is_primary"
        )
        await connection.execute(
            f"UPDATE {TABLE} SET is_primary = true, updated_at = now() WHERE key_id = $1", key_id
        )


async def set_data_key_state(
    connection: asyncpg.Connection, key_id: str, state: str, *, envelopes_left: int = 0
) -> None:
    """Move a key to ``state`` along enabled <-> disabled -> destroyed.

    The active key cannot be disabled (activate another first), and only a
    disabled key under which no envelope is left can be destroyed.
    """
    if state not in STATES:
        raise KeyConfigError(f"unknown key state {state!r}; use one of {', '.join(STATES)}")
    async with connection.transaction():
        current = await _state_for_update(connection, key_id)
        primary = await connection.fetchval(
            f"SELECT is_primary FROM {TABLE} WHERE key_id = $1", key_id
        )
        if current == "destroyed":
            raise KeyConfigError(f"data key {key_id!r} is destroyed; that cannot be undone")
        if state == "disabled" and primary:
            raise KeyConfigError(
                f"data key {key_id!r} is the active key: activate another key, rotate, "
                "then disable it"
            )
        if state == "destroyed":
            if current != "disabled":
                raise KeyConfigError(
                    f"disable data key {key_id!r} first, and run the app: destroying is only "
                    "for a key that nothing needed while disabled"
                )
            if envelopes_left:
                raise KeyConfigError(
                    f"{envelopes_left} stored secret(s) are still under data key {key_id!r}; "
                    "run rotate_keys first"
                )
        await connection.execute(
            f"UPDATE {TABLE} SET state = $2, updated_at = now(), "
            "wrapped_key = CASE WHEN $2 = 'destroyed' THEN NULL ELSE wrapped_key END "
            "WHERE key_id = $1",
            key_id,
            state,
        )


async def rewrap_data_keys(connection: asyncpg.Connection, transit: TransitClient) -> int:
    """Rewrap every stored DEK under the Transit key's latest version; no credential changes."""
    rows = await connection.fetch(
        f"SELECT key_id, wrapped_key FROM {TABLE} WHERE wrapped_key IS NOT NULL ORDER BY key_id"
    )
    for row in rows:
        rewrapped = await asyncio.to_thread(transit.rewrap, row["wrapped_key"])
        await connection.execute(
            f"UPDATE {TABLE} SET wrapped_key = $2, transit_key_version = $3, "
            "updated_at = now() WHERE key_id = $1 AND wrapped_key = $4",
            row["key_id"],
            rewrapped.ciphertext,
            rewrapped.key_version,
            row["wrapped_key"],
        )
    return len(rows)


async def _state_for_update(connection: asyncpg.Connection, key_id: str) -> str:
    state = await connection.fetchval(
        f"SELECT state FROM {TABLE} WHERE key_id = $1 FOR UPDATE", key_id
    )
    if state is None:
        raise KeyConfigError(f"no data key {key_id!r}; `key_status` lists them")
    return str(state)
