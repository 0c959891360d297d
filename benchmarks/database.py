"""The benchmark's own database: created, migrated and provisioned like production.

It is the same recipe as the tests' and `make run`'s
(:mod:`orchestrator_db.devdb.provisioning`): migrations as the table owner,
then the package's own ``create_roles`` for an application role (RLS
applies) and an operator role (BYPASSRLS), with random names and passwords
unique to this run, dropped again at the end.
"""

from __future__ import annotations

from orchestrator_db.devdb.provisioning import (
    PROJECT_ROOT,
    ProvisionedDatabase,
    drop_provisioned_database,
    provision_database,
)

ROOT = PROJECT_ROOT
BenchDatabase = ProvisionedDatabase


async def create_bench_database(server_url: str) -> BenchDatabase:
    return await provision_database(server_url, "odb_bench")


async def drop_bench_database(db: BenchDatabase) -> None:
    await drop_provisioned_database(db)
