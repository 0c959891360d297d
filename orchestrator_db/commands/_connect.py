"""Shared plumbing for commands: one asyncpg connection from DATABASE_URL."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import asyncpg

from orchestrator_db.errors import OrchestratorDBError
from orchestrator_db.settings import database_settings

T = TypeVar("T")


async def connect() -> asyncpg.Connection:
    settings = database_settings()
    return await asyncpg.connect(
        dsn=settings.url, statement_cache_size=settings.statement_cache_size
    )


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a command body; our own errors end the process with their message, not a traceback."""
    try:
        return asyncio.run(main())
    except OrchestratorDBError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
