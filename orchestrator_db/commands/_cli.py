"""`piccolo orchestrator_db` with no, an unknown or a ``--help`` command: our commands, one line each.

Piccolo's CLI (targ) answers those with "Unrecognised command" and the
whole catalogue of Piccolo's own commands, and exits 0. Piccolo builds its
``targ.CLI`` before it imports our app, so the only hook is the class's
``run``: wrapped here, it answers for our group and hands everything else
to targ unchanged.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from typing import Any

import targ

HELP_WORDS = ("--help", "-h", "help")


def summary(command: Callable[..., Any]) -> str:
    """The first line of a command's docstring."""
    return (command.__doc__ or "").strip().splitlines()[0] if command.__doc__ else ""


def usage(app_name: str, commands: Sequence[Callable[..., Any]]) -> str:
    width = max(len(command.__name__) for command in commands)
    lines = [
        f"usage: piccolo {app_name} <command> [--flag=value ...]"
        f"  (`piccolo {app_name} <command> --help` for its flags)",
        "",
        "commands:",
    ]
    lines += [f"  {command.__name__:<{width}}  {summary(command)}" for command in commands]
    return "\n".join(lines)


def answer_for_group(app_name: str, commands: Sequence[Callable[..., Any]], argv: Sequence[str]) -> int | None:
    """The exit code if ``argv`` (without the program) is ours to answer, else None."""
    words = [word for word in argv if word != "--trace"]
    if not words or words[0] != app_name:
        return None
    names = {command.__name__ for command in commands}
    if len(words) > 1 and words[1] in names:
        return None
    if len(words) == 1 or words[1] in HELP_WORDS:
        print(usage(app_name, commands))
        return 0
    print(f"error: unknown command {words[1]!r}\n", file=sys.stderr)
    print(usage(app_name, commands), file=sys.stderr)
    return 2


def list_our_commands(app_name: str, commands: Sequence[Callable[..., Any]]) -> None:
    """Make `piccolo <app_name>` answer its help and unknown commands itself (idempotent)."""
    original = targ.CLI.run
    if getattr(original, "_orchestrator_db_group", None) == app_name:
        return

    @functools.wraps(original)
    def run(self: targ.CLI, *args: Any, **kwargs: Any) -> Any:
        code = answer_for_group(app_name, commands, sys.argv[1:])
        if code is not None:
            sys.exit(code)
        return original(self, *args, **kwargs)

    run._orchestrator_db_group = app_name  # type: ignore[attr-defined]
    targ.CLI.run = run  # type: ignore[method-assign]
