"""The per-user scope: one connection, one transaction, one RLS setting.

The transaction starts lazily. A scope whose first operation is a read runs
it through a scoped database function (set the user, then query) as one
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
import re
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from piccolo.engine.postgres import PostgresEngine

from orchestrator_db.checks import describe, inspect_deployment, rls_bypasses
from orchestrator_db.engine import get_engine
from orchestrator_db.errors import ConnectionLost, PoolTimeout, ScopeError
from orchestrator_db.models import USER_ID_MAX_LENGTH
from orchestrator_db.settings import CURRENT_USER_SETTING, database_settings
from orchestrator_db.store import UserScope

logger = logging.getLogger(__name__)

_active_scope: contextvars.ContextVar[UserScope | None] = contextvars.ContextVar(
    "orchestrator_db_active_scope", default=None
)

# Server connections already shown not to bypass RLS; checked once each.
_verified_connections: weakref.WeakSet = weakref.WeakSet()


_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")


def validate_user_id(user_id: object) -> str:
    """Refuse a bad id before the database is touched."""
    if not isinstance(user_id, str):
        raise TypeError(f"user_id must be a str, not {type(user_id).__name__}")
    if not user_id:
        raise ValueError("user_id must not be empty")
    if len(user_id) > USER_ID_MAX_LENGTH:
        raise ValueError(f"user_id must be at most {USER_ID_MAX_LENGTH} characters")
    if _CONTROL_CHARACTER.search(user_id):
        raise ValueError("user_id must not contain control characters")
    if not user_id.isascii():
        try:
            user_id.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("user_id must be valid Unicode (no lone surrogates)") from None
    return user_id


def _sql_literal(text: str) -> str:
    # An E'' literal means the same whatever standard_conforming_strings says.
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


# What a lost, refused or terminated connection surfaces as from asyncpg.
_CONNECTION_FAILURES = (
    asyncpg.PostgresConnectionError,  # connection does not exist, failure
    asyncpg.exceptions.OperatorInterventionError,  # terminated, shutting down
    asyncpg.InterfaceError,  # connection is closed
    asyncpg.InternalClientError,  # terminated while idle in the pool
    OSError,  # refused, reset
)


def _connection_lost(error: BaseException) -> ConnectionLost:
    return ConnectionLost(
        f"lost the database connection ({type(error).__name__}); nothing of "
        "this scope was committed unless the loss came during COMMIT. Retry "
        "the scope; if it persists, check the server"
    )


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

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        try:
            return await self.raw.fetch(sql, *args)
        except _CONNECTION_FAILURES as error:
            raise _connection_lost(error) from error

    async def _execute(self, sql: str) -> None:
        try:
            await self.raw.execute(sql)
        except _CONNECTION_FAILURES as error:
            raise _connection_lost(error) from error

    async def begin(self) -> None:
        self._check_task()
        if not self.began:
            await self._execute(self._begin_sql)
            self.began = True

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """Run inside the scope's transaction, beginning it if needed."""
        if not self.began:
            await self.begin()
        else:
            self._check_task()
        return await self._fetch(sql, *args)

    async def read(self, one_shot_sql: str, in_transaction_sql: str, *args: Any) -> list:
        """A read costs one round trip whether or not the transaction has begun."""
        self._check_task()
        if self.began:
            return await self._fetch(in_transaction_sql, *args)
        return await self._fetch(one_shot_sql, *args)

    async def finish(self, commit: bool) -> None:
        if not self.began:
            return
        self.began = False
        await self._execute("COMMIT" if commit else "ROLLBACK")


class _PiccoloTransaction:
    """Lets Piccolo queries run inside a scope, on its connection and transaction."""

    __slots__ = ("connection", "_parent")

    def __init__(self, connection: ScopeConnection) -> None:
        self.connection = connection
        self._parent = None


async def _acquire(engine: PostgresEngine) -> tuple[Any, bool]:
    """A connection from the pool (bounded wait), or a new one if no pool runs."""
    if engine.pool is None:
        try:
            return await engine.get_new_connection(), False
        except _CONNECTION_FAILURES as error:
            raise _connection_lost(error) from error
    timeout = database_settings().pool_acquire_timeout
    try:
        # asyncio.timeout, not acquire(timeout=): that one wraps every
        # acquire in wait_for and a new Task, tens of µs on the hot path.
        async with asyncio.timeout(timeout):
            return await engine.pool.acquire(), True
    except TimeoutError:  # before OSError: TimeoutError is one
        raise PoolTimeout(
            f"no database connection became free within {timeout:g}s "
            f"(pool max_size {engine.pool.get_max_size()}); raise "
            "ORCHESTRATOR_DB_POOL_MAX_SIZE or ORCHESTRATOR_DB_POOL_TIMEOUT, "
            "or hold scopes for less time"
        ) from None
    except _CONNECTION_FAILURES as error:
        raise _connection_lost(error) from error


async def _release(engine: PostgresEngine, raw: Any, pooled: bool) -> None:
    """Return the connection; a failure here must not mask the scope's own outcome."""
    try:
        if pooled:
            await engine.pool.release(raw)  # asyncpg terminates one it cannot reset
        else:
            await raw.close()
    except Exception:
        logger.warning("a connection could not be reset or closed cleanly; it was discarded")
        if not pooled:
            _discard(raw)


def _discard(raw: Any) -> None:
    """Close a connection whose state is unknown, so it is never reused."""
    try:
        raw.terminate()
    except asyncpg.InterfaceError:
        pass  # already lost: asyncpg closed it and took it back


def _server_connection(raw: Any) -> Any:
    return getattr(raw, "_con", None) or raw


async def _refuse_rls_bypass(raw: Any) -> None:
    server_connection = _server_connection(raw)
    if server_connection in _verified_connections:
        return
    try:
        findings = await inspect_deployment(raw)
    except _CONNECTION_FAILURES as error:
        raise _connection_lost(error) from error
    bypasses = rls_bypasses(findings)
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
            except Exception:  # the connection is gone; the server rolls back
                logger.warning("rollback failed; the connection will be discarded")
                _discard(raw)
            raise
        try:
            await connection.finish(commit=True)
        except BaseException:
            _discard(raw)  # after a failed COMMIT its state is unknown
            raise
    finally:
        engine.current_transaction.reset(piccolo_token)
        _active_scope.reset(scope_token)
        await _release(engine, raw, pooled)


def current_scope() -> UserScope | None:
    """The scope active in this task, if any."""
    return _active_scope.get()
