"""The schema, as Piccolo tables.

Anything Piccolo cannot express (CHECKs, the composite foreign key that pins
user_credentials.user_id to its account's owner, named indexes, comments,
triggers, row-level security) lives in the raw migrations that follow the
auto migration in ``piccolo_migrations/``.
"""

from __future__ import annotations

import warnings

from piccolo.columns import (
    UUID,
    Boolean,
    ForeignKey,
    OnDelete,
    Text,
    Timestamptz,
    Varchar,
)
from piccolo.constraints import Unique
from piccolo.table import Table

ACCOUNT_NAME_MAX_LENGTH = 255
CREDENTIAL_TYPE_MAX_LENGTH = 50


# Piccolo warns that "user" is a reserved word; the name is Better Auth's choice.
warnings.filterwarnings("ignore", message=".*`user` is a reserved keyword")


class BetterAuthUser(Table, tablename="user"):
    """Better Auth's ``"user"`` table, mapped read-only.

    Better Auth owns it, so it is not in this app's ``table_classes``: the
    first raw migration creates it (in Better Auth 1.7's exact shape) only if
    it does not exist yet.
    """

    id = Text(primary_key=True, help_text="Better Auth's user id.")
    name = Text(default=None, required=True)
    email = Text(default=None, required=True, unique=True)
    email_verified = Boolean(db_column_name="emailVerified", default=False)
    image = Text(null=True, default=None)
    created_at = Timestamptz(db_column_name="createdAt")
    updated_at = Timestamptz(db_column_name="updatedAt")


class UserAccounts(Table, tablename="user_accounts"):
    """One trading account per Better Auth user."""

    id = UUID(primary_key=True)
    user_id = ForeignKey(
        references=BetterAuthUser,
        on_delete=OnDelete.cascade,
        null=False,
        required=True,
        help_text="The Better Auth user who owns this account; never empty.",
    )
    account_name = Varchar(
        length=ACCOUNT_NAME_MAX_LENGTH,
        default=None,
        required=True,
        help_text="Display name, e.g. 'Paper Account'.",
    )
    is_active = Boolean(default=True)
    created_at = Timestamptz()
    updated_at = Timestamptz(help_text="Kept current by a trigger on every UPDATE.")

    # One account per user; this unique constraint doubles as the RLS index.
    idx_user_accounts_user_id = Unique([user_id])
    # Target of the composite foreign key from user_credentials.
    user_accounts_id_user_id_key = Unique([id, user_id])


class UserCredentials(Table, tablename="user_credentials"):
    """A user's API credentials for one provider; secrets are envelopes."""

    id = UUID(primary_key=True)
    user_account_id = ForeignKey(
        references=UserAccounts,
        on_delete=OnDelete.cascade,
        null=False,
        required=True,
    )
    user_id = Text(
        default=None,
        required=True,
        help_text="Owner's user id, denormalized so RLS policies need no join.",
    )
    credential_type = Varchar(
        length=CREDENTIAL_TYPE_MAX_LENGTH,
        default=None,
        required=True,
        help_text="Short lowercase provider id: 'alpaca', 'polygon', ...",
    )
    api_key = Text(
        default=None,
        required=True,
        secret=True,
        help_text="AES-256-GCM envelope bound to this row, column and user.",
    )
    secret_key = Text(
        default=None,
        required=True,
        secret=True,
        help_text="AES-256-GCM envelope bound to this row, column and user.",
    )
    is_active = Boolean(default=True)
    expires_at = Timestamptz(null=True, default=None)
    created_at = Timestamptz()
    updated_at = Timestamptz(help_text="Kept current by a trigger on every UPDATE.")

    idx_user_credentials_unique = Unique([user_account_id, credential_type])


#: The tables row-level security isolates by ``user_id``.
TENANT_TABLES: tuple[str, ...] = (UserAccounts._meta.tablename, UserCredentials._meta.tablename)
