"""Pydantic models that applications import.

The read models are generated from the tables with ``create_pydantic_model``
and then tightened: every column of a stored row is required, and the
secrets are ``SecretStr`` so they never show in a repr, str or JSON dump
unless ``get_secret_value()`` is called. The input models validate what a
caller passes in, before any SQL runs.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Annotated, Any

from piccolo.utils.pydantic import create_pydantic_model
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    SecretStr,
    Strict,
    StringConstraints,
    ValidationError,
)

from orchestrator_db.tables import (
    ACCOUNT_NAME_MAX_LENGTH,
    CREDENTIAL_TYPE_MAX_LENGTH,
    UserAccounts,
    UserCredentials,
)

__all__ = [
    "UserAccount",
    "UserCredential",
    "UserAccountCreate",
    "UserCredentialInput",
    "CredentialType",
    "USER_ID_MAX_LENGTH",
    "SECRET_MAX_LENGTH",
    "validate_credential_input",
]

USER_ID_MAX_LENGTH = 255
#: Broker keys are short; a bound keeps a bad caller from storing megabytes.
SECRET_MAX_LENGTH = 4096

# No control characters: PostgreSQL text cannot hold NUL, and ids with
# newlines or escapes only cause grief in logs and admin pages.
_PRINTABLE = r"^[^\x00-\x1f\x7f]+$"

def _storable(value: str) -> str:
    """PostgreSQL stores UTF-8: a lone surrogate cannot be stored or encrypted."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return value


def _storable_secret(value: SecretStr) -> SecretStr:
    text = value.get_secret_value()
    _storable(text)
    if not text.strip():
        # The message names the rule, never the value.
        raise ValueError("must not be empty or whitespace only")
    return value


_UTC = datetime.timezone.utc
# asyncpg stores these two as 'infinity' and '-infinity', so neither is a
# moment; nor is anything whose UTC equivalent falls outside Python's range.
_UNSTORABLE_MOMENTS = (
    datetime.datetime.max.replace(tzinfo=_UTC),
    datetime.datetime.min.replace(tzinfo=_UTC),
)


def _storable_moment(value: datetime.datetime) -> datetime.datetime:
    """A moment PostgreSQL stores as itself: strictly between datetime.min and max in UTC."""
    try:
        in_utc = value.astimezone(_UTC)
    except (OverflowError, ValueError):
        in_utc = None
    if in_utc is None or in_utc in _UNSTORABLE_MOMENTS:
        raise ValueError(
            "must be a moment between years 1 and 9999 in UTC; "
            "for a credential that never expires, pass None"
        )
    return value


AccountName = Annotated[
    str,
    StringConstraints(
        strict=True,
        strip_whitespace=True,
        min_length=1,
        max_length=ACCOUNT_NAME_MAX_LENGTH,
        pattern=_PRINTABLE,
    ),
    AfterValidator(_storable),
]
#: Lower-case provider ids such as ``alpaca`` or ``polygon.io``.
CREDENTIAL_TYPE_PATTERN = r"^[a-z0-9][a-z0-9_.-]*$"
CredentialType = Annotated[
    str,
    StringConstraints(
        strict=True,
        min_length=1,
        max_length=CREDENTIAL_TYPE_MAX_LENGTH,
        pattern=CREDENTIAL_TYPE_PATTERN,
    ),
]
Secret = Annotated[
    SecretStr,
    Strict(),
    StringConstraints(min_length=1, max_length=SECRET_MAX_LENGTH),
    AfterValidator(_storable_secret),
]

#: A timezone-aware datetime, nothing else (no ints, floats, strings or
#: bytes), that PostgreSQL can store as that moment. "Never expires" is None,
#: and only None.
ExpiresAt = Annotated[AwareDatetime, Strict(), AfterValidator(_storable_moment)]

_READ_CONFIG = ConfigDict(from_attributes=True, hide_input_in_errors=True)
# hide_input_in_errors: a ValidationError must never echo a secret back.
_INPUT_CONFIG = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class UserAccount(
    create_pydantic_model(  # type: ignore[misc]
        UserAccounts,
        model_name="UserAccountBase",
        include_default_columns=True,
        pydantic_config=_READ_CONFIG,
    )
):
    """A stored user_accounts row."""

    id: uuid.UUID
    is_active: bool
    created_at: datetime.datetime
    updated_at: datetime.datetime


class UserCredential(
    create_pydantic_model(  # type: ignore[misc]
        UserCredentials,
        model_name="UserCredentialBase",
        include_default_columns=True,
        pydantic_config=_READ_CONFIG,
    )
):
    """A stored user_credentials row, with its secrets decrypted into SecretStr."""

    id: uuid.UUID
    api_key: SecretStr
    secret_key: SecretStr
    is_active: bool
    expires_at: datetime.datetime | None
    created_at: datetime.datetime
    updated_at: datetime.datetime


UserAccount.__name__ = UserAccount.__qualname__ = "UserAccount"
UserCredential.__name__ = UserCredential.__qualname__ = "UserCredential"


class UserAccountCreate(BaseModel):
    """What `create_account` accepts."""

    model_config = _INPUT_CONFIG

    account_name: AccountName


class UserCredentialInput(BaseModel):
    """What `put_credential` accepts; validated before anything is encrypted or written."""

    model_config = _INPUT_CONFIG

    credential_type: CredentialType
    api_key: Secret
    secret_key: Secret
    expires_at: ExpiresAt | None = None


_SECRET_FIELDS = frozenset({"api_key", "secret_key"})
_REDACTED = "**********"


def _without_secret_inputs(error: ValidationError) -> ValidationError:
    """The same errors, minus the rejected secret values.

    ``hide_input_in_errors`` only hides inputs from ``str()``; ``errors()``
    (what FastAPI returns in a 422) would still carry them.
    """
    details: list[Any] = []
    for item in error.errors(include_url=False):
        detail: dict[str, Any] = dict(item)
        if detail["loc"] and detail["loc"][0] in _SECRET_FIELDS:
            detail["input"] = _REDACTED
        details.append(
            {key: detail[key] for key in ("type", "loc", "input", "ctx") if key in detail}
        )
    return ValidationError.from_exception_data(error.title, details, hide_input=True)


def validate_credential_input(**values: object) -> UserCredentialInput:
    """UserCredentialInput(**values), raising a ValidationError that holds no secret."""
    try:
        return UserCredentialInput.model_validate(values)
    except ValidationError as error:
        raise _without_secret_inputs(error) from None
