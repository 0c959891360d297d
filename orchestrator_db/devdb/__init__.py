"""A PostgreSQL for development and tests; the runtime package never imports this.

`make run`, `make test` and `make bench` call :func:`resolve_server_url`, so a
newcomer gets a working database with no setup:

* a configured ``DATABASE_URL`` is used as-is, but only if it answers; a dead
  one is an error, never a silent switch to some other server;
* otherwise a private cluster (:class:`EmbeddedPostgres`) is initialised once
  in a data directory owned by this project and started, or reused if it is
  already running, always on the same port when that port is still free.

Modules: ``urls`` (URL helpers), ``binaries`` (finding server binaries),
``cluster`` (the private cluster), ``server`` (which server to use),
``databases`` (create/drop), ``provisioning`` (a migrated database with its
two roles) and ``__main__`` (``python -m orchestrator_db.devdb``).
"""

from orchestrator_db.devdb.cluster import EmbeddedPostgres
from orchestrator_db.devdb.databases import create_database, drop_database
from orchestrator_db.devdb.errors import DatabaseUnavailable
from orchestrator_db.devdb.server import aresolve_server_url, resolve_server_url
from orchestrator_db.devdb.urls import mask_password, with_credentials, with_database

__all__ = [
    "DatabaseUnavailable",
    "EmbeddedPostgres",
    "aresolve_server_url",
    "create_database",
    "drop_database",
    "mask_password",
    "resolve_server_url",
    "with_credentials",
    "with_database",
]
