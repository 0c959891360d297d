"""Row-level security: each user sees and writes only their own rows.

The policy is a plain expression over a transaction-local setting. NULLIF
turns the '' that an unset-then-reset setting reads as into NULL, so no
setting, '' and another user's id all match nothing (fail closed). FORCE
makes the table owner obey the policy too. The scoped read functions let a
scope set the user and read in one round trip; they are SECURITY INVOKER,
so the caller's RLS applies, and VOLATILE, so the setting is made before the
query runs. They carry no SET clause, which would undo the setting on exit.
They are PL/pgSQL, not SQL: PostgreSQL 15 plans a SQL function's body on
every call, while PL/pgSQL keeps its plans for the session.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.table import Table

ID = "2026-11-25T07:01:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "row-level security policies and scoped read functions"

SETTING = "app.current_user_id"
OWNER_MATCHES = f"user_id = NULLIF(current_setting('{SETTING}', true), '')"

FORWARDS = []
BACKWARDS = []
for table in ("user_accounts", "user_credentials"):
    FORWARDS += [
        f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY",
        f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY",
        f"CREATE POLICY {table}_owner ON {table} FOR ALL "
        f"USING ({OWNER_MATCHES}) WITH CHECK ({OWNER_MATCHES})",
    ]
    BACKWARDS += [
        f"DROP POLICY IF EXISTS {table}_owner ON {table}",
        f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY",
        f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY",
    ]

SCOPED_READS = {
    "orchestrator_db_scoped_account(p_user_id text)": (
        "public.user_accounts",
        "SELECT a.* FROM public.user_accounts a WHERE a.user_id = p_user_id",
    ),
    "orchestrator_db_scoped_credential(p_user_id text, p_credential_type text)": (
        "public.user_credentials",
        "SELECT c.* FROM public.user_credentials c "
        "WHERE c.user_id = p_user_id AND c.credential_type = p_credential_type",
    ),
    "orchestrator_db_scoped_credentials(p_user_id text)": (
        "public.user_credentials",
        "SELECT c.* FROM public.user_credentials c "
        "WHERE c.user_id = p_user_id ORDER BY c.credential_type",
    ),
}
for signature, (returns, query) in SCOPED_READS.items():
    FORWARDS.append(
        f"CREATE FUNCTION public.{signature} RETURNS SETOF {returns} "
        "LANGUAGE plpgsql VOLATILE SECURITY INVOKER AS $$ BEGIN "
        f"PERFORM pg_catalog.set_config('{SETTING}', p_user_id, true); "
        f"RETURN QUERY {query}; END $$"
    )
    BACKWARDS.insert(0, f"DROP FUNCTION IF EXISTS public.{signature}")


class RawTable(Table):
    pass


async def forwards():
    manager = MigrationManager(
        migration_id=ID, app_name="orchestrator_db", description=DESCRIPTION
    )

    async def run():
        for statement in FORWARDS:
            await RawTable.raw(statement)

    async def run_backwards():
        for statement in BACKWARDS:
            await RawTable.raw(statement)

    manager.add_raw(run)
    manager.add_raw_backwards(run_backwards)
    return manager
