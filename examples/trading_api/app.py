"""A small trading API: each signed-in Better Auth user manages their own broker keys.

Better Auth (Node) signs users in; this Python app receives their session
cookie or bearer token, and ``current_user_scope`` turns it into that user's
``user_scope``. Nothing here can reach another user's rows: the scope runs
under row-level security as the signed-in user. Run it as the README's
"Example: a FastAPI app behind Better Auth" says::

    .venv/bin/uvicorn examples.trading_api.app:app --port 8100
"""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, SecretStr, ValidationError

from orchestrator_db import (
    AccountNotFound,
    CredentialNotFound,
    UserScope,
    connected,
    current_user_scope,
)

#: The trading account every user gets on their first PUT.
ACCOUNT_NAME = "Trading Account"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with connected():  # the connection pool, for the app's lifetime
        yield


app = FastAPI(title="trading_api (orchestrator_db example)", lifespan=lifespan)

#: Every route that takes this runs only for a signed-in user, in their scope.
Scope = Annotated[UserScope, Depends(current_user_scope)]


class CredentialOut(BaseModel):
    """What a client may see of a credential: never its secrets."""

    credential_type: str
    is_active: bool
    expires_at: datetime.datetime | None


class KeyPair(BaseModel):
    api_key: SecretStr
    secret_key: SecretStr
    expires_at: datetime.datetime | None = None


@app.exception_handler(RequestValidationError)
async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
    """FastAPI's default 422 echoes the input, which may be a key: name the fields only."""
    fields = sorted({".".join(str(part) for part in e["loc"]) for e in error.errors()})
    return JSONResponse({"detail": {"error": "invalid_request", "fields": fields}}, 422)


def _invalid(error: ValidationError) -> HTTPException:
    fields = sorted({".".join(str(part) for part in e["loc"]) for e in error.errors()})
    return HTTPException(422, detail={"error": "invalid_credential", "fields": fields})


@app.get("/credentials")
async def list_credentials(scope: Scope) -> list[CredentialOut]:
    """The signed-in user's credentials: type, active state and expiry."""
    credentials = await scope.list_credentials(include_inactive=True)
    return [
        CredentialOut(
            credential_type=c.credential_type, is_active=c.is_active, expires_at=c.expires_at
        )
        for c in credentials
    ]


@app.put("/credentials/{credential_type}")
async def put_credential(credential_type: str, keys: KeyPair, scope: Scope) -> CredentialOut:
    """Store (or replace) a key pair; the user's account is made on first use."""
    try:
        await scope.get_account()
    except AccountNotFound:
        await scope.create_account(ACCOUNT_NAME)
    try:
        stored = await scope.put_credential(
            credential_type,
            api_key=keys.api_key.get_secret_value(),
            secret_key=keys.secret_key.get_secret_value(),
            expires_at=keys.expires_at,
        )
    except ValidationError as error:
        raise _invalid(error) from None
    return CredentialOut(
        credential_type=stored.credential_type,
        is_active=stored.is_active,
        expires_at=stored.expires_at,
    )


@app.delete("/credentials/{credential_type}", status_code=204)
async def delete_credential(credential_type: str, scope: Scope) -> Response:
    """Remove one of the user's credentials; 404 if they have none of that type."""
    try:
        await scope.delete_credential(credential_type)
    except ValidationError as error:
        raise _invalid(error) from None
    except CredentialNotFound:
        raise HTTPException(404, detail={"error": "not_found"}) from None
    return Response(status_code=204)
