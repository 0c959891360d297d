"""A migrated database with its two roles: the one recipe for tests, benchmarks and `make run`.

Provisioning runs the real ``piccolo`` CLI, exactly as an operator would:
``migrations forwards all`` as the table owner, then ``create_roles`` for the
application role (no superuser, no BYPASSRLS, not the owner: row-level
security applies) and the operator role (BYPASSRLS).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from orchestrator_db.devdb.databases import create_database, drop_database
from orchestrator_db.devdb.urls import with_credentials

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
PICCOLO = str(Path(sys.executable).with_name("piccolo"))


class PiccoloCommandFailed(RuntimeError):
    """A `piccolo` command ended non-zero; the message holds its output."""


def run_piccolo(
    database_url: str, *args: str, check: bool = True, timeout: float = 600, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run the real `piccolo` CLI against one database, as a user would."""
    environment = {**os.environ, **env, "DATABASE_URL": database_url}
    result = subprocess.run(
        [PICCOLO, *args],
        cwd=PROJECT_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise PiccoloCommandFailed(
            f"piccolo {' '.join(args[:2])} failed ({result.returncode}):\n"
            f"{result.stdout}\n{result.stderr}"
        )
    return result


@dataclass(frozen=True)
class ProvisionedDatabase:
    """A database and the URLs of its three roles."""

    server_url: str  # superuser, maintenance database
    name: str
    owner_url: str  # migrations ran as this role, which owns the tables
    app_role: str
    app_password: str = field(repr=False)
    operator_role: str
    operator_password: str = field(repr=False)

    @property
    def app_url(self) -> str:
        """NOSUPERUSER NOBYPASSRLS, not the owner: RLS applies."""
        return with_credentials(self.owner_url, self.app_role, self.app_password)

    @property
    def operator_url(self) -> str:
        """BYPASSRLS: the admin, rotation, bulk loads."""
        return with_credentials(self.owner_url, self.operator_role, self.operator_password)


def grant_roles(db: ProvisionedDatabase, owner_url: str | None = None) -> None:
    """Create or refresh the two roles and their grants with the real `create_roles`."""
    run_piccolo(
        owner_url or db.owner_url,
        "orchestrator_db",
        "create_roles",
        f"--app_role={db.app_role}",
        f"--operator_role={db.operator_role}",
        f"--app_password={db.app_password}",
        f"--operator_password={db.operator_password}",
    )


async def provision_database(server_url: str, prefix: str) -> ProvisionedDatabase:
    """A new database named ``<prefix>_<random>``, migrated, with two new roles.

    Names and passwords are random, so runs never collide. Undo it with
    :func:`drop_provisioned_database`; a failure half-way drops what was made.
    """
    suffix = secrets.token_hex(4)
    name = f"{prefix}_{suffix}"
    owner_url = await create_database(server_url, name)
    db = ProvisionedDatabase(
        server_url=server_url,
        name=name,
        owner_url=owner_url,
        app_role=f"{prefix}_app_{suffix}",
        app_password=secrets.token_urlsafe(16),
        operator_role=f"{prefix}_operator_{suffix}",
        operator_password=secrets.token_urlsafe(16),
    )
    try:
        await asyncio.to_thread(run_piccolo, owner_url, "migrations", "forwards", "all")
        await asyncio.to_thread(grant_roles, db)
    except BaseException:
        await drop_provisioned_database(db)
        raise
    return db


async def drop_provisioned_database(db: ProvisionedDatabase) -> None:
    """Drop the database and its two roles."""
    await drop_database(db.server_url, db.name)
    connection = await asyncpg.connect(db.server_url)
    try:
        for role in (db.app_role, db.operator_role):
            await connection.execute(f'DROP ROLE IF EXISTS "{role}"')
    finally:
        await connection.close()
