"""Creating and dropping databases on a server (the tests' and benchmarks' throwaway ones)."""

from __future__ import annotations

import logging

import asyncpg

from orchestrator_db.devdb.cluster import CONNECT_TIMEOUT
from orchestrator_db.devdb.urls import check_identifier, database_of, mask_password, with_database

logger = logging.getLogger(__name__)


def _maintenance_url(server_url: str, avoid: str) -> str:
    """A URL on the same server that is not connected to ``avoid``."""
    return with_database(server_url, "postgres") if database_of(server_url) in ("", avoid) else server_url


async def create_database(server_url: str, name: str) -> str:
    """Create database ``name`` on ``server_url``'s server; return its URL
    (same credentials). Fails if it already exists."""
    check_identifier(name)
    conn = await asyncpg.connect(_maintenance_url(server_url, name), timeout=CONNECT_TIMEOUT)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    logger.info("created database %s on %s", name, mask_password(server_url))
    return with_database(server_url, name)


async def drop_database(server_url: str, name: str) -> None:
    """Drop database ``name`` if it exists, ending any sessions still using it."""
    check_identifier(name)
    conn = await asyncpg.connect(_maintenance_url(server_url, name), timeout=CONNECT_TIMEOUT)
    try:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
    logger.info("dropped database %s on %s", name, mask_password(server_url))
