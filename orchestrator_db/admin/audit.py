"""The admin's audit trail: every write made through the admin panel.

:class:`AuditMiddleware` wraps the admin's private API. For each write to a
table it snapshots the row before and after, inside one transaction with
the write itself, and appends who did it and which fields changed (old and
new values) to ``admin_audit_log``; the write and its entry commit
together or not at all. It works from the database rows rather than from
piccolo_api's hooks because some writes skip the hooks (PUT, and POST on the
user table). PUT is refused outright: it replaces whole rows, which is how
piccolo-admin wipes secret columns.

Secret values never enter the log: a secret column that changed is recorded
as ``"secret replaced"``. Rows that a delete removes by ``ON DELETE CASCADE``
(an account's credentials) get an entry each, like the row deleted. A
superuser's change to an operator's password ends that operator's sessions.
"""

from __future__ import annotations

import datetime
import decimal
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from piccolo.apps.user.tables import BaseUser
from piccolo.columns import Column, ForeignKey
from piccolo.table import Table
from piccolo_api.mfa.authenticator.tables import AuthenticatorSecret
from piccolo_api.session_auth.tables import SessionsBase
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator_db.admin.views import AuditEntry


def route_path(scope: Scope) -> str:
    """The path inside a mounted app (Starlette keeps the full path in the scope)."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path

SECRET_REPLACED = "secret replaced"
#: In a cascaded delete's entry: the row whose delete took this one with it.
CASCADE = "deleted_with"

Changes = dict[str, Any]

_TABLE_PATH = re.compile(r"^/tables/(?P<table>[^/]+)/(?:(?P<row>[^/]+)/)?$")
_CHANGE_PASSWORD_PATH = "/change-password/"
_MFA_SETUP_PATH = re.compile(r"^/mfa-setup/")
_WRITES = {"POST", "PATCH", "DELETE"}
_NO_PUT = "PUT is disabled in this admin: it replaces whole rows and skips the audit; use PATCH."


def _plain(value: Any) -> Any:
    """A JSON-friendly copy of a column value."""
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (uuid.UUID, decimal.Decimal)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    return value


def is_secret(column: Column) -> bool:
    return bool(column._meta.secret)


def diff(
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
    secret_fields: frozenset[str] = frozenset(),
) -> Changes:
    """Fields whose value differs, as ``{"field": {"old": ..., "new": ...}}``.

    A secret field that differs is recorded as ``"secret replaced"`` and
    nothing else, so no value of it can reach the log.
    """
    before, after = before or {}, after or {}
    changes: Changes = {}
    for field in sorted(set(before) | set(after)):
        old, new = before.get(field), after.get(field)
        if old == new:
            continue
        if field in secret_fields:
            changes[field] = SECRET_REPLACED
        else:
            changes[field] = {"old": _plain(old), "new": _plain(new)}
    return changes


async def record(
    actor: BaseUser | None,
    action: str,
    table_name: str,
    row_id: Any,
    changes: Changes,
) -> None:
    """Append one entry; call it inside the transaction of the write it describes."""
    await AuditEntry.insert(
        AuditEntry(
            actor_id=getattr(actor, "id", None),
            actor_username=getattr(actor, "username", None) or "(unknown)",
            action=action,
            table_name=table_name,
            row_id=None if row_id is None else str(row_id),
            changes=json.dumps(changes),
        )
    )


def audit_table_name(table: type[Table]) -> str:
    """The table an entry names: a view's base table, not the view."""
    return getattr(table, "audit_table_name", table._meta.tablename)


async def snapshot(table: type[Table], row_id: Any) -> dict[str, Any] | None:
    """The row as stored now (every column, secrets included for comparison only)."""
    primary_key = table._meta.primary_key
    return await table.select(*table._meta.columns).where(primary_key == row_id).first()


def _parse_row_id(table: type[Table], raw: Any) -> Any:
    try:
        return table._meta.primary_key.value_type(raw)
    except (TypeError, ValueError):
        return None


def _created_row_id(body: bytes) -> Any:
    """piccolo_api answers a POST with ``[{"id": ...}]`` or ``{"id": ...}``."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if isinstance(data, list) and data and isinstance(data[0], dict):
        return data[0].get("id")
    if isinstance(data, dict):
        return data.get("id")
    return None


class _Rollback(Exception):
    """Unwinds the transaction of a write that failed without raising."""


class _BufferedSend:
    """Holds the response back until the transaction has committed."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.status = 500

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        self.messages.append(message)

    @property
    def body(self) -> bytes:
        return b"".join(
            m.get("body", b"") for m in self.messages if m["type"] == "http.response.body"
        )

    async def replay(self, send: Send) -> None:
        for message in self.messages:
            await send(message)


class AuditMiddleware:
    """Records every write made through the admin's private API.

    Mounted inside piccolo_admin's authentication, so ``scope["user"]`` is
    the logged-in operator.
    """

    def __init__(
        self,
        app: ASGIApp,
        tables: Mapping[str, type[Table]],
        auth_table: type[BaseUser],
        session_table: type[SessionsBase],
        mfa_table: type[AuthenticatorSecret],
        cascades: Mapping[type[Table], Sequence[ForeignKey]] = {},
    ) -> None:
        """``cascades``: for a table, the foreign keys (ON DELETE CASCADE) of the
        rows a delete of one of its rows removes with it."""
        self.app = app
        self.tables = dict(tables)
        self.auth_table = auth_table
        self.session_table = session_table
        self.mfa_table = mfa_table
        self.cascades = {table: list(keys) for table, keys in cascades.items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"].upper()
        path = route_path(scope)
        match = _TABLE_PATH.match(path)
        if match and method == "PUT":
            await JSONResponse({"detail": _NO_PUT}, status_code=405)(scope, receive, send)
            return
        if method not in _WRITES:
            await self.app(scope, receive, send)
            return
        if match and match["table"] in self.tables:
            table = self.tables[match["table"]]
            await self._audited(scope, receive, send, table, match["row"], method)
        elif method == "POST" and path == _CHANGE_PASSWORD_PATH:
            await self._audited_password_change(scope, receive, send)
        elif method == "POST" and _MFA_SETUP_PATH.match(path):
            await self._audited_mfa(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _in_transaction(self, scope, receive, send, table: type[Table], work) -> None:
        buffered = _BufferedSend()
        try:
            async with table._meta.db.transaction():
                await work(buffered)
                if buffered.status >= 400:
                    raise _Rollback
        except _Rollback:
            pass
        await buffered.replay(send)

    async def _audited(self, scope, receive, send, table, raw_row_id, method) -> None:
        row_id = _parse_row_id(table, raw_row_id) if raw_row_id is not None else None
        secret_fields = frozenset(c._meta.name for c in table._meta.columns if is_secret(c))

        async def work(buffered: _BufferedSend) -> None:
            before = await snapshot(table, row_id) if row_id is not None else None
            dependents = []
            if method == "DELETE" and row_id is not None:
                dependents = await self._dependents(table, row_id)
            await self.app(scope, receive, buffered)
            if buffered.status >= 400:
                return
            if method == "POST":
                target = _parse_row_id(table, _created_row_id(buffered.body))
                action = "create"
            else:
                target = row_id
                action = "delete" if method == "DELETE" else "update"
            after = None
            if target is not None and action != "delete":
                after = await snapshot(table, target)
            changes = diff(before, after, secret_fields)
            if action == "update" and not changes:
                return
            actor = _actor(scope)
            await record(actor, action, audit_table_name(table), target, changes)
            for dependent, dependent_id, row in dependents:
                secrets = frozenset(c._meta.name for c in dependent._meta.columns if is_secret(c))
                changes = diff(row, None, secrets)
                changes[CASCADE] = {"old": None, "new": f"{audit_table_name(table)} {target}"}
                await record(actor, "delete", audit_table_name(dependent), dependent_id, changes)
            if table is self.auth_table and action == "update" and "password" in changes:
                # A reset password ends the operator's sessions, as a change does.
                await self.session_table.delete().where(self.session_table.user_id == target)

        await self._in_transaction(scope, receive, send, table, work)

    async def _dependents(self, table: type[Table], row_id: Any) -> list[tuple[type[Table], Any, dict]]:
        """The rows a delete of ``row_id`` removes by cascade, as they are now."""
        found = []
        for key in self.cascades.get(table, []):
            dependent = key._meta.table
            rows = await dependent.select(*dependent._meta.columns).where(key == row_id)
            pk = dependent._meta.primary_key._meta.name
            found += [(dependent, row[pk], row) for row in rows]
        return found

    async def _audited_password_change(self, scope, receive, send) -> None:
        actor = _actor(scope)
        table = self.auth_table

        async def work(buffered: _BufferedSend) -> None:
            before = await snapshot(table, actor.id) if actor else None
            await self.app(scope, receive, buffered)
            after = await snapshot(table, actor.id) if actor else None
            changed = before and after and before["password"] != after["password"]
            if actor is not None and buffered.status < 400 and changed:
                await record(
                    actor, "change_password", table._meta.tablename, actor.id,
                    {"password": SECRET_REPLACED},
                )

        await self._in_transaction(scope, receive, send, table, work)

    async def _audited_mfa(self, scope, receive, send) -> None:
        actor = _actor(scope)
        table = self.mfa_table

        async def enrolled() -> bool:
            if actor is None:
                return False
            return await table.exists().where(
                (table.user_id == actor.id) & table.revoked_at.is_null()
            )

        async def work(buffered: _BufferedSend) -> None:
            before = await enrolled()
            await self.app(scope, receive, buffered)
            after = await enrolled()
            if buffered.status < 400 and before != after:
                await record(
                    actor, "mfa", table._meta.tablename, getattr(actor, "id", None),
                    {"enrolled": {"old": before, "new": after}, "secret": SECRET_REPLACED},
                )

        await self._in_transaction(scope, receive, send, table, work)


def _actor(scope: Scope) -> BaseUser | None:
    user = scope.get("user")
    return getattr(user, "user", None)


