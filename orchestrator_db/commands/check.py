from orchestrator_db import session_checks
from orchestrator_db.checks import Finding, failures, inspect_deployment, inspect_functions
from orchestrator_db.commands._connect import connect, run


async def check_deployment() -> list[Finding]:
    """The deployment check, for an app to call at startup; uses DATABASE_URL."""
    connection = await connect()
    try:
        return await inspect_deployment(connection) + await inspect_functions(connection)
    finally:
        await connection.close()


def check() -> None:
    """Verify that row-level security protects the role in DATABASE_URL.

    Checks that RLS is enabled and forced on both tenant tables, that the
    policies exist, and that the role is neither superuser, BYPASSRLS nor
    owner, and that every function of ours pins its search_path. Exits
    non-zero, naming the fix, if anything fails.
    """
    findings = run(check_deployment)
    for finding in findings:
        print(f"[{'ok' if finding.ok else 'FAIL'}] {finding.check}")
        if not finding.ok:
            print(f"       fix: {finding.fix}")
    sessions_failed = session_checks.report(run(session_checks.check_sessions))
    failed = failures(findings)
    if failed:
        print(f"\n{len(failed)} check(s) failed: users' rows are NOT isolated.")
        raise SystemExit(1)
    if sessions_failed:
        print("\nsession lookup cannot work: authenticate() will fail (fixes above).")
        raise SystemExit(1)
    print("\nall checks passed: row-level security isolates users for this role.")
