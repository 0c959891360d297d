"""Better Auth session lookup without a grant on "session" for the application role.

``orchestrator_db_session_user(token)`` returns one row for a token that has a
session: the user id if the session is unexpired, else NULL with
``expired`` true. No row means no such session (or its user is gone). Expiry
is judged by the database clock, ``now()``, in the caller's statement.

It is SECURITY DEFINER, owned by the role that runs this migration (which
must be able to read "session" and "user"), with ``search_path`` pinned to
``pg_catalog, pg_temp`` and every name schema-qualified, so a caller cannot
redirect it to objects of their own. EXECUTE is revoked from PUBLIC;
`create_roles` grants it to the application role alone, whose own grant on
"session" stays none: it learns only the user id of a token it already holds.

It is PL/pgSQL, whose body is resolved at call time: the migration works
whether Better Auth's migrations ran before ours or after ("session" need
not exist yet). `check` reports when the table is missing or unreadable.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.table import Table

ID = "2026-11-30T11:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "Better Auth session lookup (SECURITY DEFINER, EXECUTE only)"

SIGNATURE = "public.orchestrator_db_session_user(p_token text)"

# Better Auth's own test is `expiresAt < now` (api/routes/session.mjs).
FORWARDS = [
    f"""CREATE FUNCTION {SIGNATURE}
RETURNS TABLE (user_id text, expired boolean)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN QUERY
    SELECT CASE WHEN s."expiresAt" < pg_catalog.now() THEN NULL ELSE s."userId" END,
           s."expiresAt" < pg_catalog.now()
    FROM public."session" s
    JOIN public."user" u ON u."id" = s."userId"
    WHERE s."token" = p_token;
END
$$""",
    f"REVOKE ALL ON FUNCTION {SIGNATURE} FROM PUBLIC",
    f"COMMENT ON FUNCTION {SIGNATURE} IS 'Better Auth session token -> user id "
    "(NULL and expired when expiresAt has passed); no row for an unknown token. "
    "EXECUTE for the application role only.'",
]

BACKWARDS = [f"DROP FUNCTION IF EXISTS {SIGNATURE}"]


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
