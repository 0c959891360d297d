"""`make run`: find or start PostgreSQL, migrate, then run the main job.

With DATABASE_URL set, that server is used (and must answer). Without it an
embedded cluster is started in .local/ and a database named
``orchestrator`` is created in it on first run.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import asyncpg

from orchestrator_db.local_postgres import (
    DatabaseUnavailable,
    mask_password,
    resolve_server_url,
    with_database,
)
from orchestrator_db.settings import configured_database_url

ROOT = Path(__file__).resolve().parent.parent
LOCAL_DATABASE = "orchestrator"


async def _ensure_local_database(server_url: str) -> str:
    connection = await asyncpg.connect(server_url)
    try:
        if not await connection.fetchval(
            "SELECT true FROM pg_database WHERE datname = $1", LOCAL_DATABASE
        ):
            await connection.execute(f"CREATE DATABASE {LOCAL_DATABASE}")
    finally:
        await connection.close()
    return with_database(server_url, LOCAL_DATABASE)


def resolve_owner_url() -> str:
    """The URL migrations run with: DATABASE_URL, or the embedded cluster's database."""
    configured = configured_database_url()
    server_url = resolve_server_url(configured)
    if configured:
        return server_url
    return asyncio.run(_ensure_local_database(server_url))


def migrate(owner_url: str) -> None:
    piccolo = str(Path(sys.executable).with_name("piccolo"))
    env = {**os.environ, "DATABASE_URL": owner_url}
    subprocess.run([piccolo, "migrations", "forwards", "all"], cwd=ROOT, env=env, check=True)


async def _summary(owner_url: str) -> None:
    connection = await asyncpg.connect(owner_url)
    try:
        print(f"\ndatabase: {mask_password(owner_url)}")
        for table in ('"user"', "user_accounts", "user_credentials"):
            count = await connection.fetchval(f"SELECT count(*) FROM {table}")
            print(f"  {table:<18} {count} rows")
    finally:
        await connection.close()


def main() -> int:
    try:
        owner_url = resolve_owner_url()
    except DatabaseUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    migrate(owner_url)
    asyncio.run(_summary(owner_url))
    return 0


if __name__ == "__main__":
    sys.exit(main())
