"""piccolo-admin wiring: one explicit TableConfig per table, in sections.

piccolo-admin's defaults are unsafe for this data (see issue 6), so every
default that matters is overridden here:

- ``auto_include_related=False``: only the tables configured below appear.
- Credentials are shown through ``CredentialRow`` (the secret-free view), so
  no secret, plaintext or ciphertext, can reach the admin's API or pages;
  they are created and their secrets replaced only by a superuser form that
  encrypts on the server (admin_forms.py).
- PUT is refused everywhere (it skips hooks and replaces whole rows); every
  other write is recorded in the audit log (audit.py).
- Only active admins can log in; sessions last 30 minutes idle, 8 hours at
  most; logins are rate limited; CSRF protection is piccolo-admin's own.

The admin connects to PostgreSQL as the operator role (BYPASSRLS): it must
see every user's rows. See admin_host.py for how it is served.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from piccolo.table import Table
from piccolo_admin.endpoints import AdminRouter, TableConfig, create_admin
from piccolo_api.crud.endpoints import OrderBy, PiccoloCRUD
from piccolo_api.crud.hooks import Hook, HookType
from piccolo_api.crud.validators import Validators
from piccolo_api.mfa.authenticator.provider import AuthenticatorProvider
from piccolo_api.mfa.authenticator.tables import AuthenticatorSecret
from piccolo_api.rate_limiting.middleware import InMemoryLimitProvider
from starlette.exceptions import HTTPException
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import Request
from starlette.routing import Mount

from orchestrator_db.admin.audit import AuditMiddleware, snapshot
from orchestrator_db.admin.auth import (
    SESSION_IDLE,
    SESSION_MAX,
    KeyRingMFAEncryption,
    MFARequired,
    Operator,
    OperatorSession,
)
from orchestrator_db.admin.forms import CREDENTIAL_SECRET_FORM
from orchestrator_db.admin.views import AccountRow, AuditEntry, CredentialRow, UserRow
from orchestrator_db.crypto.providers import get_key_ring
from orchestrator_db.engine import get_engine
from orchestrator_db.errors import ConfigurationError
from orchestrator_db.settings import AdminSettings, admin_settings

#: Login attempts allowed per client address in LOGIN_WINDOW_SECONDS; past
#: them the address is refused (429) for LOGIN_WINDOW_SECONDS. Behind a
#: reverse proxy, run uvicorn with --proxy-headers so the address is the client's.
LOGIN_ATTEMPTS = 20
LOGIN_WINDOW_SECONDS = 300

TRADING = "Trading data"
OPERATORS = "Operators"


# Validators ##################################################################


def _refuse(reason: str):
    def refuse(piccolo_crud: PiccoloCRUD, request: Request) -> None:
        raise HTTPException(status_code=405, detail=reason)

    return refuse


def superuser_only(piccolo_crud: PiccoloCRUD, request: Request) -> None:
    if not request.user.user.superuser:
        raise HTTPException(status_code=403, detail="Only superusers can do this.")


_NO_PUT = _refuse("PUT is disabled in this admin; use PATCH.")
_NO_BULK_DELETE = _refuse("Bulk delete is disabled; delete rows one at a time.")
_READ_ONLY = _refuse("This table is read-only in the admin.")


def _read_only(**reads: Any) -> Validators:
    return Validators(
        post_single=[_READ_ONLY],
        put_single=[_READ_ONLY],
        patch_single=[_READ_ONLY],
        delete_single=[_READ_ONLY],
        delete_all=[_READ_ONLY],
        **reads,
    )


# Better Auth's camelCase columns ##############################################
# piccolo_api filters on a column whose db_column_name differs from its name
# (emailVerified, createdAt, updatedAt) silently match nothing; refuse them.
_CAMEL_CASE = frozenset(
    column._meta.name
    for column in UserRow._meta.columns
    if column._meta.db_column_name != column._meta.name
)


def no_camel_case_filters(piccolo_crud: PiccoloCRUD, request: Request) -> None:
    for param in request.query_params:
        if param.split("__")[0] in _CAMEL_CASE:
            raise HTTPException(
                status_code=400,
                detail=f"Filtering on {param.split('__')[0]} is not supported; "
                "filter on id, name or email.",
            )


# Credentials: what an operator may change ####################################

#: Fields an operator (not only a superuser) may change on a credential.
CREDENTIAL_EDITABLE = frozenset({"is_active", "expires_at"})
#: Set by the database; the edit form sends them back, so they are dropped.
CREDENTIAL_SYSTEM = frozenset({"id", "key_id", "created_at", "updated_at"})


async def credential_patch_rules(row_id: Any, values: dict, request: Request) -> dict:
    """Keep only real changes, and refuse any to fields other than CREDENTIAL_EDITABLE.

    piccolo-admin's edit form sends every field back, timestamps rounded to
    the second; the unchanged and database-maintained ones are dropped so the
    UPDATE touches only what the operator changed.
    """
    current = await snapshot(CredentialRow, row_id)
    if current is None:
        raise HTTPException(status_code=404, detail="No such credential.")
    kept = {}
    for column, value in values.items():
        name = column._meta.name
        if name in CREDENTIAL_SYSTEM or value == current.get(name):
            continue
        if name not in CREDENTIAL_EDITABLE and str(value) != str(current.get(name)):
            raise HTTPException(
                status_code=403,
                detail=f"{name} cannot be changed here; only active and expires_at can. "
                "Use the 'Set credential secrets' form for secrets.",
            )
        if name in CREDENTIAL_EDITABLE:
            kept[column] = value
    # Piccolo refuses an empty UPDATE; the view's trigger skips a no-op one.
    return kept or {CredentialRow.is_active: current["is_active"]}


# Tables ######################################################################

USER = TableConfig(
    UserRow,
    validators=_read_only(get_all=[no_camel_case_filters], get_count=[no_camel_case_filters]),
    # Better Auth's camelCase columns (emailVerified, createdAt, updatedAt) are
    # shown but never offered as filters: piccolo-admin mishandles them.
    visible_columns=[UserRow.id, UserRow.name, UserRow.email, UserRow.email_verified, UserRow.created_at],
    visible_filters=[UserRow.id, UserRow.name, UserRow.email],
    menu_group=TRADING,
)

ACCOUNTS = TableConfig(
    AccountRow,
    validators=Validators(
        post_single=[superuser_only],
        put_single=[_NO_PUT],
        patch_single=[superuser_only],
        delete_single=[superuser_only],
        delete_all=[_NO_BULK_DELETE],
    ),
    visible_columns=[
        AccountRow.account_name,
        AccountRow.user_id,
        AccountRow.is_active,
        AccountRow.created_at,
        AccountRow.updated_at,
    ],
    visible_filters=[AccountRow.account_name, AccountRow.user_id, AccountRow.is_active],
    link_column=AccountRow.account_name,
    order_by=[OrderBy(AccountRow.created_at, ascending=False)],
    menu_group=TRADING,
)

CREDENTIALS = TableConfig(
    CredentialRow,
    validators=Validators(
        post_single=[_refuse("Create credentials with the 'Set credential secrets' form.")],
        put_single=[_NO_PUT],
        delete_single=[superuser_only],
        delete_all=[_NO_BULK_DELETE],
    ),
    hooks=[Hook(hook_type=HookType.pre_patch, callable=credential_patch_rules)],
    visible_columns=[
        CredentialRow.credential_type,
        CredentialRow.user_account_id,
        CredentialRow.key_id,
        CredentialRow.is_active,
        CredentialRow.expires_at,
        CredentialRow.created_at,
        CredentialRow.updated_at,
    ],
    visible_filters=[
        CredentialRow.credential_type,
        CredentialRow.user_account_id,
        CredentialRow.key_id,
        CredentialRow.is_active,
        CredentialRow.expires_at,
    ],
    link_column=CredentialRow.credential_type,
    order_by=[OrderBy(CredentialRow.created_at, ascending=False)],
    menu_group=TRADING,
)

OPERATOR_ACCOUNTS = TableConfig(
    # piccolo-admin adds its own superuser-only check for writes to the auth table.
    Operator,
    validators=Validators(put_single=[_NO_PUT], delete_all=[_NO_BULK_DELETE]),
    visible_columns=[
        Operator.username,
        Operator.email,
        Operator.active,
        Operator.admin,
        Operator.superuser,
        Operator.last_login,
    ],
    visible_filters=[Operator.username, Operator.email, Operator.active, Operator.admin],
    link_column=Operator.username,
    menu_group=OPERATORS,
)

AUDIT = TableConfig(
    AuditEntry,
    validators=_read_only(),
    visible_columns=[
        AuditEntry.occurred_at,
        AuditEntry.actor_username,
        AuditEntry.action,
        AuditEntry.table_name,
        AuditEntry.row_id,
        AuditEntry.changes,
    ],
    visible_filters=[
        AuditEntry.actor_username,
        AuditEntry.action,
        AuditEntry.table_name,
        AuditEntry.row_id,
        AuditEntry.occurred_at,
    ],
    link_column=AuditEntry.occurred_at,
    order_by=[OrderBy(AuditEntry.id, ascending=False)],
    menu_group=OPERATORS,
)

TABLES = [USER, ACCOUNTS, CREDENTIALS, OPERATOR_ACCOUNTS, AUDIT]

#: Every table the admin process touches, bound to the package's one engine.
_ENGINE_TABLES: list[type[Table]] = [
    UserRow,
    AccountRow,
    CredentialRow,
    AuditEntry,
    Operator,
    OperatorSession,
    AuthenticatorSecret,
]


# The admin ###################################################################


def _private_api(admin: AdminRouter) -> FastAPI:
    """piccolo-admin's authenticated API app (mounted at /api behind its auth)."""
    for route in admin.routes:
        if isinstance(route, Mount) and route.path == "/api":
            auth = route.app
            if isinstance(auth, AuthenticationMiddleware) and isinstance(auth.app, FastAPI):
                return auth.app
    raise RuntimeError("piccolo_admin's layout changed: its /api app was not found")


def create_orchestrator_admin(settings: AdminSettings | None = None) -> AdminRouter:
    """The admin ASGI app; serve it under /admin/ (see admin_host.py)."""
    settings = settings or admin_settings()
    if settings.production and not settings.allowed_hosts:
        raise ConfigurationError(
            "ORCHESTRATOR_DB_ALLOWED_HOSTS must name the admin's host name(s) in production"
        )
    engine = get_engine()
    for table in _ENGINE_TABLES:
        table._meta.db = engine

    mfa = AuthenticatorProvider(
        encryption_provider=KeyRingMFAEncryption(get_key_ring()),
        secret_table=AuthenticatorSecret,
        issuer_name="Orchestrator admin",
    )
    admin = create_admin(
        tables=TABLES,
        forms=[CREDENTIAL_SECRET_FORM],
        auth_table=Operator,
        session_table=OperatorSession,
        session_expiry=SESSION_IDLE,
        max_session_expiry=SESSION_MAX,
        increase_expiry=SESSION_IDLE,
        # Without block_duration a blocked address stays blocked until restart.
        rate_limit_provider=InMemoryLimitProvider(
            limit=LOGIN_ATTEMPTS,
            timespan=LOGIN_WINDOW_SECONDS,
            block_duration=LOGIN_WINDOW_SECONDS,
        ),
        production=settings.production,
        allowed_hosts=list(settings.allowed_hosts),
        site_name="Orchestrator admin",
        auto_include_related=False,
        mfa_providers=[mfa],
    )
    private = _private_api(admin)
    # add_middleware puts each new one outermost: MFA check, then audit.
    private.add_middleware(
        AuditMiddleware,
        tables={config.table_class._meta.tablename: config.table_class for config in TABLES},
        auth_table=Operator,
        mfa_table=AuthenticatorSecret,
    )
    if settings.mfa_required:
        private.add_middleware(MFARequired, secret_table=AuthenticatorSecret)
    return admin
