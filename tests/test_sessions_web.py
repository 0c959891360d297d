"""current_user_scope (FastAPI) and request_user_scope (Starlette), with real Better Auth
cookies: the scope commits before the response is sent and rolls back on error."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from orchestrator_db import AccountNotFound, NotAuthenticated, UserScope, current_user_scope
from orchestrator_db.web import CurrentUserScope, not_authenticated_response, request_user_scope

pytestmark = pytest.mark.asyncio(loop_scope="session")


events: list[str] = []
api = FastAPI()


@api.post("/account")
async def create(scope: UserScope = Depends(current_user_scope)) -> dict[str, str]:  # noqa: B008
    await scope.create_account("Paper Account")
    return {"user_id": scope.user_id}


@api.post("/account-then-fail")
async def create_then_fail(scope: CurrentUserScope) -> None:
    await scope.create_account("Paper Account")
    raise HTTPException(409, detail="changed my mind")


@api.get("/account")
async def read(scope: CurrentUserScope) -> dict[str, str]:
    try:
        account = await scope.get_account()
    except AccountNotFound:
        raise HTTPException(404) from None
    return {"name": account.account_name}


async def starlette_account(request: Request) -> JSONResponse:
    async with request_user_scope(request) as scope:
        account = await scope.get_account()
    return JSONResponse({"name": account.account_name})


plain = Starlette(
    routes=[Route("/account", starlette_account)],
    exception_handlers={NotAuthenticated: not_authenticated_response},
)


def client(asgi) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url="http://t.test")


async def test_scope_commits_when_the_route_returns_and_rolls_back_when_it_raises(
    better_auth, config
) -> None:
    """Make sure a write in a route that raises is rolled back, and one in a route that
    returns is committed (visible to the next request)."""
    issued = await better_auth.sign_up(config)
    headers = {"cookie": issued.cookie}
    async with client(api) as http:
        failed = await http.post("/account-then-fail", headers=headers)
        assert failed.status_code == 409
        assert (await http.get("/account", headers=headers)).status_code == 404
        created = await http.post("/account", headers=headers)
        assert created.json() == {"user_id": issued.user_id}
        assert (await http.get("/account", headers=headers)).json() == {"name": "Paper Account"}


def probed(asgi, probe):
    """The app, with ``probe`` run just as the response starts to be sent."""

    async def app(scope, receive, send):
        async def sending(message):
            if message["type"] == "http.response.start":
                await probe()
            await send(message)

        await asgi(scope, receive, sending)

    return app


async def _scope_after_response(request: Request) -> AsyncIterator[UserScope]:
    """The same scope as a FastAPI-default ("request") dependency: ends after sending."""
    async with request_user_scope(request) as scope:
        yield scope


@api.post("/account-late")
async def create_late(scope: UserScope = Depends(_scope_after_response)) -> None:  # noqa: B008
    await scope.create_account("Paper Account")


async def test_scope_is_committed_before_the_response_is_sent(better_auth, config, owner) -> None:
    """Make sure the account is committed by the time the response starts (the
    dependency ends before sending, as FastAPI's default scope would not)."""
    seen: list[tuple[str, int]] = []
    for path in ("/account", "/account-late"):
        issued = await better_auth.sign_up(config)

        async def probe() -> None:
            count = await owner.fetchval(
                "SELECT count(*) FROM user_accounts WHERE user_id = $1", issued.user_id
            )
            seen.append((path, count))

        async with client(probed(api, probe)) as http:
            response = await http.post(path, headers={"cookie": issued.cookie})
        assert response.status_code == 200
    assert seen == [("/account", 1), ("/account-late", 0)]


async def test_starlette_request_user_scope(better_auth, config) -> None:
    """Make sure plain Starlette gets the same scope and the same 401 body."""
    issued = await better_auth.sign_up(config)
    async with client(api) as http:
        assert (await http.post("/account", headers={"cookie": issued.cookie})).status_code == 200
    async with client(plain) as http:
        ok = await http.get("/account", headers={"authorization": f"Bearer {issued.bearer}"})
        assert ok.json() == {"name": "Paper Account"}
        refused = await http.get("/account")
        assert refused.status_code == 401
        assert refused.json() == {"detail": {"error": "not_authenticated", "reason": "missing"}}
