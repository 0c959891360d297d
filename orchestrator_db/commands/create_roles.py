import asyncpg

from orchestrator_db.commands._connect import connect, run
from orchestrator_db.errors import ConfigurationError
from orchestrator_db.settings import configured_role_passwords
from orchestrator_db.tables import TENANT_TABLES


async def _ensure_role(
    connection: asyncpg.Connection, role: str, password: str, attributes: str
) -> None:
    exists = await connection.fetchval(
        "SELECT true FROM pg_roles WHERE rolname = $1", role
    )
    verb = "ALTER" if exists else "CREATE"
    # format() quotes the name and password on the server side.
    statement = await connection.fetchval(
        f"SELECT format('{verb} ROLE %I WITH {attributes} PASSWORD %L', $1::text, $2::text)",
        role,
        password,
    )
    await connection.execute(statement)


async def _grant(connection: asyncpg.Connection, statement: str, *names: str) -> None:
    quoted = [await connection.fetchval("SELECT quote_ident($1)", n) for n in names]
    await connection.execute(statement.format(*quoted))


# The admin panel's tables (see admin.py) #####################################
# Only the operator role, which the admin connects as, may touch them; the
# application role gets nothing. The audit log is append-only: SELECT and
# INSERT, and a trigger refuses UPDATE and DELETE even to its owner.
OPERATOR_ONLY = {
    "piccolo_user": "SELECT, INSERT, UPDATE, DELETE",
    "sessions": "SELECT, INSERT, UPDATE, DELETE",
    "authenticator_secret": "SELECT, INSERT, UPDATE, DELETE",
    "admin_audit_log": "SELECT, INSERT",
    "user_credentials_admin": "SELECT, UPDATE, DELETE",
}


async def _grant_admin_tables(
    connection: asyncpg.Connection, app_role: str, operator_role: str
) -> None:
    """Grant the admin's tables to the operator alone; skipped for tables not migrated yet."""
    for table, privileges in OPERATOR_ONLY.items():
        if not await connection.fetchval("SELECT to_regclass($1) IS NOT NULL", table):
            continue
        await _grant(connection, f"REVOKE ALL ON {table} FROM {{0}}", app_role)
        await _grant(connection, f"REVOKE ALL ON {table} FROM {{0}}", operator_role)
        await _grant(connection, f"GRANT {privileges} ON {table} TO {{0}}", operator_role)
        sequence = await connection.fetchval(
            "SELECT pg_get_serial_sequence($1, 'id')", table
        )
        if sequence and "INSERT" in privileges:
            await connection.execute(
                f"GRANT USAGE, SELECT ON SEQUENCE {sequence} TO "
                + await connection.fetchval("SELECT quote_ident($1)", operator_role)
            )


# Better Auth session lookup (see sessions.py and its migration) ##############
# EXECUTE for the application role only; neither role gets a grant on "session".
SESSION_LOOKUP = "public.orchestrator_db_session_user(text)"


async def _grant_session_lookup(
    connection: asyncpg.Connection, app_role: str, operator_role: str
) -> None:
    """Skipped when the function is not migrated yet."""
    if not await connection.fetchval("SELECT to_regprocedure($1) IS NOT NULL", SESSION_LOOKUP):
        return
    await _grant(connection, f"REVOKE ALL ON FUNCTION {SESSION_LOOKUP} FROM PUBLIC")
    await _grant(connection, f"REVOKE ALL ON FUNCTION {SESSION_LOOKUP} FROM {{0}}", operator_role)
    await _grant(connection, f"GRANT EXECUTE ON FUNCTION {SESSION_LOOKUP} TO {{0}}", app_role)


# The KMS-wrapped data keys (see crypto/data_keys.py) ##########################
# Every process reads them at startup; only the operator (key commands) writes.
DATA_KEYS = "public.orchestrator_db_data_keys"


async def _grant_data_keys(
    connection: asyncpg.Connection, app_role: str, operator_role: str
) -> None:
    """Skipped when the table is not migrated yet."""
    if not await connection.fetchval("SELECT to_regclass($1) IS NOT NULL", DATA_KEYS):
        return
    for role in (app_role, operator_role):
        await _grant(connection, f"REVOKE ALL ON {DATA_KEYS} FROM {{0}}", role)
    await _grant(connection, f"GRANT SELECT ON {DATA_KEYS} TO {{0}}", app_role)
    await _grant(connection, f"GRANT SELECT, INSERT, UPDATE ON {DATA_KEYS} TO {{0}}", operator_role)


async def provision_roles(
    app_role: str, app_password: str, operator_role: str, operator_password: str
) -> None:
    connection = await connect()
    try:
        async with connection.transaction():
            await _ensure_role(
                connection,
                app_role,
                app_password,
                "LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOINHERIT",
            )
            await _ensure_role(
                connection,
                operator_role,
                operator_password,
                "LOGIN NOSUPERUSER BYPASSRLS NOCREATEDB NOCREATEROLE NOINHERIT",
            )
            database = await connection.fetchval("SELECT current_database()")
            for role in (app_role, operator_role):
                await _grant(connection, "GRANT CONNECT ON DATABASE {0} TO {1}", database, role)
                await _grant(connection, "GRANT USAGE ON SCHEMA public TO {0}", role)
                await _grant(connection, 'GRANT SELECT ON "user" TO {0}', role)
                await _grant(
                    connection, 'REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON "user" FROM {0}', role
                )
                for table in TENANT_TABLES:
                    await _grant(
                        connection,
                        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {{0}}",
                        role,
                    )
                    await _grant(connection, f"REVOKE TRUNCATE ON {table} FROM {{0}}", role)
            await _grant_admin_tables(connection, app_role, operator_role)
            await _grant_data_keys(connection, app_role, operator_role)
            await _grant_session_lookup(connection, app_role, operator_role)
    finally:
        await connection.close()


def create_roles(
    app_role: str = "orchestrator_app",
    operator_role: str = "orchestrator_operator",
    app_password: str = "",
    operator_password: str = "",
) -> None:
    """Create or update the application and operator roles, and grant them.

    Idempotent. Connect (DATABASE_URL) as a role that may create roles; the
    operator role has BYPASSRLS, which only a superuser can grant. Grants
    apply to the current database; run it again after new migrations.

    :param app_role:
        Role the user-serving processes log in as: no superuser, no
        BYPASSRLS, not the owner, so row-level security applies.
    :param operator_role:
        Role of the admin panel and key rotation: BYPASSRLS.
    :param app_password:
        Default: ORCHESTRATOR_DB_APP_PASSWORD.
    :param operator_password:
        Default: ORCHESTRATOR_DB_OPERATOR_PASSWORD.
    """
    configured = configured_role_passwords()
    app_password = app_password or configured["ORCHESTRATOR_DB_APP_PASSWORD"] or ""
    operator_password = (
        operator_password or configured["ORCHESTRATOR_DB_OPERATOR_PASSWORD"] or ""
    )

    async def main() -> None:
        if not app_password or not operator_password:
            raise ConfigurationError(
                "role passwords missing: set ORCHESTRATOR_DB_APP_PASSWORD and "
                "ORCHESTRATOR_DB_OPERATOR_PASSWORD, or pass --app_password and "
                "--operator_password"
            )
        await provision_roles(app_role, app_password, operator_role, operator_password)

    run(main)
    print(f"roles ready: {app_role} (application), {operator_role} (operator, BYPASSRLS)")
