"""What many test modules share: the suite's database type and the real CLI.

Kept out of conftest.py, as pytest advises: conftest holds fixtures and
hooks, and a test module imports plain helpers from here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator_db.devdb import provisioning
from orchestrator_db.devdb.provisioning import ProvisionedDatabase

ROOT = Path(__file__).resolve().parent.parent
PICCOLO = str(Path(sys.executable).with_name("piccolo"))
#: `make soak` sets this: the reliability and fuzz tests run this many times longer.
SOAK_FACTOR = max(1, int(os.environ.get("ORCHESTRATOR_DB_SOAK_FACTOR", "1") or 1))


@dataclass(frozen=True)
class TestDatabase(ProvisionedDatabase):
    """The suite's database, provisioned like production, and the key ring the run uses."""

    keys: str = field(default="", repr=False)  # ORCHESTRATOR_DB_KEYS



def run_piccolo(database_url: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the real `piccolo` CLI, as a user would, against one database."""
    try:
        return provisioning.run_piccolo(database_url, *args, check=check, timeout=300)
    except provisioning.PiccoloCommandFailed as error:
        raise AssertionError(str(error)) from None


def grant_roles(db: TestDatabase, owner_url: str) -> None:
    """Provision the suite's two roles in another database, with the real `create_roles`."""
    provisioning.grant_roles(db, owner_url)
