"""Building the PostgresEngine and its connection pool from settings."""

from __future__ import annotations

from typing import Any

import asyncpg
from piccolo.engine.postgres import PostgresEngine

from orchestrator_db.settings import database_settings


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


def build_engine() -> PostgresEngine:
    # No extensions: gen_random_uuid() is built in since PostgreSQL 13, and
    # the application role may not create extensions.
    return PostgresEngine(config=engine_config(), extensions=())
