"""Names that cannot be hijacked, a race-free credential slot, v2 envelopes in the admin view.

- Every function of ours is redefined with ``SET search_path = pg_catalog,
  pg_temp`` and schema-qualified bodies, so nothing in them resolves through
  the caller's search_path (CVE-2018-1058): not a temp table named like
  ours (pg_temp is listed last, so it is searched last, and only for
  relations), not an object in a schema the caller put first. The scoped
  read functions' ``set_config(..., true)`` is unaffected: a function's SET
  clause restores only the settings it names.
- ``orchestrator_db_credential_slot`` returns the id of the account row it
  locked. Before, a first write that waited on an account deleted and
  re-created meanwhile read the new account without locking it, and two
  such writers could both insert (a raw unique violation).
- ``user_credentials_admin`` shows the key id of v1 and v2 envelopes.

Backwards restores the previous definitions, taken from their own
migrations. Braces are doubled: Piccolo's raw() formats them.
"""

import importlib

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.table import Table

ID = "2026-11-30T10:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "pinned search_path on every function, race-free credential slot, v2 in admin view"

SETTING = "app.current_user_id"
SEARCH_PATH = "pg_catalog, pg_temp"

_LOCK_CREDENTIAL = """
    SELECT c.user_account_id, c.id
    FROM public.user_credentials c
    WHERE c.user_id = p_user_id AND c.credential_type = p_credential_type
    FOR NO KEY UPDATE"""

# The key id of a well-formed v1 or v2 envelope (see crypto/keyring.py,
# ENVELOPE_PATTERN), never a fragment of something that is not one. Kept
# literal here: a migration must not change when the package does.
_ENVELOPE = r"'^v[12]\.[A-Za-z0-9_-]{{1,32}}\.[A-Za-z0-9_-]+$'"

FORWARDS = [
    f"""CREATE OR REPLACE FUNCTION public.orchestrator_db_touch_updated_at() RETURNS trigger
        LANGUAGE plpgsql SET search_path = {SEARCH_PATH} AS $$
        BEGIN
            NEW.updated_at := pg_catalog.now();
            RETURN NEW;
        END
        $$""",
    f"""CREATE OR REPLACE FUNCTION public.orchestrator_db_audit_append_only() RETURNS trigger
        LANGUAGE plpgsql SET search_path = {SEARCH_PATH} AS $$
        BEGIN
            RAISE EXCEPTION 'admin_audit_log is append-only'
                USING ERRCODE = 'insufficient_privilege';
        END
        $$""",
    f"""CREATE OR REPLACE FUNCTION public.orchestrator_db_credentials_admin_update()
        RETURNS trigger LANGUAGE plpgsql SET search_path = {SEARCH_PATH} AS $$
        BEGIN
            IF (NEW.is_active, NEW.expires_at) IS DISTINCT FROM (OLD.is_active, OLD.expires_at) THEN
                UPDATE public.user_credentials
                SET is_active = NEW.is_active, expires_at = NEW.expires_at
                WHERE id = OLD.id;
            END IF;
            RETURN NEW;
        END
        $$""",
    # The slot: lock an existing credential; else lock the account, look
    # again (a fresh snapshot sees a row the writer before us committed),
    # and return the id of the account row this call holds locked. A
    # deleted account is skipped by the lock, so the caller sees none.
    f"""CREATE OR REPLACE FUNCTION public.orchestrator_db_credential_slot(
            p_user_id text, p_credential_type text)
        RETURNS TABLE (account_id uuid, credential_id uuid)
        LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = {SEARCH_PATH} AS $$
        DECLARE
            v_account uuid;
        BEGIN
            RETURN QUERY {_LOCK_CREDENTIAL};
            IF FOUND THEN
                RETURN;
            END IF;
            SELECT a.id INTO v_account FROM public.user_accounts a
            WHERE a.user_id = p_user_id FOR NO KEY UPDATE;
            IF NOT FOUND THEN
                RETURN;
            END IF;
            RETURN QUERY {_LOCK_CREDENTIAL};
            IF FOUND THEN
                RETURN;
            END IF;
            account_id := v_account;
            credential_id := NULL;
            RETURN NEXT;
        END
        $$""",
    f"""CREATE OR REPLACE VIEW public.user_credentials_admin WITH (security_invoker = true) AS
        SELECT c.id, c.user_account_id, c.user_id, c.credential_type,
            CASE
                WHEN c.api_key ~ {_ENVELOPE} AND c.secret_key ~ {_ENVELOPE}
                     AND split_part(c.api_key, '.', 2) = split_part(c.secret_key, '.', 2)
                    THEN split_part(c.api_key, '.', 2)
                WHEN c.api_key ~ {_ENVELOPE} AND c.secret_key ~ {_ENVELOPE}
                    THEN split_part(c.api_key, '.', 2) || ' / ' || split_part(c.secret_key, '.', 2)
            END AS key_id,
            c.is_active, c.expires_at, c.created_at, c.updated_at
        FROM public.user_credentials c""",
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
        f"CREATE OR REPLACE FUNCTION public.{signature} RETURNS SETOF {returns} "
        f"LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = {SEARCH_PATH} AS $$ BEGIN "
        f"PERFORM pg_catalog.set_config('{SETTING}', p_user_id, true); "
        f"RETURN QUERY {query}; END $$"
    )


def _previous(migration: str, *names: str) -> list[str]:
    """The earlier definitions, from their migrations, as CREATE OR REPLACE."""
    module = importlib.import_module(f"orchestrator_db.piccolo_migrations.{migration}")
    statements: list[str] = []
    for name in names:
        value = getattr(module, name)
        statements += [value] if isinstance(value, str) else list(value)
    return [
        s.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1).replace(
            "CREATE VIEW", "CREATE OR REPLACE VIEW", 1
        )
        for s in statements
        if s.lstrip().startswith(("CREATE FUNCTION", "CREATE VIEW"))
    ]


def _backwards() -> list[str]:
    return (
        _previous("orchestrator_db_2026_11_25t07_00_30_000000", "FORWARDS")
        + _previous("orchestrator_db_2026_11_25t07_01_00_000000", "FORWARDS")
        + _previous("orchestrator_db_2026_11_25t07_01_30_000000", "FORWARDS")
        + _previous("orchestrator_db_2026_11_25t07_02_00_000000", "FORWARDS")
    )


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
        for statement in _backwards():
            await RawTable.raw(statement)

    manager.add_raw(run)
    manager.add_raw_backwards(run_backwards)
    return manager
