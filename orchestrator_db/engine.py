"""Building the PostgresEngine and its connection pool from settings."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import asyncpg
from piccolo.engine.postgres import PostgresEngine

from orchestrator_db.crypto.providers import prepare_key_ring, uses_transit
from orchestrator_db.errors import ConfigurationError, ConnectionLost, OrchestratorDBError
from orchestrator_db.settings import database_settings, reload_settings


async def _keep_session_state(connection: asyncpg.Connection) -> None:
    """Skip asyncpg's RESET ALL round trip when a connection returns to the pool.

    Safe only because every setting this package makes is transaction-local
    (``set_config(..., true)``); asyncpg still rolls back any open
    transaction first. tests/test_tenancy.py enforces that invariant.
    """


def engine_config() -> dict[str, Any]:
    settings = database_settings()
    return {
        "dsn": settings.url,
        "statement_cache_size": settings.statement_cache_size,
    }


def pool_options() -> dict[str, Any]:
    settings = database_settings()
    return {
        "min_size": settings.pool_min_size,
        "max_size": settings.pool_max_size,
        "reset": _keep_session_state,
    }


class _Engine(PostgresEngine):
    """Piccolo's PostgresEngine, built without connecting.

    Piccolo's engine connects at construction to check the server version
    and, when it cannot, prints a warning and carries on. Here the engine is
    built lazily and connection failures surface once, as typed errors, at
    first use (:func:`open_pool`, a scope). PostgreSQL 13 or later is
    required by the migrations themselves (``gen_random_uuid()``).
    """

    async def check_version(self) -> None:
        return None


def _where(url: str) -> str:
    """``user@host:port/db`` of a URL, never its password."""
    try:
        parts = urlsplit(url)
        return f"{parts.username or ''}@{parts.hostname or ''}:{parts.port or 5432}{parts.path}"
    except ValueError:
        return "<unparseable URL>"


def connect_failure(
    error: BaseException, url: str | None = None, setting: str = "DATABASE_URL"
) -> OrchestratorDBError | None:
    """The typed error for a failure to open a connection with ``setting``'s URL, or None.

    A refused, unreachable or timed-out server is :class:`ConnectionLost`
    (retry later); a login the server refuses, or a database that does not
    exist, is a :class:`ConfigurationError`. Both name the setting to fix and
    never carry its password.
    """
    if url is None:
        try:
            url = database_settings().url
        except ConfigurationError:
            url = None
    at = f" ({_where(url)})" if url else ""
    if isinstance(error, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError):
        return ConfigurationError(
            f"the database refused the login in {setting}{at}: wrong user or password; "
            f"fix the user and password in {setting}"
        )
    if isinstance(error, asyncpg.InvalidCatalogNameError):
        return ConfigurationError(
            f"the database named in {setting}{at} does not exist; fix the database name in {setting}"
        )
    if isinstance(error, socket.gaierror):
        return ConfigurationError(f"the host in {setting}{at} cannot be resolved; fix {setting}")
    if isinstance(error, OSError | asyncpg.PostgresConnectionError | asyncpg.exceptions.CannotConnectNowError):
        reason = "timed out" if isinstance(error, TimeoutError) else "refused or unreachable"
        return ConnectionLost(
            f"cannot connect to the database in {setting}{at}: {reason}; start the server "
            f"or fix the host and port in {setting}"
        )
    return None


_engine: PostgresEngine | None = None


def get_engine() -> PostgresEngine:
    """The one engine, built at first use and bound to this package's tables.

    Binding the tables directly means an app that imports orchestrator_db
    needs no piccolo_conf.py of its own; piccolo_conf.py exposes this same
    engine to Piccolo's CLI.
    """
    global _engine
    if _engine is None:
        from orchestrator_db.tables import BetterAuthUser, UserAccounts, UserCredentials

        # No extensions: gen_random_uuid() is built in since PostgreSQL 13,
        # and the application role may not create extensions.
        _engine = _Engine(config=engine_config(), extensions=())
        for table in (BetterAuthUser, UserAccounts, UserCredentials):
            table._meta.db = _engine
    return _engine


def forget_engine() -> None:
    """Drop the engine and cached settings: the next use rebuilds from the environment.

    For tests and tools that switch databases inside one process; close the
    pool first.
    """
    global _engine
    _engine = None
    reload_settings()


async def open_pool() -> None:
    """Start the tables' connection pool; without one, every scope opens a new connection."""
    engine = get_engine()
    if engine.pool is None:
        try:
            await engine.start_connection_pool(**pool_options())
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            typed = connect_failure(error)
            if typed is None:
                raise
            raise typed from None
        if uses_transit() and engine.pool is not None:
            # Unwrap the KMS-wrapped data keys now, so a process that cannot
            # reach Transit fails at startup instead of at its first secret.
            try:
                async with engine.pool.acquire() as connection:
                    await prepare_key_ring(connection)
            except BaseException:
                await engine.close_connection_pool()
                raise


async def close_pool() -> None:
    engine = get_engine()
    if engine.pool is not None:
        await engine.close_connection_pool()


@asynccontextmanager
async def connected() -> AsyncIterator[None]:
    """The pool, open for the duration of the block (an app's lifespan)."""
    await open_pool()
    try:
        yield
    finally:
        await close_pool()
