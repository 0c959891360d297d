"""The benchmark's own database: created, migrated and provisioned like production.

Migrations run as the server's (super)user, which owns the tables; the
application role (RLS applies) and the operator role (BYPASSRLS) are made by
the package's own ``create_roles`` command, with random passwords and names
unique to this run, and dropped again at the end.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from orchestrator_db.local_postgres import create_database, drop_database, with_credentials

ROOT = Path(__file__).resolve().parent.parent
PICCOLO = str(Path(sys.executable).with_name("piccolo"))


@dataclass(frozen=True)
class BenchDatabase:
    server_url: str
    name: str
    owner_url: str  # the server's user: owns the tables, inserts Better Auth users
    app_role: str
    app_url: str  # NOSUPERUSER NOBYPASSRLS, not the owner: RLS applies
    operator_role: str
    operator_url: str  # BYPASSRLS: bulk loads, rotation


def run_piccolo(database_url: str, *args: str) -> None:
    """The real `piccolo` CLI, as an operator would run it."""
    env = {**os.environ, "DATABASE_URL": database_url}
    result = subprocess.run(
        [PICCOLO, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"piccolo {args[0]} {args[1] if len(args) > 1 else ''} failed "
            f"({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )


async def create_bench_database(server_url: str) -> BenchDatabase:
    suffix = secrets.token_hex(4)
    name = f"odb_bench_{suffix}"
    owner_url = await create_database(server_url, name)
    app_role, operator_role = f"odb_bench_app_{suffix}", f"odb_bench_operator_{suffix}"
    app_password, operator_password = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    db = BenchDatabase(
        server_url=server_url,
        name=name,
        owner_url=owner_url,
        app_role=app_role,
        app_url=with_credentials(owner_url, app_role, app_password),
        operator_role=operator_role,
        operator_url=with_credentials(owner_url, operator_role, operator_password),
    )
    try:
        run_piccolo(owner_url, "migrations", "forwards", "all")
        run_piccolo(
            owner_url,
            "orchestrator_db",
            "create_roles",
            f"--app_role={app_role}",
            f"--operator_role={operator_role}",
            f"--app_password={app_password}",
            f"--operator_password={operator_password}",
        )
    except BaseException:
        await drop_bench_database(db)
        raise
    return db


async def drop_bench_database(db: BenchDatabase) -> None:
    await drop_database(db.server_url, db.name)
    connection = await asyncpg.connect(db.server_url)
    try:
        for role in (db.app_role, db.operator_role):
            await connection.execute(f'DROP ROLE IF EXISTS "{role}"')
    finally:
        await connection.close()
