"""Is this deployment actually protected by row-level security?

One catalog query answers it; the `check` command prints the findings and
`user_scope` refuses to run on a connection that would bypass the policies.
`check` also verifies that every function of ours pins its search_path
(:func:`inspect_functions`), so no name in it resolves through the caller's.
Every catalog name here is schema-qualified: a temp table named ``pg_roles``
would otherwise stand in for the catalog's.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from orchestrator_db.settings import CURRENT_USER_SETTING
from orchestrator_db.tables import TENANT_TABLES

#: The policy expression as PostgreSQL prints it back (pg_get_expr); a policy
#: with the right name but another expression is not our policy.
POLICY_EXPRESSION = (
    f"(user_id = NULLIF(current_setting('{CURRENT_USER_SETTING}'::text, true), ''::text))"
)

_CATALOG_QUERY = """
SELECT r.rolname, r.rolsuper, r.rolbypassrls,
       t.name AS table_name,
       c.oid IS NOT NULL AS table_exists,
       coalesce(c.relrowsecurity, false) AS rls_enabled,
       coalesce(c.relforcerowsecurity, false) AS rls_forced,
       coalesce(pg_catalog.pg_has_role(current_user, c.relowner, 'MEMBER'), false) AS is_owner,
       EXISTS (SELECT 1 FROM pg_catalog.pg_policy p
               WHERE p.polrelid = c.oid AND p.polname = t.name || '_owner'
                 AND p.polcmd = '*' AND p.polpermissive
                 AND pg_catalog.pg_get_expr(p.polqual, p.polrelid) = $2
                 AND pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid) = $2) AS has_policy,
       -- Permissive policies are OR-ed together: any other one that applies
       -- to this role widens what it may see and write.
       coalesce((SELECT pg_catalog.array_agg(p.polname::text ORDER BY p.polname) FROM pg_catalog.pg_policy p
                 WHERE p.polrelid = c.oid AND p.polpermissive
                   AND p.polname <> t.name || '_owner'
                   AND (0::oid = ANY (p.polroles)
                        OR EXISTS (SELECT 1 FROM pg_catalog.unnest(p.polroles) AS pr(oid)
                                   WHERE pr.oid <> 0
                                     AND pg_catalog.pg_has_role(current_user, pr.oid, 'MEMBER')))),
                '{}') AS other_permissive
FROM pg_catalog.pg_roles r
CROSS JOIN pg_catalog.unnest($1::text[]) AS t(name)
LEFT JOIN pg_catalog.pg_class c
    ON c.oid = pg_catalog.to_regclass('public.' OPERATOR(pg_catalog.||) pg_catalog.quote_ident(t.name))
WHERE r.rolname = current_user
ORDER BY t.name
"""


#: The search_path every function of ours sets: the catalog, then the
#: session's temp schema last (unlisted, it would be searched first).
PINNED_SEARCH_PATH = ("pg_catalog", "pg_temp")

# Functions of ours: named orchestrator_db_* in any schema but the system ones.
_FUNCTIONS_QUERY = r"""
SELECT n.nspname AS schema, p.proname AS name,
       pg_catalog.pg_get_function_identity_arguments(p.oid) AS arguments,
       (SELECT pg_catalog.substr(c, 13) FROM pg_catalog.unnest(p.proconfig) AS c
        WHERE c LIKE 'search\_path=%') AS search_path
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
WHERE p.proname LIKE 'orchestrator\_db\_%'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
ORDER BY 1, 2, 3
"""


def _pinned(search_path: str | None) -> bool:
    if search_path is None:
        return False
    schemas = tuple(part.strip().strip('"') for part in search_path.split(","))
    return schemas == PINNED_SEARCH_PATH


@dataclass(frozen=True)
class Finding:
    check: str
    ok: bool
    fix: str = ""
    #: False for a failure that weakens the deployment without letting this
    #: role bypass the policies (an owner under FORCE): `check` fails on it,
    #: `user_scope` does not.
    bypasses_rls: bool = True


async def inspect_deployment(connection: asyncpg.Connection) -> list[Finding]:
    """Each finding is one thing that must hold for the policies to protect anyone."""
    rows = await connection.fetch(_CATALOG_QUERY, list(TENANT_TABLES), POLICY_EXPRESSION)
    role = rows[0]["rolname"]
    findings = [
        Finding(
            f"role {role} is not a superuser",
            not rows[0]["rolsuper"],
            "superusers bypass row-level security: connect with the application "
            "role made by `piccolo orchestrator_db create_roles`",
        ),
        Finding(
            f"role {role} does not have BYPASSRLS",
            not rows[0]["rolbypassrls"],
            "BYPASSRLS roles see every user's rows: serve users with the "
            "application role, keep the operator role for the admin and key rotation",
        ),
    ]
    migrate = "run `piccolo migrations forwards all` as the table owner"
    for row in rows:
        table = row["table_name"]
        if not row["table_exists"]:
            findings.append(Finding(f"table {table} exists", False, migrate))
            continue
        findings += [
            Finding(f"{table}: row-level security enabled", row["rls_enabled"], migrate),
            Finding(
                f"{table}: row-level security forced",
                row["rls_forced"],
                f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY (or {migrate})",
            ),
            Finding(f"{table}: policy {table}_owner present", row["has_policy"], migrate),
            Finding(
                f"{table}: no other permissive policy",
                not row["other_permissive"],
                f"permissive policies are OR-ed with {table}_owner, so "
                f"{', '.join(row['other_permissive'])} may expose other users' rows: "
                "drop them, or recreate them AS RESTRICTIVE",
            ),
            Finding(
                f"{table}: role {role} is not its owner",
                not row["is_owner"],
                "owners can change or drop the policies: run migrations as the "
                "owner, serve users with the application role",
                bypasses_rls=not row["rls_forced"],
            ),
        ]
    return findings


async def inspect_functions(connection: asyncpg.Connection) -> list[Finding]:
    """One finding per function of ours: does it pin its search_path?"""
    rows = await connection.fetch(_FUNCTIONS_QUERY)
    wanted = ", ".join(PINNED_SEARCH_PATH)
    return [
        Finding(
            f"function {row['schema']}.{row['name']}({row['arguments']}): search_path pinned",
            _pinned(row["search_path"]),
            f"its body resolves names through the caller's search_path "
            f"(set: {row['search_path'] or 'none'}); ALTER FUNCTION "
            f"{row['schema']}.{row['name']}({row['arguments']}) SET search_path = {wanted} "
            "(or run `piccolo migrations forwards all`)",
            bypasses_rls=False,
        )
        for row in rows
    ]


def failures(findings: list[Finding]) -> list[Finding]:
    return [finding for finding in findings if not finding.ok]


def rls_bypasses(findings: list[Finding]) -> list[Finding]:
    """The failures that would let this role see or write other users' rows."""
    return [finding for finding in failures(findings) if finding.bypasses_rls]


def describe(findings: list[Finding]) -> str:
    return "; ".join(f"{f.check}: FAILED. Fix: {f.fix}" for f in findings)
