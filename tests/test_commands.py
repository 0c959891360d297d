"""The `piccolo orchestrator_db` commands as a newcomer meets them, through the real CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from helpers import PICCOLO, ROOT, run_piccolo

from orchestrator_db.devdb import with_credentials
from orchestrator_db.piccolo_app import COMMANDS

NAMES = [command.__name__ for command in COMMANDS]
#: Commands of Piccolo's own catalogue, which our group's help must not print.
PICCOLO_CATALOGUE = ("app new", "asgi new", "migrations forwards", "playground run")


def _piccolo_without_database(*args: str) -> subprocess.CompletedProcess[str]:
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in ("DATABASE_URL", "ORCHESTRATOR_DB_KEYS", "ORCHESTRATOR_DB_KEYS_FILE")
    }
    return subprocess.run(
        [PICCOLO, *args], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120
    )


def _wrong_password_url(app_url: str, app_role: str) -> str:
    return with_credentials(app_url, app_role, "not-the-password-42")


def test_generate_key_needs_no_database() -> None:
    """Make sure `generate_key` prints one key entry with no DATABASE_URL and no key ring set."""
    result = _piccolo_without_database("orchestrator_db", "generate_key", "--key_id=k9")

    assert result.returncode == 0, result.stdout + result.stderr
    assert re.fullmatch(r"k9:[A-Za-z0-9+/_-]{43}=", result.stdout.strip())
    assert result.stderr == ""


@pytest.mark.parametrize("name", NAMES)
def test_each_command_help_needs_no_database(name: str) -> None:
    """Make sure every command's --help works with no DATABASE_URL and shows that command's help."""
    result = _piccolo_without_database("orchestrator_db", name, "--help")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert name in result.stdout and "Usage" in result.stdout


@pytest.mark.parametrize("argv", [["orchestrator_db"], ["orchestrator_db", "--help"], ["orchestrator_db", "-h"]])
def test_group_help_lists_our_commands_one_line_each(argv: list[str]) -> None:
    """Make sure `piccolo orchestrator_db --help` lists each of our commands on one line, and nothing of Piccolo's."""
    result = _piccolo_without_database(*argv)

    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for name in NAMES:
        assert len([line for line in lines if line.split()[:1] == [name]]) == 1, result.stdout
    assert len(lines) <= len(NAMES) + 4
    assert not any(entry in result.stdout for entry in PICCOLO_CATALOGUE)


def test_unknown_command_names_it_and_lists_ours() -> None:
    """Make sure an unknown command exits non-zero, names itself and lists only our commands."""
    result = _piccolo_without_database("orchestrator_db", "rotate_key")

    assert result.returncode == 2
    assert "unknown command 'rotate_key'" in result.stderr
    assert all(name in result.stderr for name in NAMES)
    assert not any(entry in result.stdout + result.stderr for entry in PICCOLO_CATALOGUE)


def test_other_piccolo_commands_are_untouched(test_db) -> None:
    """Make sure Piccolo's own groups still dispatch (the group help answers for our group only)."""
    result = run_piccolo(test_db.owner_url, "migrations", "check")

    assert "orchestrator_db" in result.stdout


def test_check_with_wrong_password_prints_one_line(test_db) -> None:
    """Make sure `check` with a wrong password prints one line naming DATABASE_URL, and no password."""
    url = _wrong_password_url(test_db.app_url, test_db.app_role)

    result = run_piccolo(url, "orchestrator_db", "check", check=False)

    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 2
    assert len(output.splitlines()) == 1, output
    assert "DATABASE_URL" in output and "password" in output
    assert "not-the-password-42" not in output and test_db.app_password not in output


def test_check_with_refused_port_prints_one_line(test_db) -> None:
    """Make sure `check` against a port nobody listens on prints one line naming DATABASE_URL."""
    result = run_piccolo(
        "postgresql://someone:pw-123@127.0.0.1:1/nothing", "orchestrator_db", "check", check=False
    )

    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 2
    assert len(output.splitlines()) == 1, output
    assert "DATABASE_URL" in output and "pw-123" not in output


CONNECTED = """
import asyncio, sys
from orchestrator_db import connected, user_scope

async def main():
    async with connected():
        async with user_scope("anyone") as scope:
            await scope.list_credentials()

try:
    asyncio.run(main())
except Exception as error:
    print(type(error).__name__, error, sep=": ")
"""


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("wrong password", "ConfigurationError"), ("refused port", "ConnectionLost"), ("no database", "ConfigurationError")],
)
def test_connected_raises_typed_errors(test_db, kind: str, expected: str) -> None:
    """Make sure connected() turns a wrong password, a refused port or a missing database into
    the package's typed error naming DATABASE_URL, with no driver traceback and no password."""
    url = {
        "wrong password": _wrong_password_url(test_db.app_url, test_db.app_role),
        "refused port": "postgresql://someone:pw-123@127.0.0.1:1/nothing",
        "no database": test_db.app_url.rsplit("/", 1)[0] + "/no_such_database_here",
    }[kind]
    result = subprocess.run(
        [sys.executable, "-c", CONNECTED],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{expected}: "), result.stdout
    assert "DATABASE_URL" in result.stdout
    assert result.stderr == ""
    for secret in ("not-the-password-42", "pw-123", test_db.app_password):
        assert secret not in result.stdout
