"""Building the PostgresEngine and its connection pool from settings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from piccolo.engine.postgres import PostgresEngine

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
        _engine = PostgresEngine(config=engine_config(), extensions=())
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
        await engine.start_connection_pool(**pool_options())


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
