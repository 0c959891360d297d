"""The admin panel's two database objects.

``admin_audit_log`` records every write made through the admin. It is
append-only: a trigger refuses UPDATE, DELETE and TRUNCATE for every role,
and `create_roles` grants the operator only SELECT and INSERT (the
application role gets nothing).

``user_credentials_admin`` is the credentials table as the admin sees it:
no secret columns, only the key id read from the envelopes' prefix. It is
a simple view, so PostgreSQL passes DELETE through to the table; an
INSTEAD OF trigger lets UPDATE change only is_active and expires_at. The
operator is granted no INSERT on it. ``security_invoker`` makes the
caller's own privileges and row-level security apply, not the view owner's.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.table import Table

ID = "2026-11-25T07:02:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "admin audit log (append-only) and secret-free credentials view"

# The key id of a well-formed envelope (see crypto.py), never a fragment of
# something that is not one. Braces are doubled: Piccolo's raw() formats them.
_ENVELOPE = r"'^v1\.[A-Za-z0-9_-]{{1,32}}\.[A-Za-z0-9_-]+$'"

FORWARDS = [
    """CREATE TABLE admin_audit_log (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        occurred_at timestamptz NOT NULL DEFAULT now(),
        actor_id integer,
        actor_username text NOT NULL,
        action text NOT NULL,
        table_name text NOT NULL,
        row_id text,
        changes jsonb NOT NULL DEFAULT '{{}}'::jsonb,
        CONSTRAINT admin_audit_log_action_known
            CHECK (action IN ('create', 'update', 'delete', 'replace_secret',
                              'change_password', 'mfa'))
    )""",
    "CREATE INDEX idx_admin_audit_log_row ON admin_audit_log (table_name, row_id)",
    "REVOKE ALL ON admin_audit_log FROM PUBLIC",
    """CREATE FUNCTION orchestrator_db_audit_append_only() RETURNS trigger
        LANGUAGE plpgsql SET search_path = pg_catalog AS $$
        BEGIN
            RAISE EXCEPTION 'admin_audit_log is append-only'
                USING ERRCODE = 'insufficient_privilege';
        END
        $$""",
    """CREATE TRIGGER admin_audit_log_append_only
        BEFORE UPDATE OR DELETE ON admin_audit_log
        FOR EACH ROW EXECUTE FUNCTION orchestrator_db_audit_append_only()""",
    """CREATE TRIGGER admin_audit_log_no_truncate
        BEFORE TRUNCATE ON admin_audit_log
        FOR EACH STATEMENT EXECUTE FUNCTION orchestrator_db_audit_append_only()""",
    "COMMENT ON TABLE admin_audit_log IS 'Every write made through the admin "
    "panel: who, when, which row, which fields (old and new values). Secrets "
    "appear only as \"secret replaced\". Append-only.'",
    f"""CREATE VIEW user_credentials_admin WITH (security_invoker = true) AS
        SELECT c.id, c.user_account_id, c.user_id, c.credential_type,
            CASE
                WHEN c.api_key ~ {_ENVELOPE} AND c.secret_key ~ {_ENVELOPE}
                     AND split_part(c.api_key, '.', 2) = split_part(c.secret_key, '.', 2)
                    THEN split_part(c.api_key, '.', 2)
                WHEN c.api_key ~ {_ENVELOPE} AND c.secret_key ~ {_ENVELOPE}
                    THEN split_part(c.api_key, '.', 2) || ' / ' || split_part(c.secret_key, '.', 2)
            END AS key_id,
            c.is_active, c.expires_at, c.created_at, c.updated_at
        FROM user_credentials c""",
    "REVOKE ALL ON user_credentials_admin FROM PUBLIC",
    # Through the view only is_active and expires_at can change, and an
    # UPDATE that changes nothing leaves the row (and its updated_at) alone.
    """CREATE FUNCTION orchestrator_db_credentials_admin_update() RETURNS trigger
        LANGUAGE plpgsql SET search_path = pg_catalog AS $$
        BEGIN
            IF (NEW.is_active, NEW.expires_at) IS DISTINCT FROM (OLD.is_active, OLD.expires_at) THEN
                UPDATE public.user_credentials
                SET is_active = NEW.is_active, expires_at = NEW.expires_at
                WHERE id = OLD.id;
            END IF;
            RETURN NEW;
        END
        $$""",
    """CREATE TRIGGER user_credentials_admin_update
        INSTEAD OF UPDATE ON user_credentials_admin
        FOR EACH ROW EXECUTE FUNCTION orchestrator_db_credentials_admin_update()""",
    "COMMENT ON VIEW user_credentials_admin IS 'user_credentials for the admin "
    "panel: no secret columns, only the id of the key that encrypted them.'",
]

BACKWARDS = [
    "DROP VIEW IF EXISTS user_credentials_admin",
    "DROP FUNCTION IF EXISTS orchestrator_db_credentials_admin_update()",
    "DROP TABLE IF EXISTS admin_audit_log",
    "DROP FUNCTION IF EXISTS orchestrator_db_audit_append_only()",
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
