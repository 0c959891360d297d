"""The write path's lookup: the credential's row id, locked until commit.

put_credential must know a credential's row id before it encrypts (the
envelopes are bound to it), and the row must not change or vanish before
the write. An existing credential is locked by itself: replacing one costs
no other lock. Only a first write locks the account row, which queues the
user's first writers of that type one behind the other; each then looks
again, and a statement that starts after the lock wait takes a fresh
snapshot (READ COMMITTED), so it sees and locks a row another writer just
committed instead of inserting a duplicate. As a VOLATILE function this
costs one round trip; PL/pgSQL keeps its plans for the session (PostgreSQL
15 plans a SQL function's body on every call). SECURITY INVOKER: the
caller's row-level security applies.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.table import Table

ID = "2026-11-25T07:01:30:000000"
VERSION = "1.38.0"
DESCRIPTION = "credential slot lookup for the write path"

SIGNATURE = "public.orchestrator_db_credential_slot(p_user_id text, p_credential_type text)"

_LOCK_CREDENTIAL = """
    SELECT c.user_account_id, c.id
    FROM public.user_credentials c
    WHERE c.user_id = p_user_id AND c.credential_type = p_credential_type
    FOR NO KEY UPDATE"""

FORWARDS = f"""
CREATE FUNCTION {SIGNATURE}
RETURNS TABLE (account_id uuid, credential_id uuid)
LANGUAGE plpgsql VOLATILE SECURITY INVOKER AS $$
BEGIN
    RETURN QUERY {_LOCK_CREDENTIAL};
    IF FOUND THEN
        RETURN;
    END IF;
    PERFORM 1 FROM public.user_accounts a WHERE a.user_id = p_user_id FOR NO KEY UPDATE;
    RETURN QUERY {_LOCK_CREDENTIAL};
    IF FOUND THEN
        RETURN;
    END IF;
    RETURN QUERY
    SELECT a.id, NULL::uuid FROM public.user_accounts a WHERE a.user_id = p_user_id;
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
