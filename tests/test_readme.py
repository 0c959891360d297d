"""The README is real: its app example runs as written against what `make run` leaves,
and its commands work when pasted.

`make run`'s code path (``python -m orchestrator_db.launch --no-serve``) runs
with no DATABASE_URL, so it starts its own embedded cluster, in a temporary
ORCHESTRATOR_DB_LOCAL_DIR: the checkout's .local is never touched. The
example then runs with nothing but the app.env that run wrote.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from helpers import ROOT

from orchestrator_db.devdb import EmbeddedPostgres, with_database

README = ROOT / "README.md"
#: Settings a developer's shell may hold; the README's runs must not depend on them.
OURS = ("DATABASE_URL", "ADMIN_PASSWORD")
#: The machine's choice of server binaries, which the run and this test must share.
MACHINE = ("ORCHESTRATOR_DB_POSTGRES_BINARIES",)


def _section(title: str) -> str:
    return README.read_text().split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def _blocks(section: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section, re.S)


def _clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without any of our settings."""
    base = {
        name: value
        for name, value in os.environ.items()
        if name in MACHINE or not (name.startswith("ORCHESTRATOR_DB_") or name in OURS)
    }
    return {**base, **extra}


@pytest.fixture(scope="module")
def made_run() -> Iterator[tuple[Path, subprocess.CompletedProcess[str]]]:
    """`make run ARGS=--no-serve` from scratch, in a temporary local directory; stopped afterwards."""
    local = Path(tempfile.mkdtemp(prefix="readme-run-", dir="/var/tmp"))
    local.chmod(0o755)  # the embedded server runs as the "postgres" OS user when we are root
    try:
        result = subprocess.run(
            [sys.executable, "-m", "orchestrator_db.launch", "--no-serve"],
            cwd=ROOT,
            env=_clean_environment(ORCHESTRATOR_DB_LOCAL_DIR=str(local)),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        yield local, result
    finally:
        try:
            EmbeddedPostgres(local / "postgres").stop()
        finally:
            shutil.rmtree(local, ignore_errors=True)


def test_run_says_where_the_cluster_and_app_env_are(made_run) -> None:
    """Make sure `make run` names the embedded cluster's directory and says in one line how to load app.env, showing no secret."""
    local, result = made_run
    lines = result.stdout.splitlines()

    assert any(f"data in {local / 'postgres'}" in line for line in lines), result.stdout
    [how] = [line for line in lines if "app.env" in line]
    assert f"set -a; . {local / 'app.env'}; set +a" in how
    secrets = [  # the role passwords and the development key
        line.split("=", 1)[1] for line in (local / "roles.env").read_text().splitlines() if "=" in line
    ] + [line.split(":", 1)[1] for line in (local / "dev-keys.txt").read_text().splitlines() if ":" in line]
    assert len(secrets) == 3
    for secret in secrets:
        assert secret not in result.stdout + result.stderr
    assert oct((local / "app.env").stat().st_mode & 0o777) == "0o600"


@pytest.mark.asyncio
async def test_readme_example_runs_as_written(made_run, tmp_path) -> None:
    """Make sure the README's app example, run by the README's own lines with only app.env loaded,
    prints the masked key and stores it encrypted, for a user `make run` made."""
    local, _ = made_run
    section = _section("Use it from an app")
    [example] = _blocks(section, "python")
    [how_to_run] = _blocks(section, "bash")
    (tmp_path / "example.py").write_text(example)
    script = how_to_run.replace(".local/", f"{local}/").replace(" example.py", f" {tmp_path / 'example.py'}")

    result = subprocess.run(
        ["bash", "-euc", script], cwd=ROOT, env=_clean_environment(), capture_output=True, text=True, timeout=120
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "**********"
    owner = await asyncpg.connect(with_database(EmbeddedPostgres(local / "postgres").url, "orchestrator"))
    try:
        stored = await owner.fetchval(
            "SELECT api_key FROM user_credentials WHERE user_id = 'demo-alice' AND credential_type = 'alpaca'"
        )
    finally:
        await owner.close()
    assert re.match(r"v\d+\.", stored) and "AKXXXX" not in stored


def test_readme_commands_work_when_pasted() -> None:
    """Make sure the Commands section's shell lines run as pasted in a fresh shell, with no database."""
    [commands] = _blocks(_section("Commands"), "bash")

    result = subprocess.run(
        ["bash", "-euc", commands], cwd=ROOT, env=_clean_environment(), capture_output=True, text=True, timeout=120
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "generate_key" in result.stdout and "Traceback" not in result.stderr
    assert re.search(r"^k\d{8}T\d{6}:\S{44}$", result.stdout, re.M), result.stdout
