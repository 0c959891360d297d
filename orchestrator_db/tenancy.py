"""The per-user scope: one connection, one transaction, one RLS setting.

The transaction starts lazily. A scope whose first operation is a read runs
it through a scoped SQL function (set the user, then query) as one
statement: one round trip, no BEGIN or COMMIT. The first write begins the
transaction with the setting in the same round trip, and everything after
it shares that transaction, which commits on exit and rolls back on error.
The setting is always transaction-local (``set_config(..., true)``), so it
never outlives the statement or transaction that made it; that is what lets
the pool skip its reset query (see engine.py).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from piccolo.engine.postgres import PostgresEngine

from orchestrator_db.checks import describe, inspect_deployment, rls_bypasses
from orchestrator_db.engine import get_engine
from orchestrator_db.errors import PoolTimeout, ScopeError
from orchestrator_db.models import USER_ID_MAX_LENGTH
from orchestrator_db.settings import CURRENT_USER_SETTING, database_settings
from orchestrator_db.store import UserScope

logger = logging.getLogger(__name__)

_active_scope: contextvars.ContextVar[UserScope | None] = contextvars.ContextVar(
    "orchestrator_db_active_scope", default=None
)

# Server connections already shown not to bypass RLS; checked once each.
_verified_connections: weakref.WeakSet = weakref.WeakSet()


def validate_user_id(user_id: object) -> str:
    """Refuse a bad id before the database is touched."""
    if not isinstance(user_id, str):
        raise TypeError(f"user_id must be a str, not {type(user_id).__name__}")
    if not user_id:
        raise ValueError("user_id must not be empty")
    if len(user_id) > USER_ID_MAX_LENGTH:
        raise ValueError(f"user_id must be at most {USER_ID_MAX_LENGTH} characters")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in user_id):
        raise ValueError("user_id must not contain control characters")
    return user_id


def _sql_literal(text: str) -> str:
    # An E'' literal means the same whatever standard_conforming_strings says.
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


class ScopeConnection:
    """A pooled connection whose transaction (and RLS setting) begins on first write."""

    __slots__ = ("raw", "_begin_sql", "began", "owner_task")

    def __init__(self, raw: Any, user_id: str) -> None:
        self.raw = raw
        self.began = False
        self.owner_task = asyncio.current_task()
        self._begin_sql = (
            "BEGIN; SELECT pg_catalog.set_config("
            f"'{CURRENT_USER_SETTING}', {_sql_literal(user_id)}, true)"
        )

    def _check_task(self) -> None:
        if asyncio.current_task() is not self.owner_task:
            raise ScopeError(
                "a user_scope was used from another asyncio task; open one scope per task"
            )

    async def begin(self) -> None:
        self._check_task()
        if not self.began:
            await self.raw.execute(self._begin_sql)
            self.began = True

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """Run inside the scope's transaction, beginning it if needed."""
        if not self.began:
            await self.begin()
        else:
            self._check_task()
        return await self.raw.fetch(sql, *args)

    async def read(self, one_shot_sql: str, in_transaction_sql: str, *args: Any) -> list:
        """A read costs one round trip whether or not the transaction has begun."""
        self._check_task()
        if self.began:
            return await self.raw.fetch(in_transaction_sql, *args)
        return await self.raw.fetch(one_shot_sql, *args)

    async def finish(self, commit: bool) -> None:
        if not self.began:
            return
        self.began = False
        await self.raw.execute("COMMIT" if commit else "ROLLBACK")


class _PiccoloTransaction:
    """Lets Piccolo queries run inside a scope, on its connection and transaction."""

    __slots__ = ("connection", "_parent")

    def __init__(self, connection: ScopeConnection) -> None:
        self.connection = connection
        self._parent = None


async def _acquire(engine: PostgresEngine) -> tuple[Any, bool]:
    """A connection from the pool (bounded wait), or a new one if no pool runs."""
    if engine.pool is None:
        return await engine.get_new_connection(), False
    timeout = database_settings().pool_acquire_timeout
    try:
        return await engine.pool.acquire(timeout=timeout), True
    except asyncio.TimeoutError:
        raise PoolTimeout(
            f"no database connection became free within {timeout:g}s "
            f"(pool max_size {engine.pool.get_max_size()}); raise "
            "ORCHESTRATOR_DB_POOL_MAX_SIZE or ORCHESTRATOR_DB_POOL_TIMEOUT, "
            "or hold scopes for less time"
        ) from None


async def _release(engine: PostgresEngine, raw: Any, pooled: bool) -> None:
    if pooled:
        await engine.pool.release(raw)
    else:
        await raw.close()


def _server_connection(raw: Any) -> Any:
    return getattr(raw, "_con", None) or raw


async def _refuse_rls_bypass(raw: Any) -> None:
    server_connection = _server_connection(raw)
    if server_connection in _verified_connections:
        return
    bypasses = rls_bypasses(await inspect_deployment(raw))
    if bypasses:
        raise ScopeError(
            "refusing to run a user scope: row-level security would not "
            f"protect this connection. {describe(bypasses)}. "
            "(Tests of the bypass itself may pass allow_rls_bypass=True.)"
        )
    _verified_connections.add(server_connection)


@asynccontextmanager
async def user_scope(
    user_id: str, *, allow_rls_bypass: bool = False
) -> AsyncIterator[UserScope]:
    """Everything inside runs as ``user_id``, in one transaction, under RLS.

    ``allow_rls_bypass=True`` skips the refusal to run as a superuser,
    BYPASSRLS role or unforced owner; it exists only for tests of that
    refusal and of the policies themselves, never for production code.
    """
    validate_user_id(user_id)
    active = _active_scope.get()
    # A task started inside a scope inherits the context variable, but not
    # the right to use that scope's connection: it opens its own.
    if active is not None and active.owner_task is asyncio.current_task():
        if active.user_id != user_id:
            raise ScopeError(
                "a user_scope for another user is already active in this task; "
                "finish it before opening a scope for a different user"
            )
        yield active
        return

    engine = get_engine()
    raw, pooled = await _acquire(engine)
    connection = ScopeConnection(raw, user_id)
    scope = UserScope(user_id, connection)
    scope_token = _active_scope.set(scope)
    piccolo_token = engine.current_transaction.set(_PiccoloTransaction(connection))
    try:
        if not allow_rls_bypass:
            await _refuse_rls_bypass(raw)
        try:
            yield scope
        except BaseException:
            try:
                await connection.finish(commit=False)
            except Exception:  # the connection may be gone; the server rolls back
                logger.warning("rollback failed; the connection will be discarded")
                raw.terminate()  # else the pool's reset retries it and masks the error
            raise
        try:
            await connection.finish(commit=True)
        except BaseException:
            raw.terminate()  # a failed COMMIT leaves the connection in no known state
            raise
    finally:
        engine.current_transaction.reset(piccolo_token)
        _active_scope.reset(scope_token)
        await _release(engine, raw, pooled)


def current_scope() -> UserScope | None:
    """The scope active in this task, if any."""
    return _active_scope.get()
