"""The README's example is real code: run it."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _example() -> str:
    section = README.read_text().split("## Use it from an app", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.asyncio
async def test_readme_example_runs(new_user, owner):
    """Make sure the README's app example runs as written and reveals no secret in its output."""
    await new_user("user-123")
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", _example()],
        env=dict(os.environ),  # the application role's DATABASE_URL and the key ring
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "**********"
    stored = await owner.fetchval(
        "SELECT api_key FROM user_credentials WHERE user_id = 'user-123'"
    )
    assert stored.startswith("v1.") and "AKXXXX" not in stored
