"""`piccolo orchestrator_db check` and its function form, on good and broken deployments."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio
from helpers import grant_roles, run_piccolo

from orchestrator_db.checks import Finding, failures, inspect_deployment, rls_bypasses
from orchestrator_db.commands.check import check_deployment
from orchestrator_db.devdb import create_database, drop_database, with_database
from orchestrator_db.tables import TENANT_TABLES


def _check(database_url: str):
    return run_piccolo(database_url, "orchestrator_db", "check", check=False)


@pytest_asyncio.fixture(scope="module")
async def granted_template(test_db) -> AsyncIterator[str]:
    """A migrated database with the suite's roles granted, to clone per test
    (cloning is much faster than migrating again)."""
    name = f"odb_scratch_tmpl_{secrets.token_hex(4)}"
    owner_url = await create_database(test_db.server_url, name)
    try:
        await asyncio.to_thread(run_piccolo, owner_url, "migrations", "forwards", "all")
        await asyncio.to_thread(grant_roles, test_db, owner_url)
        yield name
    finally:
        await drop_database(test_db.server_url, name)


@pytest_asyncio.fixture
async def scratch(test_db, granted_template: str) -> AsyncIterator[tuple[str, str]]:
    """A fresh, correct deployment of our own to break: (owner URL, app URL)."""
    name = f"odb_scratch_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(test_db.server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{granted_template}"')
    finally:
        await conn.close()
    try:
        yield with_database(test_db.server_url, name), with_database(test_db.app_url, name)
    finally:
        await drop_database(test_db.server_url, name)


async def _findings(url: str) -> list[Finding]:
    conn = await asyncpg.connect(url)
    try:
        return await inspect_deployment(conn)
    finally:
        await conn.close()


# --- the command --------------------------------------------------------------


def test_check_passes_for_the_application_role(test_db) -> None:
    """Make sure `check` exits 0 and reports every check ok on a correct deployment."""
    result = _check(test_db.app_url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[FAIL]" not in result.stdout
    for table in TENANT_TABLES:
        assert f"[ok] {table}: row-level security forced" in result.stdout
        assert f"[ok] {table}: policy {table}_owner present" in result.stdout
    assert "all checks passed" in result.stdout


@pytest.mark.parametrize(
    "role, failed, fix",
    [
        ("operator", "does not have BYPASSRLS", "serve users with the application role"),
        ("superuser", "is not a superuser", "piccolo orchestrator_db create_roles"),
    ],
)
def test_check_fails_for_a_role_that_bypasses_rls(
    test_db, role: str, failed: str, fix: str
) -> None:
    """Make sure `check` exits non-zero, naming the fix, for BYPASSRLS and superuser roles."""
    url = test_db.operator_url if role == "operator" else test_db.owner_url
    result = _check(url)
    assert result.returncode != 0
    fail_lines = [line for line in result.stdout.splitlines() if line.startswith("[FAIL]")]
    assert any(failed in line for line in fail_lines), result.stdout
    assert "fix: " in result.stdout and fix in result.stdout
    assert "NOT isolated" in result.stdout


BREAKAGES = {
    "force-off": (
        "ALTER TABLE user_credentials NO FORCE ROW LEVEL SECURITY",
        "user_credentials: row-level security forced",
        "ALTER TABLE user_credentials FORCE ROW LEVEL SECURITY",
    ),
    "rls-disabled": (
        "ALTER TABLE user_accounts DISABLE ROW LEVEL SECURITY",
        "user_accounts: row-level security enabled",
        "piccolo migrations forwards all",
    ),
    "policy-missing": (
        "DROP POLICY user_accounts_owner ON user_accounts",
        "user_accounts: policy user_accounts_owner present",
        "piccolo migrations forwards all",
    ),
    "policy-without-with-check": (
        "DROP POLICY user_credentials_owner ON user_credentials;"
        " CREATE POLICY user_credentials_owner ON user_credentials FOR ALL"
        " USING (user_id = NULLIF(current_setting('app.current_user_id', true), ''))",
        "user_credentials: policy user_credentials_owner present",
        "piccolo migrations forwards all",
    ),
    "policy-with-another-expression": (
        "DROP POLICY user_credentials_owner ON user_credentials;"
        " CREATE POLICY user_credentials_owner ON user_credentials FOR ALL"
        " USING (true) WITH CHECK (true)",
        "user_credentials: policy user_credentials_owner present",
        "piccolo migrations forwards all",
    ),
    "extra-permissive-policy": (
        "CREATE POLICY peek ON user_credentials FOR SELECT USING (true)",
        "user_credentials: no other permissive policy",
        "peek may expose other users' rows",
    ),
}

# Policies that narrow access, or apply to other roles, leave the app role isolated.
HARMLESS_POLICIES = {
    "restrictive": "CREATE POLICY only_active ON user_credentials AS RESTRICTIVE FOR SELECT USING (is_active)",
    "permissive-for-another-role": 'CREATE POLICY operator_peek ON user_credentials FOR SELECT TO "{operator}" USING (true)',
}


@pytest.mark.asyncio
@pytest.mark.parametrize("breakage", list(BREAKAGES))
async def test_check_fails_on_a_broken_deployment(scratch, breakage: str) -> None:
    """Make sure `check` passes on a fresh deployment, then fails naming the fix once
    FORCE is off, RLS is off, our policy is missing, lacks WITH CHECK or says
    something else, or another permissive policy widens it."""
    owner_url, app_url = scratch
    statement, failed, fix = BREAKAGES[breakage]
    assert failures(await _findings(app_url)) == []  # correct until broken

    conn = await asyncpg.connect(owner_url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()

    after = await asyncio.to_thread(_check, app_url)
    assert after.returncode != 0
    fail_lines = [line for line in after.stdout.splitlines() if line.startswith("[FAIL]")]
    assert fail_lines == [f"[FAIL] {failed}"], after.stdout
    assert fix in after.stdout


@pytest.mark.asyncio
@pytest.mark.parametrize("policy", list(HARMLESS_POLICIES))
async def test_check_accepts_policies_that_do_not_widen_access(
    scratch, test_db, policy: str
) -> None:
    """Make sure a restrictive policy, or one for another role, does not fail `check`."""
    owner_url, app_url = scratch
    conn = await asyncpg.connect(owner_url)
    try:
        await conn.execute(HARMLESS_POLICIES[policy].format(operator=test_db.operator_role))
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM pg_policy WHERE polrelid = 'user_credentials'::regclass"
            )
            == 2
        )
    finally:
        await conn.close()
    result = await asyncio.to_thread(_check, app_url)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.asyncio
async def test_check_fails_for_the_table_owner(scratch, test_db) -> None:
    """Make sure `check` fails for a role that owns a tenant table, even a non-superuser."""
    owner_url, app_url = scratch
    conn = await asyncpg.connect(owner_url)
    try:
        # The app role owns the table in this scratch database only.
        await conn.execute(f'ALTER TABLE user_accounts OWNER TO "{test_db.app_role}"')
        result = await asyncio.to_thread(_check, app_url)
        await conn.execute("ALTER TABLE user_accounts OWNER TO CURRENT_USER")
    finally:
        await conn.close()
    assert result.returncode != 0
    assert f"[FAIL] user_accounts: role {test_db.app_role} is not its owner" in result.stdout
    assert "run migrations as the owner" in result.stdout


# --- the function form -----------------------------------------------------------


@pytest.mark.asyncio
async def test_check_deployment_returns_findings_for_the_configured_role(test_db) -> None:
    """Make sure check_deployment(), as an app calls it at startup, returns all-ok findings
    for the application role, one per role property and per table property."""
    findings = await check_deployment()
    assert all(isinstance(finding, Finding) for finding in findings)
    assert failures(findings) == []
    names = {finding.check for finding in findings}
    assert f"role {test_db.app_role} is not a superuser" in names
    assert f"role {test_db.app_role} does not have BYPASSRLS" in names
    for table in TENANT_TABLES:
        assert {
            f"{table}: row-level security enabled",
            f"{table}: row-level security forced",
            f"{table}: policy {table}_owner present",
            f"{table}: no other permissive policy",
            f"{table}: role {test_db.app_role} is not its owner",
        } <= names


@pytest.mark.asyncio
async def test_inspect_deployment_reports_the_operator_role(test_db) -> None:
    """Make sure the findings for the operator role fail on BYPASSRLS, with a fix."""
    findings = await _findings(test_db.operator_url)
    failed = failures(findings)
    assert [finding.check for finding in failed] == [
        f"role {test_db.operator_role} does not have BYPASSRLS"
    ]
    assert rls_bypasses(findings) == failed
    assert "application role" in failed[0].fix
