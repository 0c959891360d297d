"""Better Auth's "user" table, created only when Better Auth has not created it.

The DDL is Better Auth 1.7's own, so Better Auth can adopt the table later. A
marker comment records that we created it: going backwards drops the table
only when the marker is there, the table is empty and nothing else depends on
it (Better Auth's "session" and "account" reference it once Better Auth has
migrated), so a Better Auth table with real users, or with Better Auth's own
tables hanging off it, is never dropped.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.table import Table

ID = "2026-11-25T07:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = 'Better Auth "user" table, if missing'

MARKER = "orchestrator_db: created for Better Auth; owned by Better Auth"

CREATE_IF_MISSING = f"""
DO $$
BEGIN
    IF to_regclass('"user"') IS NULL THEN
        create table "user" ("id" text not null primary key, "name" text not null, "email" text not null unique, "emailVerified" boolean not null, "image" text, "createdAt" timestamptz default CURRENT_TIMESTAMP not null, "updatedAt" timestamptz default CURRENT_TIMESTAMP not null);
        COMMENT ON TABLE "user" IS '{MARKER}';
    END IF;
END
$$
"""

DROP_IF_OURS_AND_EMPTY = f"""
DO $$
BEGIN
    IF to_regclass('"user"') IS NOT NULL
       AND obj_description(to_regclass('"user"'), 'pg_class') = '{MARKER}'
       AND NOT EXISTS (SELECT 1 FROM "user")
       -- no foreign key, view or other object of anyone else depends on it
       AND NOT EXISTS (
           SELECT 1 FROM pg_depend
           WHERE refclassid = 'pg_class'::regclass
             AND refobjid = to_regclass('"user"')
             AND deptype = 'n'
       ) THEN
        DROP TABLE "user";
    END IF;
END
$$
"""


class RawTable(Table):
    pass


async def forwards():
    manager = MigrationManager(
        migration_id=ID, app_name="orchestrator_db", description=DESCRIPTION
    )

    async def run():
        await RawTable.raw(CREATE_IF_MISSING)

    async def run_backwards():
        await RawTable.raw(DROP_IF_OURS_AND_EMPTY)

    manager.add_raw(run)
    manager.add_raw_backwards(run_backwards)
    return manager
