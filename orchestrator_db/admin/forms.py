"""The admin's one way to set or replace a credential's secrets.

A superuser types the secrets into this form; the server validates them
with the API's own input model, encrypts them with the key ring bound to the
row, column and user exactly as ``UserScope.put_credential`` does, stores
them and appends an audit entry, all in one transaction. The answer names
the credential and the key id, never a secret.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any, Optional

from piccolo_admin.endpoints import FormConfig
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException
from starlette.requests import Request

from orchestrator_db.admin.audit import SECRET_REPLACED, record
from orchestrator_db.admin.views import AccountRow, CredentialRow, UserRow
from orchestrator_db.crypto import envelopes
from orchestrator_db.crypto.envelopes import CREDENTIALS_TABLE as CREDENTIALS
from orchestrator_db.crypto.envelopes import SECRET_COLUMNS
from orchestrator_db.crypto.providers import get_key_ring
from orchestrator_db.models import UserCredentialInput


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


def seal(row_id: uuid.UUID, user_id: str, secrets: dict[str, str]) -> dict[str, str]:
    """Encrypt each secret column for this row and user, as the API does."""
    ring = get_key_ring()
    return {
        column: envelopes.seal(ring, secrets[column], column=column, row_id=row_id, user_id=user_id)
        for column in SECRET_COLUMNS
    }


async def _find_user_id(user: str) -> str:
    row = await UserRow.select(UserRow.id).where((UserRow.email == user) | (UserRow.id == user)).first()
    if row is None:
        raise ValueError(f"No user with e-mail or id {user!r}.")
    return row["id"]


async def store_credential_secrets(request: Request, data: CredentialSecretForm) -> str:
    """The form's endpoint: superusers only; encrypts, stores, audits, in one transaction."""
    operator = request.user.user
    if not operator.superuser:
        raise HTTPException(status_code=403, detail="Only superusers can set or replace secrets.")
    try:
        checked = UserCredentialInput(
            credential_type=data.credential_type,
            api_key=data.api_key.get_secret_value(),
            secret_key=data.secret_key.get_secret_value(),
            expires_at=data.expires_at,
        )
    except ValidationError as error:
        fields = ", ".join(str(e["loc"][0]) for e in error.errors())
        raise ValueError(f"Invalid {fields}.") from None

    async with CredentialRow._meta.db.transaction():
        user_id = await _find_user_id(data.user.strip())
        account = await AccountRow.raw(
            "SELECT id FROM user_accounts WHERE user_id = {} FOR NO KEY UPDATE", user_id
        )
        if not account:
            raise ValueError("That user has no trading account yet.")
        account_id = account[0]["id"]
        existing = await CredentialRow.select(
            CredentialRow.id, CredentialRow.is_active, CredentialRow.expires_at
        ).where(
            (CredentialRow.user_account_id == account_id)
            & (CredentialRow.credential_type == checked.credential_type)
        ).first()
        row_id = existing["id"] if existing else uuid.uuid4()
        envelopes = seal(
            row_id,
            user_id,
            {
                "api_key": checked.api_key.get_secret_value(),
                "secret_key": checked.secret_key.get_secret_value(),
            },
        )
        changes: dict[str, Any] = {column: SECRET_REPLACED for column in SECRET_COLUMNS}
        if existing:
            await CredentialRow.raw(
                f"UPDATE {CREDENTIALS} SET api_key = {{}}, secret_key = {{}}, "
                "expires_at = {}, is_active = true WHERE id = {}",
                envelopes["api_key"], envelopes["secret_key"], checked.expires_at, row_id,
            )
            for field, new in (("expires_at", checked.expires_at), ("is_active", True)):
                if existing[field] != new:
                    changes[field] = {"old": _iso(existing[field]), "new": _iso(new)}
            action = "replace_secret"
        else:
            await CredentialRow.raw(
                f"INSERT INTO {CREDENTIALS} (id, user_account_id, user_id, credential_type, "
                "api_key, secret_key, expires_at) VALUES ({}, {}, {}, {}, {}, {}, {})",
                row_id, account_id, user_id, checked.credential_type,
                envelopes["api_key"], envelopes["secret_key"], checked.expires_at,
            )
            changes["credential_type"] = {"old": None, "new": checked.credential_type}
            if checked.expires_at is not None:
                changes["expires_at"] = {"old": None, "new": _iso(checked.expires_at)}
            action = "create"
        await record(operator, action, CREDENTIALS, row_id, changes)
    key_id = get_key_ring().active_key_id
    verb = "replaced" if existing else "stored"
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
