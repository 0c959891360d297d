"""The admin's one way to set or replace a credential's secrets.

A superuser types the secrets into this form; the server validates them
with the API's own input model, then writes them through the API's own
write path (``credentials.write_credential``: the same locks, the same
sealing, the same errors) on the operator's transaction, and appends an
audit entry in that transaction. The answer names the credential and the
key id, never a secret.
"""

from __future__ import annotations

import datetime
from typing import Any, Optional

from piccolo_admin.endpoints import FormConfig
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException
from starlette.requests import Request

from orchestrator_db.admin.audit import SECRET_REPLACED, record
from orchestrator_db.admin.views import CredentialRow
from orchestrator_db.connection import fetcher
from orchestrator_db.credentials import Fetch, write_credential
from orchestrator_db.crypto.envelopes import CREDENTIALS_TABLE, SECRET_COLUMNS
from orchestrator_db.crypto.providers import get_key_ring
from orchestrator_db.errors import AccountNotFound
from orchestrator_db.models import validate_credential_input


class CredentialSecretForm(BaseModel):
    """What the form asks for; secrets are SecretStr and never echoed in errors."""

    model_config = ConfigDict(hide_input_in_errors=True, extra="forbid")

    user: str = Field(description="E-mail address or id of the Better Auth user.")
    credential_type: str = Field(description="Provider id, e.g. alpaca or polygon.")
    api_key: SecretStr = Field(description="The new API key. Stored encrypted; never shown again.")
    secret_key: SecretStr = Field(description="The new secret key. Stored encrypted; never shown again.")
    expires_at: Optional[datetime.datetime] = Field(
        default=None, description="Optional expiry (with time zone)."
    )

    def __init__(self, **data: Any) -> None:
        """Validation errors name the field only.

        piccolo-admin returns a ValidationError's JSON to the browser, and
        pydantic puts the input there (for a missing field, the whole form,
        secrets included) whatever ``hide_input_in_errors`` says.
        """
        try:
            super().__init__(**data)
        except ValidationError as error:
            raise ValidationError.from_exception_data(
                error.title,
                [
                    {
                        "type": PydanticCustomError("invalid", "Missing or invalid value"),
                        "loc": detail["loc"],
                        "input": None,
                    }
                    for detail in error.errors()
                ],
            ) from None


# Schema-qualified, like every name in the write path; an exact id wins over an e-mail.
_FIND_USER = (
    'SELECT u.id FROM public."user" AS u WHERE u.email = $1 OR u.id = $1 '
    "ORDER BY u.id = $1 DESC LIMIT 1"
)


async def _find_user_id(fetch: Fetch, user: str) -> str:
    rows = await fetch(_FIND_USER, user)
    if not rows:
        raise ValueError(f"No user with e-mail or id {user!r}.")
    return rows[0]["id"]


async def store_credential_secrets(request: Request, data: CredentialSecretForm) -> str:
    """The form's endpoint: superusers only; encrypts, stores, audits, in one transaction."""
    operator = request.user.user
    if not operator.superuser:
        raise HTTPException(status_code=403, detail="Only superusers can set or replace secrets.")
    try:
        checked = validate_credential_input(
            credential_type=data.credential_type,
            api_key=data.api_key.get_secret_value(),
            secret_key=data.secret_key.get_secret_value(),
            expires_at=data.expires_at,
        )
    except ValidationError as error:
        # Each message names the rule (e.g. "must not be empty or whitespace
        # only"), never the value: the input is not part of a message.
        problems = "; ".join(
            f"{e['loc'][0]}: {e['msg'].removeprefix('Value error, ')}" for e in error.errors()
        )
        raise ValueError(f"Invalid {problems}.") from None

    async with CredentialRow._meta.db.transaction() as transaction:
        fetch = fetcher(transaction.connection)
        user_id = await _find_user_id(fetch, data.user.strip())
        try:
            written = await write_credential(fetch, user_id, checked)
        except AccountNotFound:
            raise ValueError("That user has no trading account yet.") from None
        row_id = written.row["id"]
        changes: dict[str, Any] = {column: SECRET_REPLACED for column in SECRET_COLUMNS}
        if written.previous is not None:
            for field, new in (("expires_at", checked.expires_at), ("is_active", True)):
                old = written.previous[field]
                if old != new:
                    changes[field] = {"old": _iso(old), "new": _iso(new)}
            action = "replace_secret"
        else:
            changes["credential_type"] = {"old": None, "new": checked.credential_type}
            if checked.expires_at is not None:
                changes["expires_at"] = {"old": None, "new": _iso(checked.expires_at)}
            action = "create"
        await record(operator, action, CREDENTIALS_TABLE, row_id, changes)
    key_id = get_key_ring().active_key_id
    verb = "replaced" if written.replaced else "stored"
    return f"Secrets {verb} for {checked.credential_type} of {data.user.strip()} (key {key_id})."


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime.datetime) else value


CREDENTIAL_SECRET_FORM = FormConfig(
    name="Set credential secrets",
    pydantic_model=CredentialSecretForm,
    endpoint=store_credential_secrets,
    description=(
        "Superusers only. Creates a credential, or replaces the API key and secret "
        "key of an existing one (and reactivates it). The secrets are encrypted on "
        "the server and are never shown again."
    ),
)
