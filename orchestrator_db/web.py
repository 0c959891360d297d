"""From a web request to the signed-in user's scope: FastAPI and Starlette.

FastAPI::

    @app.get("/credentials")
    async def list_types(scope: UserScope = Depends(current_user_scope)) -> list[str]:
        return [c.credential_type for c in await scope.list_credentials()]

The route runs only for a signed-in Better Auth user, inside
``user_scope(user_id)``: the scope commits when the route returns and rolls
back when it raises (an HTTPException too), before the response is sent, so
a failed commit is a 500, never a 200 for a write that was lost. A request
without a valid session gets 401 with ``{"detail": {"error":
"not_authenticated", "reason": ...}}``; the token never appears in it.

Starlette (no dependency injection)::

    async def endpoint(request):
        async with request_user_scope(request) as scope:
            ...

    app = Starlette(routes=..., exception_handlers={NotAuthenticated: not_authenticated_response})
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse

from orchestrator_db.credentials import UserScope
from orchestrator_db.errors import NotAuthenticated
from orchestrator_db.scope import user_scope
from orchestrator_db.sessions import authenticate

#: Sent with every 401, as RFC 9110 asks; the reason is in the body.
CHALLENGE = {"WWW-Authenticate": "Bearer"}


def _body(error: NotAuthenticated) -> dict[str, str]:
    return {"error": "not_authenticated", "reason": error.reason}


async def request_user_id(connection: HTTPConnection) -> str:
    """The signed-in user's id, from the request's Cookie and Authorization headers."""
    cookies = connection.headers.getlist("cookie")  # HTTP/2 may split them
    return await authenticate(
        cookie="; ".join(cookies) if cookies else None,
        authorization=connection.headers.get("authorization"),
    )


@asynccontextmanager
async def request_user_scope(connection: HTTPConnection) -> AsyncIterator[UserScope]:
    """``user_scope`` for the request's signed-in user; raises NotAuthenticated."""
    user_id = await request_user_id(connection)
    async with user_scope(user_id) as scope:
        yield scope


async def not_authenticated_response(request: Request, error: Exception) -> JSONResponse:
    """Starlette exception handler for NotAuthenticated: 401, the reason, no token."""
    assert isinstance(error, NotAuthenticated)
    return JSONResponse({"detail": _body(error)}, status_code=401, headers=CHALLENGE)


async def _scope_for_request(request: Request) -> AsyncIterator[UserScope]:
    try:
        user_id = await request_user_id(request)
    except NotAuthenticated as error:
        raise HTTPException(401, detail=_body(error), headers=CHALLENGE) from None
    async with user_scope(user_id) as scope:
        yield scope


async def current_user_scope(
    # scope="function": the scope ends when the route returns, before the
    # response is sent (FastAPI's default would commit after sending it).
    scope: Annotated[UserScope, Depends(_scope_for_request, scope="function")],
) -> UserScope:
    """FastAPI dependency: the signed-in user's ``user_scope``, or a 401."""
    return scope


#: ``scope: CurrentUserScope`` in a route's signature, the Annotated spelling.
CurrentUserScope = Annotated[UserScope, Depends(current_user_scope)]
