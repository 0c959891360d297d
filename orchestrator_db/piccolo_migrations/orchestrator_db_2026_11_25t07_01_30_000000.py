"""The write path's lookup: lock the account, then find the credential.

put_credential must know a credential's row id before it encrypts (the
envelopes are bound to it). Locking the account row serializes one user's
writers. The lookup is a second statement so that, in READ COMMITTED, it
takes a fresh snapshot after the lock wait and sees a credential a
concurrent writer just committed; one statement with FOR UPDATE would
re-check only the locked account row. As a VOLATILE function it costs one
round trip; PL/pgSQL keeps its plans for the session (PostgreSQL 15 plans a
SQL function's body on every call). SECURITY INVOKER: the caller's
row-level security applies.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.table import Table

ID = "2026-11-25T07:01:30:000000"
VERSION = "1.38.0"
DESCRIPTION = "credential slot lookup for the write path"

SIGNATURE = "public.orchestrator_db_credential_slot(p_user_id text, p_credential_type text)"

FORWARDS = f"""
CREATE FUNCTION {SIGNATURE}
RETURNS TABLE (account_id uuid, credential_id uuid)
LANGUAGE plpgsql VOLATILE SECURITY INVOKER AS $$
BEGIN
    PERFORM 1 FROM public.user_accounts a
    WHERE a.user_id = p_user_id
    FOR NO KEY UPDATE;
    RETURN QUERY
    SELECT a.id, c.id
    FROM public.user_accounts a
    LEFT JOIN public.user_credentials c
        ON c.user_account_id = a.id AND c.credential_type = p_credential_type
    WHERE a.user_id = p_user_id;
END
$$
"""

BACKWARDS = f"DROP FUNCTION IF EXISTS {SIGNATURE}"


class RawTable(Table):
    pass


async def forwards():
    manager = MigrationManager(
        migration_id=ID, app_name="orchestrator_db", description=DESCRIPTION
    )

    async def run():
        await RawTable.raw(FORWARDS)

    async def run_backwards():
        await RawTable.raw(BACKWARDS)

    manager.add_raw(run)
    manager.add_raw_backwards(run_backwards)
    return manager
