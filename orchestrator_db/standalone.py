"""One operation for one user, as its own transaction: no scope to hold open.

``put_credential(user_id, ...)`` is the way to store one credential: two
round trips (a lookup, then an upsert that commits by itself), where a put
inside a ``user_scope`` takes four (BEGIN with the user setting, a locking
lookup, the write, COMMIT) because it joins the scope's transaction.
``get_credential(user_id, ...)`` reads in one round trip, like a scope's
first read.

Each opens a ``user_scope``, so every guarantee of a scope holds: the user
id is validated, row-level security applies and a role that would bypass
it is refused, every row's owner is checked, and errors are typed. Called
inside a ``user_scope`` of the same user in the same task, they join that
scope's transaction instead (and a scope of another user is a ScopeError).
"""

from __future__ import annotations

import datetime

from orchestrator_db.models import UserCredential
from orchestrator_db.scope import current_scope, user_scope


async def put_credential(
    user_id: str,
    credential_type: str,
    api_key: str,
    secret_key: str,
    expires_at: datetime.datetime | None = None,
) -> UserCredential:
    """Insert or replace one credential of ``user_id``, committed when this returns."""
    outer = current_scope()
    async with user_scope(user_id) as scope:
        if scope is outer:  # joined a scope this task holds: write in its transaction
            return await scope.put_credential(credential_type, api_key, secret_key, expires_at)
        return await scope._put_alone(credential_type, api_key, secret_key, expires_at)


async def get_credential(user_id: str, credential_type: str) -> UserCredential:
    """The active, unexpired credential of ``user_id``, decrypted; else CredentialNotFound."""
    async with user_scope(user_id) as scope:
        return await scope.get_credential(credential_type)
