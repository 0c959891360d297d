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
from typing import Any

from orchestrator_db.checks import describe, inspect_deployment, rls_bypasses
from orchestrator_db.connection import (
    DRIVER_ERRORS,
    ScopeConnection,
    acquire,
    database_error,
    discard,
    release,
)
from orchestrator_db.credentials import UserScope
from orchestrator_db.engine import get_engine
from orchestrator_db.errors import ScopeError
from orchestrator_db.models import USER_ID_MAX_LENGTH

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


class _PiccoloTransaction:
    """Lets Piccolo queries run inside a scope, on its connection and transaction."""

    __slots__ = ("connection", "_parent")

    def __init__(self, connection: ScopeConnection) -> None:
        self.connection = connection
        self._parent = None


def _server_connection(raw: Any) -> Any:
    return getattr(raw, "_con", None) or raw


async def ensure_rls_applies(raw: Any) -> None:
    """Refuse a connection on which row-level security would not apply (checked once each).

    A known connection costs a set lookup and no coroutine of its own: the
    check runs on every scope and standalone call.
    """
    server_connection = _server_connection(raw)
    if server_connection in _verified_connections:
        return
    try:
        findings = await inspect_deployment(raw)
    except DRIVER_ERRORS as error:
        raise database_error(error) from None
    bypasses = rls_bypasses(findings)
    if bypasses:
        raise ScopeError(
            "refusing to run a user scope: row-level security would not "
            f"protect this connection. {describe(bypasses)}. "
            "(Tests of the bypass itself may pass allow_rls_bypass=True.)"
        )
    _verified_connections.add(server_connection)


def held_scope(user_id: str) -> UserScope | None:
    """The scope this task holds for ``user_id``; None if it holds none.

    A task started inside a scope inherits the context variable, but not the
    right to use that scope's connection, so only the task that opened a
    scope holds it. Holding one for another user is a ScopeError.
    """
    active = _active_scope.get()
    if active is None or active.owner_task is not asyncio.current_task():
        return None
    if active.user_id != user_id:
        raise ScopeError(
            "a user_scope for another user is already active in this task; "
            "finish it before opening a scope for a different user"
        )
    return active


class user_scope:  # noqa: N801 - used as a function: ``async with user_scope(uid)``
    """Everything inside runs as ``user_id``, in one transaction, under RLS.

    ``async with user_scope(user_id) as scope:`` yields a :class:`UserScope`.
    The transaction commits when the block ends and rolls back if it
    raises. ``allow_rls_bypass=True`` skips the refusal to run as a
    superuser, BYPASSRLS role or unforced owner; it exists only for tests of
    that refusal and of the policies themselves, never for production code.

    A class rather than an ``@asynccontextmanager`` generator: it is entered
    on every credential lookup, and a generator costs several microseconds
    more per scope (issue 14's profile).
    """

    __slots__ = ("_user_id", "_allow_rls_bypass", "_entered", "_opened", "_tokens")

    def __init__(self, user_id: str, *, allow_rls_bypass: bool = False) -> None:
        validate_user_id(user_id)
        self._user_id = user_id
        self._allow_rls_bypass = allow_rls_bypass
        self._entered = False
        self._opened: tuple[Any, ScopeConnection, bool] | None = None
        self._tokens: tuple[Any, Any] | None = None

    async def __aenter__(self) -> UserScope:
        if self._entered:  # its state is one scope's: entering it twice would mix two
            raise ScopeError("this user_scope(...) was already entered; call user_scope again")
        self._entered = True
        user_id = self._user_id
        held = held_scope(user_id)
        if held is not None:
            return held  # the outer scope commits or rolls back
        task = asyncio.current_task()
        engine = get_engine()
        raw, pooled = await acquire(engine)
        connection = ScopeConnection(raw, user_id, task)
        scope = UserScope(user_id, connection)
        self._opened = (engine, connection, pooled)
        self._tokens = (
            _active_scope.set(scope),
            engine.current_transaction.set(
                _PiccoloTransaction(connection)  # type: ignore[arg-type]
            ),
        )
        if not self._allow_rls_bypass:
            try:
                await ensure_rls_applies(raw)
            except BaseException:
                await self._close()
                raise
        return scope

    async def __aexit__(self, error_type: Any, error: Any, traceback: Any) -> None:
        if self._opened is None:
            return  # a nested scope of the same user
        connection = self._opened[1]
        try:
            if error_type is not None:
                try:
                    await connection.finish(commit=False)
                except Exception:  # the connection is gone; the server rolls back
                    logger.warning("rollback failed; the connection will be discarded")
                    discard(connection.raw)
            else:
                try:
                    await connection.finish(commit=True)
                except BaseException:
                    discard(connection.raw)  # after a failed COMMIT its state is unknown
                    raise
        finally:
            await self._close()

    async def _close(self) -> None:
        assert self._opened is not None and self._tokens is not None
        engine, connection, pooled = self._opened
        scope_token, piccolo_token = self._tokens
        self._opened = self._tokens = None
        engine.current_transaction.reset(piccolo_token)
        _active_scope.reset(scope_token)
        await release(engine, connection.raw, pooled)


def current_scope() -> UserScope | None:
    """The scope active in this task, if any."""
    return _active_scope.get()
