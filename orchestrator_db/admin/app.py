"""piccolo-admin wiring: one explicit TableConfig per table, in sections.

piccolo-admin's defaults are unsafe for this data (see issue 6), so every
default that matters is overridden here:

- ``auto_include_related=False``: only the tables configured below appear.
- Credentials are shown through ``CredentialRow`` (the secret-free view), so
  no secret, plaintext or ciphertext, can reach the admin's API or pages;
  they are created and their secrets replaced only by a superuser form that
  encrypts on the server (forms.py).
- One policy per table (POLICIES) says who may add, edit and delete; the
  server refuses the rest with a readable message and the pages hide it
  (static/admin.js). PUT is refused everywhere (it skips hooks and replaces
  whole rows); every other write is recorded in the audit log (audit.py).
- Only active admins can log in; sessions last 30 minutes idle, 8 hours at
  most; logins are rate limited; CSRF protection is piccolo-admin's own.

The admin connects to PostgreSQL as the operator role (BYPASSRLS): it must
see every user's rows. See asgi.py for how it is served.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from piccolo.apps.user.tables import BaseUser
from piccolo.table import Table
from piccolo_admin.endpoints import AdminRouter, TableConfig, create_admin
from piccolo_api.crud.endpoints import OrderBy
from piccolo_api.crud.hooks import Hook, HookType
from piccolo_api.mfa.authenticator.provider import AuthenticatorProvider
from piccolo_api.mfa.authenticator.tables import AuthenticatorSecret
from piccolo_api.rate_limiting.middleware import InMemoryLimitProvider
from starlette.exceptions import HTTPException
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from orchestrator_db.admin.audit import AuditMiddleware, route_path, snapshot
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
from orchestrator_db.crypto.envelopes import SECRET_COLUMNS
from orchestrator_db.crypto.providers import get_key_ring
from orchestrator_db.engine import get_engine
from orchestrator_db.errors import ConfigurationError
from orchestrator_db.settings import AdminSettings, admin_settings

#: Login attempts allowed per client address in LOGIN_WINDOW_SECONDS; past
#: them the address is refused (429) for LOGIN_WINDOW_SECONDS. Behind a
#: reverse proxy, name it in ORCHESTRATOR_DB_ADMIN_TRUSTED_PROXIES (asgi.serve)
#: so the address is the client's; no other peer's X-Forwarded-For is believed.
LOGIN_ATTEMPTS = 20
LOGIN_WINDOW_SECONDS = 300

TRADING = "Trading data"
OPERATORS_GROUP = "Operators"
SITE_NAME = "Orchestrator admin"
STATIC = Path(__file__).with_name("static")


# Who may do what ############################################################
# One policy per table drives both sides: PolicyGate refuses a write before
# piccolo_api parses it (a readable 405, which piccolo-admin shows as text),
# and the pages (static/admin.js, fed by /api/odb/ui/) offer only what the
# operator may do: no Add, Save or Delete that would be refused, and fields
# an operator may not change shown disabled.

NOBODY, SUPERUSERS, OPERATORS = "nobody", "superusers", "operators"


@dataclass(frozen=True)
class TablePolicy:
    label: str
    add: str = NOBODY
    edit: str = NOBODY
    delete: str = NOBODY
    #: The only fields an edit may change; None means every field.
    editable: frozenset[str] | None = None
    #: Where "Add row" leads instead of the table's own add form.
    add_instead: str | None = None
    refusal: str = "This table is read-only in the admin."
    #: Rows past their expires_at show "expired" instead of their active flag.
    shows_expiry: bool = False

    def allows(self, action: str, operator: BaseUser) -> bool:
        who = getattr(self, action)
        return who == OPERATORS or (who == SUPERUSERS and bool(operator.superuser))

    def for_operator(self, operator: BaseUser) -> dict[str, Any]:
        return {
            "label": self.label,
            "add": self.allows("add", operator),
            "edit": self.allows("edit", operator),
            "delete": self.allows("delete", operator),
            "editable": None if self.editable is None else sorted(self.editable),
            # The secrets form is for superusers only.
            "add_instead": self.add_instead if operator.superuser else None,
            "shows_expiry": self.shows_expiry,
        }


SUPERUSERS_ONLY = "Only superusers can change this table."
SECRET_FORM_SLUG = "set-credential-secrets"

#: Fields an operator (not only a superuser) may change on a credential.
CREDENTIAL_EDITABLE = frozenset({"is_active", "expires_at"})
#: Set by the database; the edit form may send them back unchanged.
CREDENTIAL_SYSTEM = frozenset({"id", "key_id", "created_at", "updated_at"})

POLICIES: dict[str, TablePolicy] = {
    UserRow._meta.tablename: TablePolicy(
        "Users (Better Auth)", refusal="Better Auth owns its users; they are read-only here."
    ),
    AccountRow._meta.tablename: TablePolicy(
        "Accounts", add=SUPERUSERS, edit=SUPERUSERS, delete=SUPERUSERS, refusal=SUPERUSERS_ONLY
    ),
    CredentialRow._meta.tablename: TablePolicy(
        "Credentials",
        edit=OPERATORS,
        delete=SUPERUSERS,
        editable=CREDENTIAL_EDITABLE,
        add_instead=f"#/forms/{SECRET_FORM_SLUG}/",
        shows_expiry=True,
        refusal="Create credentials and set their secrets with the 'Set credential secrets' form; "
        "only superusers can delete one.",
    ),
    # piccolo-admin adds its own superuser-only check for writes to the auth table.
    Operator._meta.tablename: TablePolicy(
        "Operators", add=SUPERUSERS, edit=SUPERUSERS, delete=SUPERUSERS, refusal=SUPERUSERS_ONLY
    ),
    AuditEntry._meta.tablename: TablePolicy(
        "Audit Log", refusal="The audit log is append-only; nobody can change it."
    ),
}

_ACTIONS = {"POST": "add", "PATCH": "edit", "DELETE": "delete"}
_TABLE_WRITE = re.compile(r"^/tables/(?P<table>[^/]+)/(?:(?P<row>[^/]+)/)?$")


class PolicyGate:
    """Refuses, before piccolo_api parses the body, any write POLICIES does not allow.

    Bulk delete (DELETE on a table without a row) is refused everywhere.
    PUT is refused by AuditMiddleware.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _TABLE_WRITE.match(route_path(scope)) if scope["type"] == "http" else None
        action = _ACTIONS.get(scope.get("method", "").upper()) if match else None
        policy = POLICIES.get(match["table"]) if match and action else None
        if match and action and policy is not None:
            operator = getattr(scope.get("user"), "user", None)
            detail = None
            if action == "delete" and match["row"] is None:
                detail = "Bulk delete is disabled; delete rows one at a time."
            elif operator is None or not policy.allows(action, operator):
                detail = policy.refusal
            if detail is not None:
                await JSONResponse({"detail": detail}, status_code=405)(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def ui_policy(request: Request) -> JSONResponse:
    """What the pages may offer this operator (static/admin.js reads it)."""
    operator = request.user.user
    return JSONResponse(
        {
            "tables": {name: policy.for_operator(operator) for name, policy in POLICIES.items()},
            "forms": {
                SECRET_FORM_SLUG: {
                    "secret_fields": list(SECRET_COLUMNS),
                    "allowed": bool(operator.superuser),
                }
            },
        }
    )


async def credential_patch_rules(row_id: Any, values: dict, request: Request) -> dict:
    """Keep only real changes, and refuse any to fields other than CREDENTIAL_EDITABLE.

    An edit form may send every field back, timestamps rounded to the
    second; unchanged and database-maintained ones are dropped so the UPDATE
    touches only what the operator changed. A changed field that may not
    change is refused with a readable message, never silently dropped.
    """
    current = await snapshot(CredentialRow, row_id)
    if current is None:
        raise HTTPException(status_code=404, detail="No such credential.")
    kept = {}
    for column, value in values.items():
        name = column._meta.name
        if name in CREDENTIAL_EDITABLE:
            if value != current.get(name):
                kept[column] = value
        elif not _same(value, current.get(name)):
            raise HTTPException(
                status_code=405,
                detail=f"{name} cannot be changed here; only is_active and expires_at can. "
                "Use the 'Set credential secrets' form for secrets.",
            )
    # Piccolo refuses an empty UPDATE; the view's trigger skips a no-op one.
    return kept or {CredentialRow.is_active: current["is_active"]}


def _same(sent: Any, stored: Any) -> bool:
    """Equal, allowing for the edit form's timestamps rounded to the second."""
    if isinstance(stored, datetime.datetime) and isinstance(sent, datetime.datetime):
        return abs(sent - stored) < datetime.timedelta(seconds=1)
    return sent == stored or str(sent) == str(stored)


# Tables ######################################################################

USER = TableConfig(
    UserRow,
    visible_columns=[UserRow.id, UserRow.name, UserRow.email, UserRow.emailVerified, UserRow.createdAt],
    visible_filters=[UserRow.id, UserRow.name, UserRow.email, UserRow.emailVerified],
    menu_group=TRADING,
)

ACCOUNTS = TableConfig(
    AccountRow,
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
    Operator,
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
    menu_group=OPERATORS_GROUP,
)

AUDIT = TableConfig(
    AuditEntry,
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
    menu_group=OPERATORS_GROUP,
)

TABLES = [USER, ACCOUNTS, CREDENTIALS, OPERATOR_ACCOUNTS, AUDIT]
if {config.table_class._meta.tablename for config in TABLES} != set(POLICIES):
    raise RuntimeError("every admin table needs exactly one policy in POLICIES")

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
        site_name=SITE_NAME,
        auto_include_related=False,
        mfa_providers=[mfa],
    )
    # The page's own title (the SPA sets it only once its metadata loads),
    # and our script, which makes the pages offer only what POLICIES allows.
    admin.template = admin.template.replace(
        "<title>Piccolo Admin</title>",
        f"<title>{SITE_NAME}</title>\n  <script src=\"./odb/admin.js\" defer></script>\n"
        '  <link rel="stylesheet" href="./odb/admin.css">',
    )
    admin.mount("/odb", StaticFiles(directory=STATIC))
    private = _private_api(admin)
    private.add_api_route("/odb/ui/", ui_policy, methods=["GET"], include_in_schema=False)
    # add_middleware puts each new one outermost: a request meets the MFA
    # check, then the audit, then the policy.
    private.add_middleware(PolicyGate)
    private.add_middleware(
        AuditMiddleware,
        tables={config.table_class._meta.tablename: config.table_class for config in TABLES},
        cascades={AccountRow: [CredentialRow.user_account_id]},
        auth_table=Operator,
        session_table=OperatorSession,
        mfa_table=AuthenticatorSecret,
    )
    if settings.mfa_required:
        private.add_middleware(MFARequired, secret_table=AuthenticatorSecret)
    return admin
