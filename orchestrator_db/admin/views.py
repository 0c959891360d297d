"""The tables as the admin panel sees them.

They map the same relations as tables.py, narrowed for the admin: the
credentials class maps the ``user_credentials_admin`` view, which has no
secret columns at all, so neither plaintext nor ciphertext can reach the
admin's API or pages; accounts and users read as e-mail addresses.
"""

from __future__ import annotations

from piccolo.columns import (
    JSONB,
    UUID,
    BigSerial,
    Boolean,
    ForeignKey,
    Integer,
    Text,
    Timestamptz,
    Varchar,
)
from piccolo.columns.readable import Readable
from piccolo.table import Table

from orchestrator_db.tables import CREDENTIAL_TYPE_MAX_LENGTH, UserAccounts


class UserRow(Table, tablename="user"):
    """Better Auth's users, read-only in the admin, shown by e-mail.

    The columns are named as Better Auth names them (``emailVerified``,
    ``createdAt``): piccolo-admin's front end looks a visible column up in
    the schema by its Python name while the schema uses the database name,
    so a snake_case alias leaves the list page blank. Same names, no alias.
    """

    id = Text(primary_key=True, help_text="Better Auth's user id.")
    name = Text(default=None, required=True)
    email = Text(default=None, required=True, unique=True)
    emailVerified = Boolean(default=False)  # noqa: N815 (Better Auth's column name)
    image = Text(null=True, default=None)
    createdAt = Timestamptz()  # noqa: N815
    updatedAt = Timestamptz()  # noqa: N815

    @classmethod
    def get_readable(cls) -> Readable:
        return Readable(template="%s", columns=[cls.email])


class AccountRow(UserAccounts, tablename="user_accounts"):
    """Trading accounts, shown by their owner's e-mail."""

    user_id = ForeignKey(
        references=UserRow,
        null=False,
        required=True,
        help_text="The Better Auth user who owns this account.",
    )

    @classmethod
    def get_readable(cls) -> Readable:
        return Readable(template="%s", columns=[cls.user_id.email])


class CredentialRow(Table, tablename="user_credentials_admin"):
    """Credentials without their secrets (the view has no secret columns)."""

    #: Audit entries name the table the view writes to.
    audit_table_name = "user_credentials"

    id = UUID(primary_key=True)
    user_account_id = ForeignKey(
        references=AccountRow,
        null=False,
        required=True,
        help_text="The account, shown by its owner's e-mail.",
    )
    user_id = Text(default=None, required=True, help_text="Owner's Better Auth user id.")
    credential_type = Varchar(length=CREDENTIAL_TYPE_MAX_LENGTH, default=None, required=True)
    key_id = Text(
        null=True,
        default=None,
        help_text="Id of the key that encrypted the secrets (the secrets themselves never leave the server).",
    )
    is_active = Boolean(default=True, help_text="Inactive credentials are never returned for use.")
    expires_at = Timestamptz(
        null=True, default=None, help_text="Expired credentials are never returned for use."
    )
    created_at = Timestamptz()
    updated_at = Timestamptz()

    @classmethod
    def get_readable(cls) -> Readable:
        return Readable(template="%s", columns=[cls.credential_type])


class AuditEntry(Table, tablename="admin_audit_log"):
    """One write made through the admin panel (append-only)."""

    id = BigSerial(primary_key=True)
    occurred_at = Timestamptz()
    actor_id = Integer(null=True, default=None, help_text="piccolo_user id of the operator.")
    actor_username = Text(default=None, required=True)
    action = Text(default=None, required=True)
    table_name = Text(default=None, required=True)
    row_id = Text(null=True, default=None)
    changes = JSONB(
        default="{}",
        help_text='{"field": {"old": ..., "new": ...}}; secrets only as "secret replaced".',
    )
