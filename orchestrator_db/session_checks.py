"""Can this deployment turn a Better Auth session into a user id?

`check` prints these findings beside the row-level-security ones. They
count as failures only when a Better Auth secret is configured (the app
means to call ``authenticate``); without one they are reported, with the
fix, and do not fail a deployment that never serves sessions from Python.
"""

from __future__ import annotations

import asyncpg

from orchestrator_db.checks import Finding
from orchestrator_db.errors import ConfigurationError
from orchestrator_db.sessions import session_settings
from orchestrator_db.settings import get_settings

FUNCTION = "public.orchestrator_db_session_user(text)"

_CATALOG_QUERY = """
SELECT p.oid IS NOT NULL AS function_exists,
       o.rolname AS owner,
       coalesce(p.prosecdef, false) AS security_definer,
       coalesce(p.proconfig @> ARRAY['search_path=pg_catalog, pg_temp'], false) AS pinned,
       to_regclass('public."session"') IS NOT NULL AS session_exists,
       to_regclass('public."user"') IS NOT NULL AS user_exists,
       CASE WHEN p.oid IS NOT NULL AND to_regclass('public."session"') IS NOT NULL
            THEN has_table_privilege(p.proowner, 'public."session"', 'SELECT') END
           AS owner_reads_session,
       CASE WHEN p.oid IS NOT NULL AND to_regclass('public."user"') IS NOT NULL
            THEN has_table_privilege(p.proowner, 'public."user"', 'SELECT') END
           AS owner_reads_user,
       CASE WHEN p.oid IS NOT NULL
            THEN has_function_privilege(current_user, p.oid, 'EXECUTE') END AS may_execute,
       CASE WHEN to_regclass('public."session"') IS NOT NULL
            THEN has_table_privilege(current_user, 'public."session"', 'SELECT') END
           AS role_reads_session,
       current_user AS role
FROM (SELECT to_regprocedure($1) AS oid) f
LEFT JOIN pg_proc p ON p.oid = f.oid
LEFT JOIN pg_roles o ON o.oid = p.proowner
"""


def sessions_configured() -> bool:
    """True when a Better Auth secret is set, so session lookup is meant to work."""
    settings = get_settings()
    return any(
        value is not None
        for value in (settings.better_auth_secrets, settings.better_auth_secret, settings.auth_secret)
    )


async def inspect_sessions(connection: asyncpg.Connection) -> list[Finding]:
    """Each finding is one thing `authenticate` needs from this deployment and role."""
    row = await connection.fetchrow(_CATALOG_QUERY, FUNCTION)
    assert row is not None
    role = row["role"]
    try:
        session_settings()
        secret = Finding("Better Auth secret configured", True)
    except ConfigurationError as error:
        secret = Finding("Better Auth secret configured", False, str(error), bypasses_rls=False)
    findings = [secret]
    if not row["function_exists"]:
        findings.append(
            Finding(
                "session lookup function orchestrator_db_session_user exists",
                False,
                "run `piccolo migrations forwards all` as the table owner",
                bypasses_rls=False,
            )
        )
        return findings
    owner = row["owner"]
    findings.append(
        Finding(
            "orchestrator_db_session_user is SECURITY DEFINER with a pinned search_path",
            row["security_definer"] and row["pinned"],
            "it was altered: drop it and run its migration again "
            "(piccolo migrations backwards/forwards orchestrator_db)",
            bypasses_rls=False,
        )
    )
    if not (row["session_exists"] and row["user_exists"]):
        findings.append(
            Finding(
                'Better Auth tables "session" and "user" exist',
                False,
                "run Better Auth's migrations in this database "
                "(npx @better-auth/cli migrate, or its getMigrations API)",
                bypasses_rls=False,
            )
        )
    else:
        findings.append(
            Finding(
                f'function owner {owner} can read "session" and "user"',
                bool(row["owner_reads_session"] and row["owner_reads_user"]),
                f'as the owner of Better Auth\'s tables, run: GRANT SELECT ON "session", '
                f'"user" TO "{owner}"',
                bypasses_rls=False,
            )
        )
        findings.append(
            Finding(
                f'role {role} cannot read "session" directly',
                not row["role_reads_session"],
                f'REVOKE ALL ON "session" FROM "{role}" (sessions are looked up '
                "through orchestrator_db_session_user)",
                bypasses_rls=False,
            )
        )
    findings.append(
        Finding(
            f"role {role} may execute orchestrator_db_session_user",
            bool(row["may_execute"]),
            "run `piccolo orchestrator_db create_roles` (it grants EXECUTE to the "
            "application role)",
            bypasses_rls=False,
        )
    )
    return findings


def report(findings: list[Finding]) -> bool:
    """Print the findings as `check` does; True when they fail the deployment."""
    required = sessions_configured()
    print("\nBetter Auth session lookup (authenticate):")
    for finding in findings:
        label = "ok" if finding.ok else ("FAIL" if required else "skip")
        print(f"[{label}] {finding.check}")
        if not finding.ok:
            print(f"       fix: {finding.fix}")
    failed = [finding for finding in findings if not finding.ok]
    if failed and not required:
        print("no Better Auth secret is set, so these do not fail `check`.")
    return bool(failed) and required


async def check_sessions() -> list[Finding]:
    """The session findings for the role in DATABASE_URL (an app may call it at startup)."""
    from orchestrator_db.commands._connect import connect

    connection = await connect()
    try:
        return await inspect_sessions(connection)
    finally:
        await connection.close()
