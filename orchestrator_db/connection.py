"""A pooled connection as a scope uses it: lazy transaction, typed failures.

A scope's transaction (and its RLS setting) begins on the first write; reads
before that run as one statement through a scoped function. Every failure of
the connection itself surfaces as ConnectionLost, and a pool that stays full
as PoolTimeout, and every error the server raises as a typed project error
(:func:`database_error`), so no raw driver error escapes a scope.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg
from asyncpg.exceptions._base import DataError as ArgumentError
from piccolo.engine.postgres import PostgresEngine

from orchestrator_db.errors import (
    ConnectionLost,
    ConstraintViolation,
    DatabaseError,
    PoolTimeout,
    ScopeError,
    TransactionConflict,
)
from orchestrator_db.settings import CURRENT_USER_SETTING, database_settings

logger = logging.getLogger(__name__)


def _sql_literal(text: str) -> str:
    # An E'' literal means the same whatever standard_conforming_strings says.
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


# What a lost, refused or terminated connection surfaces as from asyncpg.
CONNECTION_FAILURES = (
    asyncpg.PostgresConnectionError,  # connection does not exist, failure
    asyncpg.exceptions.OperatorInterventionError,  # terminated, shutting down
    asyncpg.InterfaceError,  # connection is closed
    asyncpg.InternalClientError,  # terminated while idle in the pool
    OSError,  # refused, reset
)


def connection_lost(error: BaseException) -> ConnectionLost:
    return ConnectionLost(
        f"lost the database connection ({type(error).__name__}); nothing of "
        "this scope was committed unless the loss came during COMMIT. Retry "
        "the scope; if it persists, check the server"
    )


# SQLSTATE classes: 23 integrity constraint violation; 40 transaction
# rollback (40001 serialization failure, 40P01 deadlock).
_CONFLICT_STATES = ("40001", "40P01")


def database_error(error: Exception) -> ConnectionLost | DatabaseError:
    """The typed error for anything asyncpg raises on a statement.

    The driver's message is dropped: it can quote a value (a DETAIL line
    names a conflicting key, an encoding error shows the argument).
    """
    if isinstance(error, asyncpg.QueryCanceledError):  # 57014: in class 57, but not a loss
        return DatabaseError(
            "the statement was cancelled (a statement timeout or a cancel request); "
            "nothing of this scope was committed",
            sqlstate=error.sqlstate,
        )
    if isinstance(error, CONNECTION_FAILURES) and not isinstance(error, ArgumentError):
        return connection_lost(error)
    sqlstate = getattr(error, "sqlstate", None)
    constraint = getattr(error, "constraint_name", None)
    name = type(error).__name__
    if sqlstate in _CONFLICT_STATES or isinstance(
        error, (asyncpg.SerializationError, asyncpg.DeadlockDetectedError)
    ):
        return TransactionConflict(
            f"the database gave up on this transaction ({name}, SQLSTATE {sqlstate}); "
            "nothing was committed: retry the scope",
            sqlstate=sqlstate,
        )
    if sqlstate is not None and sqlstate.startswith("23"):
        return ConstraintViolation(
            f"the database refused the write: {name} on {constraint or 'a constraint'} "
            f"(SQLSTATE {sqlstate})",
            sqlstate=sqlstate,
            constraint=constraint,
        )
    return DatabaseError(
        f"the database refused the statement: {name} (SQLSTATE {sqlstate})",
        sqlstate=sqlstate,
        constraint=constraint,
    )


#: What database_error translates: the server's errors, the driver's
#: argument-encoding errors (an InterfaceError, not the server's DataError),
#: and lost connections.
DRIVER_ERRORS = (asyncpg.PostgresError, *CONNECTION_FAILURES)


def chained(error: BaseException) -> BaseException | None:
    """Keep a lost connection's cause for debugging; drop a server error, which may quote values."""
    if isinstance(error, CONNECTION_FAILURES) and not isinstance(
        error, (ArgumentError, asyncpg.QueryCanceledError)
    ):
        return error
    return None


def fetcher(raw: Any) -> Any:
    """``raw.fetch`` raising the project's typed errors, for a caller's own transaction."""

    async def fetch(sql: str, *args: Any) -> list[asyncpg.Record]:
        try:
            return await raw.fetch(sql, *args)
        except DRIVER_ERRORS as error:
            raise database_error(error) from chained(error)

    return fetch


class ScopeConnection:
    """A pooled connection whose transaction (and RLS setting) begins on first write."""

    __slots__ = ("raw", "user_id", "began", "owner_task")

    def __init__(self, raw: Any, user_id: str, owner_task: object) -> None:
        self.raw = raw
        self.user_id = user_id
        self.began = False
        self.owner_task = owner_task

    def _check_task(self) -> None:
        if asyncio.current_task() is not self.owner_task:
            raise ScopeError(
                "a user_scope was used from another asyncio task; open one scope per task"
            )

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        try:
            return await self.raw.fetch(sql, *args)
        except DRIVER_ERRORS as error:
            raise database_error(error) from chained(error)

    async def _execute(self, sql: str) -> None:
        try:
            await self.raw.execute(sql)
        except DRIVER_ERRORS as error:
            raise database_error(error) from chained(error)

    async def begin(self) -> None:
        self._check_task()
        if not self.began:
            # Built here, not per scope: most scopes only read, and never begin.
            await self._execute(
                "BEGIN; SELECT pg_catalog.set_config("
                f"'{CURRENT_USER_SETTING}', {_sql_literal(self.user_id)}, true)"
            )
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

    async def fetch_alone(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """One statement as its own transaction; only before the scope has begun one."""
        self._check_task()
        if self.began:
            raise ScopeError("a statement of its own cannot run inside the scope's transaction")
        return await self._fetch(sql, *args)

    async def finish(self, commit: bool) -> None:
        if not self.began:
            return
        self.began = False
        await self._execute("COMMIT" if commit else "ROLLBACK")


def _connected_one_is_free(pool: Any) -> bool:
    """Whether the pool's next acquire hands over a connected connection at once.

    Then the acquire cannot wait, and needs no timer: a timer per acquire
    costs a TimerHandle and heap pushes among all the cancelled ones on
    every scope (issue 14's profile). asyncpg keeps its free connection
    holders in an asyncio.LifoQueue (``_queue``), and the next acquire
    takes the last one; if that one still has to connect, or asyncpg
    changes these internals, the acquire takes the bounded path instead.
    """
    free = getattr(getattr(pool, "_queue", None), "_queue", None)
    if not free:
        return False
    holder = free[-1]
    is_connected = getattr(holder, "is_connected", None)
    # A holder from before expire_connections() reconnects on acquire.
    current = getattr(holder, "_generation", None) == getattr(pool, "_generation", object())
    return bool(current and is_connected is not None and is_connected())


async def acquire(engine: PostgresEngine) -> tuple[Any, bool]:
    """A connection from the pool (bounded wait), or a new one if no pool runs."""
    if engine.pool is None:
        try:
            return await engine.get_new_connection(), False
        except DRIVER_ERRORS as error:
            raise database_error(error) from chained(error)
    pool = engine.pool
    if _connected_one_is_free(pool):
        try:
            return await pool.acquire(), True
        except DRIVER_ERRORS as error:  # e.g. a replaced connection refused its login
            raise database_error(error) from chained(error)
    timeout = database_settings().pool_acquire_timeout
    try:
        # asyncio.timeout, not acquire(timeout=): that one adds wait_for's
        # timers and bookkeeping to every acquire.
        async with asyncio.timeout(timeout):
            return await pool.acquire(), True
    except TimeoutError:  # before OSError: TimeoutError is one
        raise PoolTimeout(
            f"no database connection became free within {timeout:g}s "
            f"(pool max_size {pool.get_max_size()}); raise "
            "ORCHESTRATOR_DB_POOL_MAX_SIZE or ORCHESTRATOR_DB_POOL_TIMEOUT, "
            "or hold scopes for less time"
        ) from None
    except DRIVER_ERRORS as error:  # e.g. a new pooled connection refused its login
        raise database_error(error) from chained(error)


async def release(engine: PostgresEngine, raw: Any, pooled: bool) -> None:
    """Return the connection; a failure here must not mask the scope's own outcome."""
    try:
        if pooled and engine.pool is not None:
            await engine.pool.release(raw)  # asyncpg terminates one it cannot reset
        else:
            await raw.close()
    except Exception:
        logger.warning("a connection could not be reset or closed cleanly; it was discarded")
        if not pooled:
            discard(raw)


def discard(raw: Any) -> None:
    """Close a connection whose state is unknown, so it is never reused."""
    try:
        raw.terminate()
    except asyncpg.InterfaceError:
        pass  # already lost: asyncpg closed it and took it back
