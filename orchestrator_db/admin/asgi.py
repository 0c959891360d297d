"""The ASGI app that serves the admin panel at /admin/.

A small Starlette host: it opens the package's connection pool in its
lifespan, mounts piccolo-admin under /admin/ (and redirects /admin and / to
it), refuses the Swagger pages (they load their assets from a CDN), adds a
few security headers, and in production accepts only ORCHESTRATOR_DB_ALLOWED_HOSTS.

Run it with DATABASE_URL pointing at the operator role (BYPASSRLS): the
admin must see every user's rows. ``make run`` does that for you::

    uvicorn --factory orchestrator_db.admin.asgi:create_app
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import PlainTextResponse, RedirectResponse
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator_db.admin.app import create_orchestrator_admin
from orchestrator_db.engine import close_pool, open_pool
from orchestrator_db.settings import AdminSettings, admin_settings

ADMIN_PATH = "/admin/"
#: piccolo-admin's Swagger pages pull their JavaScript from a CDN.
_BLOCKED_PREFIXES = ("/admin/api/docs", "/admin/public/docs")
_SECURITY_HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]


class AdminGate:
    """Refuses the Swagger pages and adds security headers to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"].startswith(_BLOCKED_PREFIXES):
            await PlainTextResponse("Not found", status_code=404)(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in _SECURITY_HEADERS if k not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _to_admin(request) -> RedirectResponse:
    return RedirectResponse(ADMIN_PATH, status_code=307)


def create_app(settings: AdminSettings | None = None) -> Starlette:
    """The host app: the pool lives as long as the app; the admin is at /admin/."""
    settings = settings or admin_settings()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await open_pool()
        try:
            yield
        finally:
            await close_pool()

    middleware = [Middleware(AdminGate)]
    if settings.production:
        middleware.insert(0, Middleware(TrustedHostMiddleware, allowed_hosts=list(settings.allowed_hosts)))
    return Starlette(
        routes=[
            Route("/", _to_admin),
            Route("/admin", _to_admin),
            Mount(ADMIN_PATH.rstrip("/"), app=create_orchestrator_admin(settings)),
        ],
        middleware=middleware,
        lifespan=lifespan,
    )
