"""The ASGI app that serves the admin panel at /admin/.

A small Starlette host: it opens the package's connection pool in its
lifespan, mounts piccolo-admin under /admin/ (and redirects /admin and / to
it), refuses the Swagger pages (they load their assets from a CDN), adds a
few security headers, and in production accepts only ORCHESTRATOR_DB_ALLOWED_HOSTS.

Run it with DATABASE_URL pointing at the operator role (BYPASSRLS): the
admin must see every user's rows. ``make run`` does that for you; by hand::

    python -m orchestrator_db.admin.asgi --host 127.0.0.1 --port 8000

Serve it with :func:`serve` (as above), not the bare uvicorn CLI: uvicorn
believes X-Forwarded-For from 127.0.0.1 by default, so anything on the same
host could claim a new address on every login attempt. ``serve`` believes
forwarded headers only from ORCHESTRATOR_DB_ADMIN_TRUSTED_PROXIES.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator_db.admin.app import create_orchestrator_admin
from orchestrator_db.engine import close_pool, open_pool
from orchestrator_db.settings import AdminSettings, admin_settings

ADMIN_PATH = "/admin/"
#: piccolo-admin's Swagger pages pull their JavaScript from a CDN.
_BLOCKED_PREFIXES = ("/admin/api/docs", "/admin/public/docs")
#: What the admin's pages may load: only their own scripts (no inline ones,
#: no eval), their own API; inline styles because the SPA injects <style>.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]


class AdminGate:
    """Refuses the Swagger pages and adds security headers to every response.

    In production every cookie is marked Secure: piccolo_api sets its CSRF
    cookie without the flag (its session cookie already has it).
    """

    def __init__(self, app: ASGIApp, production: bool = False) -> None:
        self.app = app
        self.production = production

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"].startswith(_BLOCKED_PREFIXES):
            await PlainTextResponse("Not found", status_code=404)(scope, receive, send)
            return

        html: list[Message] = []

        async def send_with_headers(message: Message) -> None:
            if html:  # piccolo_api's own pages: held back until complete
                html.append(message)
                if message["type"] == "http.response.body" and not message.get("more_body"):
                    await _send_without_cdn(html, send)
                return
            if message["type"] == "http.response.start":
                headers = [
                    (name, _secure(value) if self.production and name.lower() == b"set-cookie" else value)
                    for name, value in message.get("headers", [])
                ]
                present = {name.lower() for name, _ in headers}
                extra = [(k, v) for k, v in _SECURITY_HEADERS if k not in present]
                message = {**message, "headers": [*headers, *extra]}
                if dict(headers).get(b"content-type", b"").startswith(b"text/html"):
                    html.append(message)
                    return
            await send(message)

        await self.app(scope, receive, send_with_headers)


#: piccolo_api's server-rendered pages (MFA setup) load a font from Google;
#: the CSP would block it with a console error, so the link is dropped.
_CDN_LINK = re.compile(rb"<link[^>]*https://fonts\.(?:googleapis|gstatic)\.com[^>]*>")


async def _send_without_cdn(messages: list[Message], send: Send) -> None:
    start, *bodies = messages
    body = _CDN_LINK.sub(b"", b"".join(m.get("body", b"") for m in bodies))
    headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
    await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _secure(cookie: bytes) -> bytes:
    attributes = {part.strip().lower() for part in cookie.split(b";")[1:]}
    return cookie if b"secure" in attributes else cookie + b"; Secure"


async def _no_icon(request) -> Response:
    return Response(status_code=204)


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

    middleware = [Middleware(AdminGate, production=settings.production)]
    if settings.production:
        middleware.insert(0, Middleware(TrustedHostMiddleware, allowed_hosts=list(settings.allowed_hosts)))
    return Starlette(
        routes=[
            Route("/", _to_admin),
            # Browsers ask for it on every page; a 404 would be a console error.
            Route("/favicon.ico", _no_icon),
            Route("/admin", _to_admin),
            Mount(ADMIN_PATH.rstrip("/"), app=create_orchestrator_admin(settings)),
        ],
        middleware=middleware,
        lifespan=lifespan,
    )


def serve(
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    fd: int | None = None,
    log_level: str = "info",
    settings: AdminSettings | None = None,
) -> None:
    """Serve the host app with uvicorn; forwarded headers only from trusted proxies."""
    import uvicorn

    settings = settings or admin_settings()
    proxies = list(settings.trusted_proxies)
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        fd=fd,
        log_level=log_level,
        proxy_headers=bool(proxies),
        forwarded_allow_ips=proxies or None,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m orchestrator_db.admin.asgi", description=serve.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--fd", type=int, default=None, help="serve on this already-bound socket")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    serve(host=args.host, port=args.port, fd=args.fd, log_level=args.log_level)


if __name__ == "__main__":
    main()
