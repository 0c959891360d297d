"""An app process for the Transit tests: starts like an app, then obeys stdin.

It opens the pool (which loads the Transit-wrapped key ring) and prints
``{"ready": true}``, or the typed error that stopped it and exits 3. Then
each line on stdin is a JSON command, answered by one JSON line:

- ``{"op": "account", "user": U}``
- ``{"op": "put", "user": U, "type": T, "api_key": A, "secret_key": S}``
- ``{"op": "get", "user": U, "type": T}``: the decrypted api and secret key

A typed error of the package is answered as ``{"error": name, "message": m}``;
anything else crashes the worker, which the test sees.
"""

from __future__ import annotations

import asyncio
import json
import sys

from orchestrator_db import OrchestratorDBError, connected, user_scope


async def _obey(command: dict) -> dict:
    async with user_scope(command["user"]) as scope:
        if command["op"] == "account":
            await scope.create_account("Transit Account")
            return {"ok": True}
        if command["op"] == "put":
            await scope.put_credential(command["type"], command["api_key"], command["secret_key"])
            return {"ok": True}
        credential = await scope.get_credential(command["type"])
        return {
            "api_key": credential.api_key.get_secret_value(),
            "secret_key": credential.secret_key.get_secret_value(),
        }


def _say(answer: dict) -> None:
    print(json.dumps(answer), flush=True)


async def main() -> int:
    try:
        async with connected():
            _say({"ready": True})
            loop = asyncio.get_running_loop()
            while line := await loop.run_in_executor(None, sys.stdin.readline):
                try:
                    _say(await _obey(json.loads(line)))
                except OrchestratorDBError as error:
                    _say({"error": type(error).__name__, "message": str(error)})
    except OrchestratorDBError as error:
        _say({"error": type(error).__name__, "message": str(error)})
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
