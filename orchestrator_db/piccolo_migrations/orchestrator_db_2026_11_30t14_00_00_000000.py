"""A credential write in two round trips, for a put that is its own transaction.

``orchestrator_db_scoped_slot`` sets the user and returns the account id and
the credential's row id, if any, without a lock: one round trip, outside
any transaction. The client seals the secrets for that row (the envelopes
are bound to its id, account and type), then ``orchestrator_db_scoped_put``
sets the user and upserts in one statement that commits by itself. Its
``ON CONFLICT ... DO UPDATE ... WHERE`` replaces a row only if it is still
the row the envelopes were sealed for; if another writer got there first
(or deleted and re-created it), it returns nothing and the client looks
again. Two first writers cannot both insert: the unique constraint makes
the second an update or, if the row is not the one it sealed for, a retry.

Both are SECURITY INVOKER, like the scoped reads: whoever calls them, the
caller's own privileges and row-level security apply. Their search_path is
pinned and their bodies schema-qualified. Braces are doubled: Piccolo's
raw() formats them.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.table import Table

ID = "2026-11-30T14:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "two-round-trip credential write: scoped slot lookup and scoped upsert"

SETTING = "app.current_user_id"
SEARCH_PATH = "pg_catalog, pg_temp"

SLOT = "public.orchestrator_db_scoped_slot(p_user_id text, p_credential_type text)"
PUT = (
    "public.orchestrator_db_scoped_put(p_user_id text, p_id uuid, p_account_id uuid, "
    "p_credential_type text, p_api_key text, p_secret_key text, p_expires_at timestamptz)"
)

FORWARDS = [
    f"""CREATE FUNCTION {SLOT}
        RETURNS TABLE (account_id uuid, credential_id uuid)
        LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = {SEARCH_PATH} AS $$
        BEGIN
            PERFORM pg_catalog.set_config('{SETTING}', p_user_id, true);
            RETURN QUERY
                SELECT a.id, c.id
                FROM public.user_accounts a
                LEFT JOIN public.user_credentials c
                    ON c.user_account_id = a.id AND c.credential_type = p_credential_type
                WHERE a.user_id = p_user_id;
        END
        $$""",
    f"""CREATE FUNCTION {PUT}
        RETURNS SETOF public.user_credentials
        LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = {SEARCH_PATH} AS $$
        BEGIN
            PERFORM pg_catalog.set_config('{SETTING}', p_user_id, true);
            RETURN QUERY
                WITH written AS (
                    INSERT INTO public.user_credentials AS c
                        (id, user_account_id, user_id, credential_type,
                         api_key, secret_key, expires_at)
                    VALUES (p_id, p_account_id, p_user_id, p_credential_type,
                            p_api_key, p_secret_key, p_expires_at)
                    ON CONFLICT ON CONSTRAINT idx_user_credentials_unique DO UPDATE
                        SET api_key = EXCLUDED.api_key,
                            secret_key = EXCLUDED.secret_key,
                            expires_at = EXCLUDED.expires_at,
                            is_active = true
                        WHERE c.id = EXCLUDED.id AND c.user_id = EXCLUDED.user_id
                    RETURNING c.*
                )
                SELECT * FROM written;
        END
        $$""",
]

BACKWARDS = [
    "DROP FUNCTION IF EXISTS public.orchestrator_db_scoped_put"
    "(text, uuid, uuid, text, text, text, timestamptz)",
    "DROP FUNCTION IF EXISTS public.orchestrator_db_scoped_slot(text, text)",
]


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
