"""One operation for one user, as its own transaction: no scope to hold open.

- ``get_credential(user_id, type)`` and ``list_credentials(user_id)`` read in
  one round trip, with none of a scope's bookkeeping (no scope objects, no
  context variables): the path of every order's key lookup.
- ``put_credential(user_id, ...)`` stores one credential in two round trips
  (a lookup, then an upsert that commits by itself), where a put inside a
  ``user_scope`` takes four (BEGIN with the user setting, a locking lookup,
  the write, COMMIT) because it joins the scope's transaction.

Every guarantee of a scope holds: the user id is validated, row-level
security applies and a role that would bypass it is refused, every row's
owner is checked, and errors are typed. Called in a task that holds a
``user_scope`` of the same user, they run in that scope's transaction
instead (and a held scope of another user is a ScopeError).
"""

from __future__ import annotations

import datetime

import asyncpg

from orchestrator_db.connection import DRIVER_ERRORS, acquire, chained, database_error, release
from orchestrator_db.credentials import (
    CREDENTIAL_ONE_SHOT,
    CREDENTIALS_ONE_SHOT,
    check_credential_type,
    usable_credential,
    usable_credentials,
)
from orchestrator_db.engine import get_engine
from orchestrator_db.models import UserCredential
from orchestrator_db.scope import ensure_rls_applies, held_scope, user_scope, validate_user_id


async def get_credential(user_id: str, credential_type: str) -> UserCredential:
    """The active, unexpired credential of ``user_id``, decrypted; else CredentialNotFound."""
    validate_user_id(user_id)
    check_credential_type(credential_type)
    held = held_scope(user_id)
    if held is not None:
        return await held.get_credential(credential_type)
    rows = await _read(CREDENTIAL_ONE_SHOT, user_id, credential_type)
    return usable_credential(user_id, credential_type, rows)


async def list_credentials(user_id: str, include_inactive: bool = False) -> list[UserCredential]:
    """The usable credentials of ``user_id``; with include_inactive, also inactive and expired ones."""
    validate_user_id(user_id)
    held = held_scope(user_id)
    if held is not None:
        return await held.list_credentials(include_inactive)
    rows = await _read(CREDENTIALS_ONE_SHOT, user_id)
    return usable_credentials(user_id, rows, include_inactive)


async def put_credential(
    user_id: str,
    credential_type: str,
    api_key: str,
    secret_key: str,
    expires_at: datetime.datetime | None = None,
) -> UserCredential:
    """Insert or replace one credential of ``user_id``, committed when this returns."""
    validate_user_id(user_id)
    held = held_scope(user_id)
    if held is not None:  # write in the transaction of the scope this task holds
        return await held.put_credential(credential_type, api_key, secret_key, expires_at)
    async with user_scope(user_id) as scope:
        return await scope._put(credential_type, api_key, secret_key, expires_at, alone=True)


async def _read(sql: str, *args: str) -> list[asyncpg.Record]:
    """One scoped read (the function sets the user itself) on a pooled connection."""
    engine = get_engine()
    raw, pooled = await acquire(engine)
    try:
        await ensure_rls_applies(raw)
        try:
            return await raw.fetch(sql, *args)
        except DRIVER_ERRORS as error:
            raise database_error(error) from chained(error)
    finally:
        await release(engine, raw, pooled)
