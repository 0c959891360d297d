"""Which server to use: DATABASE_URL if set (and it must answer), else the private cluster."""

from __future__ import annotations

import asyncio
import subprocess

from orchestrator_db.devdb.cluster import EmbeddedPostgres, probe, run_sync
from orchestrator_db.devdb.errors import FIXES, DatabaseUnavailable
from orchestrator_db.devdb.urls import mask_password


async def _check_answers(url: str) -> None:
    try:
        await probe(url)
    except Exception as exc:  # noqa: BLE001 - any failure means "not usable"
        raise DatabaseUnavailable(
            f"DATABASE_URL {mask_password(url)} does not answer: "
            f"{type(exc).__name__}: {exc}\n"
            "Start that server or fix/unset DATABASE_URL (unset, a private server is started)."
        ) from exc


def resolve_server_url(database_url: str | None, *, embedded: EmbeddedPostgres | None = None) -> str:
    """Return the URL of a PostgreSQL server that answers.

    ``database_url`` (the DATABASE_URL setting; empty counts as unset) is
    checked and returned, or :class:`DatabaseUnavailable` is raised: never a
    silent switch to another server. Unset, the private cluster (``embedded``,
    default :class:`EmbeddedPostgres`) is started or reused. Safe to call from
    inside a running event loop (the check then runs on a worker thread), but
    async code should prefer :func:`aresolve_server_url`.
    """
    if database_url and database_url.strip():
        url = database_url.strip()
        run_sync(lambda: _check_answers(url))
        return url
    return _start_embedded(embedded)


async def aresolve_server_url(database_url: str | None, *, embedded: EmbeddedPostgres | None = None) -> str:
    """Async twin of :func:`resolve_server_url` (cluster start runs on a thread)."""
    if database_url and database_url.strip():
        url = database_url.strip()
        await _check_answers(url)
        return url
    return await asyncio.to_thread(_start_embedded, embedded)


def _start_embedded(embedded: EmbeddedPostgres | None) -> str:
    try:
        return (embedded or EmbeddedPostgres()).ensure_running()
    except DatabaseUnavailable as exc:
        if "Fix one of these" in str(exc):
            raise
        raise DatabaseUnavailable(
            f"DATABASE_URL is not set and the private PostgreSQL could not be started: {exc}\n{FIXES}"
        ) from exc
    except (OSError, subprocess.SubprocessError) as exc:
        raise DatabaseUnavailable(
            f"DATABASE_URL is not set and the private PostgreSQL could not be started: {exc}\n{FIXES}"
        ) from exc
