"""Shared plumbing for commands: one asyncpg connection from DATABASE_URL."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import asyncpg

from orchestrator_db.engine import connect_failure
from orchestrator_db.errors import OrchestratorDBError
from orchestrator_db.settings import database_settings

T = TypeVar("T")


async def connect() -> asyncpg.Connection:
    """A connection as DATABASE_URL says; a refused login or server is a typed error naming it."""
    settings = database_settings()
    try:
        return await asyncpg.connect(
            dsn=settings.url, statement_cache_size=settings.statement_cache_size
        )
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        typed = connect_failure(error, settings.url)
        if typed is None:
            raise
        raise typed from None


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a command body; our own errors end the process with their message, not a traceback."""
    try:
        return asyncio.run(main())
    except OrchestratorDBError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
