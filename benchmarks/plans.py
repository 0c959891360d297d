"""Is the scoped lookup an index scan? EXPLAIN it as the application role.

The scoped SQL function's body is what runs on the hot path; EXPLAIN of the
function call only shows a Function Scan, so the body's query is explained
directly, inside a transaction with the same RLS setting, once with the
values (custom plan) and once as a generic plan, which is what a SQL
function's parameters may get.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from orchestrator_db.settings import CURRENT_USER_SETTING

_QUERY = (
    "SELECT c.* FROM public.user_credentials c "
    "WHERE c.user_id = $1 AND c.credential_type = $2"
)
_INDEX_NODES = {"Index Scan", "Index Only Scan", "Bitmap Index Scan"}


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", []):
        found += _nodes(child)
    return found


def _describe(plan: dict[str, Any]) -> dict[str, Any]:
    nodes = _nodes(plan)
    scans = [
        {"node": n["Node Type"], "index": n.get("Index Name"), "relation": n.get("Relation Name")}
        for n in nodes
        if "Scan" in n["Node Type"]
    ]
    seq_on_credentials = any(
        n["Node Type"] == "Seq Scan" and n.get("Relation Name") == "user_credentials" for n in nodes
    )
    return {
        "scans": scans,
        "index_scan": any(s["node"] in _INDEX_NODES for s in scans) and not seq_on_credentials,
    }


async def explain_scoped_lookup(app_url: str, user_id: str, credential_type: str) -> dict[str, Any]:
    connection = await asyncpg.connect(app_url)
    try:
        out: dict[str, Any] = {}
        for mode in ("custom", "generic"):
            async with connection.transaction():
                await connection.execute(
                    f"SELECT set_config('{CURRENT_USER_SETTING}', $1, true)", user_id
                )
                await connection.execute(f"SET LOCAL plan_cache_mode = force_{mode}_plan")
                await connection.execute(f"PREPARE bench_scoped(text, text) AS {_QUERY}")
                try:
                    # EXECUTE takes no bind parameters: let the server quote the values.
                    statement = await connection.fetchval(
                        "SELECT format('EXPLAIN (ANALYZE, FORMAT JSON) "
                        "EXECUTE bench_scoped(%L, %L)', $1::text, $2::text)",
                        user_id,
                        credential_type,
                    )
                    raw = await connection.fetchval(statement)
                finally:
                    await connection.execute("DEALLOCATE bench_scoped")
            document = json.loads(raw) if isinstance(raw, str) else raw
            top = document[0]
            described = _describe(top["Plan"])
            described["execution_ms"] = top.get("Execution Time")
            described["rows"] = top["Plan"].get("Actual Rows")
            out[mode] = described
        out["index_scan"] = all(out[m]["index_scan"] for m in ("custom", "generic"))
        return out
    finally:
        await connection.close()
