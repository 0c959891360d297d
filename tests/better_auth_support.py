"""The real Better Auth (Node, from npm) for the session tests.

``tests/better_auth/driver.mjs`` runs Better Auth 1.7 as pinned by
``tests/better_auth/package-lock.json`` (`make test` runs ``npm ci``). The
tests send it one JSON request per line and read one answer per line: sign
up, sign in, get the session, sign out, delete the user, all through
``auth.api``, against the suite's database as its owner (Better Auth's
tables belong to the deployment's migration role, as in production).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import uuid
from dataclasses import dataclass, field
from typing import Any

from helpers import ROOT

DRIVER_DIR = ROOT / "tests" / "better_auth"
DRIVER = DRIVER_DIR / "driver.mjs"


def new_secret() -> str:
    """A fresh Better Auth secret (what `openssl rand -base64 32` gives)."""
    return secrets.token_urlsafe(32)


class BetterAuthFailed(AssertionError):
    """Better Auth's API answered with an error."""

    def __init__(self, message: str, status: Any) -> None:
        super().__init__(f"Better Auth: {message} (status {status})")
        self.status = status


@dataclass(frozen=True)
class Issued:
    """What a sign-up or sign-in hands the client."""

    user_id: str
    cookie: str = field(repr=False)  # the Cookie header the browser sends back
    bearer: str | None = field(repr=False)  # set-auth-token, for Authorization: Bearer
    set_cookie: tuple[str, ...] = field(repr=False)

    def cookie_value(self, name: str = "better-auth.session_token") -> str:
        for part in self.cookie.split("; "):
            key, _, value = part.partition("=")
            if key == name:
                return value
        raise AssertionError(f"Better Auth set no {name} cookie")


@dataclass
class BetterAuthConfig:
    """One Better Auth instance: its secret variables and options."""

    database_url: str = field(repr=False)
    env: dict[str, str] = field(repr=False)
    secure: bool = False
    cookie_cache: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "databaseUrl": self.database_url,
            "env": self.env,
            "secure": self.secure,
            "cookieCache": self.cookie_cache,
        }


class BetterAuth:
    """The Node driver process; one per test module."""

    def __init__(self) -> None:
        self._process: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        node = shutil.which("node")
        if node is None:
            raise AssertionError("node is not installed: the session tests need Node 20")
        if not (DRIVER_DIR / "node_modules" / "better-auth" / "package.json").exists():
            raise AssertionError(
                "Better Auth is not installed: run `make test`, or "
                "`npm ci --prefix tests/better_auth`"
            )
        self._process = await asyncio.create_subprocess_exec(
            node,
            str(DRIVER),
            cwd=DRIVER_DIR,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=2**20,
        )

    async def close(self) -> None:
        if self._process is None:
            return
        assert self._process.stdin is not None
        self._process.stdin.close()
        try:
            await asyncio.wait_for(self._process.wait(), 10)
        except TimeoutError:
            self._process.kill()
            await self._process.wait()

    async def call(self, op: str, **request: Any) -> Any:
        process = self._process
        assert process is not None and process.stdin is not None and process.stdout is not None
        async with self._lock:
            process.stdin.write((json.dumps({"op": op, **request}) + "\n").encode())
            await process.stdin.drain()
            while True:
                line = await asyncio.wait_for(process.stdout.readline(), 60)
                if not line:
                    raise AssertionError(f"the Better Auth driver exited during {op}")
                if line.startswith(b"@@"):
                    break
        answer = json.loads(line[2:])
        if not answer["ok"]:
            raise BetterAuthFailed(answer["error"], answer["status"])
        return answer["result"]

    # Better Auth's own API ##################################################

    async def migrate(self, config: BetterAuthConfig) -> dict[str, list[str]]:
        return await self.call("migrate", config=config.as_json())

    async def sign_up(
        self, config: BetterAuthConfig, email: str | None = None, password: str = "correct horse 1"
    ) -> Issued:
        email = email or f"trader-{uuid.uuid4().hex[:12]}@example.test"
        result = await self.call(
            "signUp", config=config.as_json(), email=email, password=password
        )
        return _issued(result)

    async def sign_in(self, config: BetterAuthConfig, email: str, password: str) -> Issued:
        result = await self.call(
            "signIn", config=config.as_json(), email=email, password=password
        )
        return _issued(result)

    async def session_user(
        self,
        config: BetterAuthConfig,
        *,
        cookie: str | None = None,
        authorization: str | None = None,
    ) -> str | None:
        """Better Auth's own verdict: auth.api.getSession's user id, or None."""
        result = await self.call(
            "getSession", config=config.as_json(), cookie=cookie, authorization=authorization
        )
        return result["userId"]

    async def sign_out(self, config: BetterAuthConfig, cookie: str) -> None:
        result = await self.call("signOut", config=config.as_json(), cookie=cookie)
        assert result["success"] is True

    async def delete_user(self, config: BetterAuthConfig, cookie: str, password: str) -> None:
        result = await self.call(
            "deleteUser", config=config.as_json(), cookie=cookie, password=password
        )
        assert result["success"] is True


def _issued(result: dict[str, Any]) -> Issued:
    return Issued(
        user_id=result["userId"],
        cookie=result["cookie"],
        bearer=result["bearer"],
        set_cookie=tuple(result["setCookie"]),
    )
