"""The admin panel in a real browser: Debian's chromium, driven by Playwright.

Nothing downloads a browser: Playwright launches /usr/bin/chromium. The
admin server is the real host app, connected as the operator role. Every
response the browser receives in this module is captured, and the last test
checks that none carries a plaintext secret or an encryption envelope. A
failing test leaves a screenshot in test-artifacts/.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from admin_support import (
    ARTIFACTS,
    ENVELOPE,
    AdminServer,
    OperatorAccount,
    create_operator,
    start_admin_server,
    stop_admin_server,
)
from playwright.async_api import Browser, BrowserContext, Page, Response, async_playwright

from orchestrator_db import CredentialNotFound, user_scope
from orchestrator_db.crypto.keyring import is_envelope

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 15_000


class Capture:
    """Every response body the browser received, and the secrets it must not contain."""

    def __init__(self) -> None:
        self.bodies: dict[str, list[bytes]] = {}
        self.secrets: set[str] = set()
        self._pending: list[asyncio.Task] = []

    def watch(self, page: Page) -> None:
        page.on("response", lambda response: self._pending.append(asyncio.ensure_future(self._keep(response))))

    async def _keep(self, response: Response) -> None:
        try:
            body = await response.body()
        except Exception:  # redirects and aborted requests have no body
            return
        self.bodies.setdefault(response.url, []).append(body)

    async def settle(self) -> None:
        await asyncio.gather(*self._pending)
        self._pending.clear()


@pytest.fixture(scope="module")
def server(test_db) -> Iterator[AdminServer]:
    server = start_admin_server(test_db, "browser")
    yield server
    stop_admin_server(server)


@pytest.fixture(scope="module")
def capture() -> Capture:
    return Capture()


@pytest_asyncio.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    assert CHROMIUM.exists(), "Debian's chromium is missing: run `make system-packages`"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        await browser.close()


@pytest_asyncio.fixture(scope="module")
async def superuser(owner: asyncpg.Pool) -> OperatorAccount:
    return await create_operator(owner, superuser=True)


@pytest_asyncio.fixture
async def context(browser: Browser, capture: Capture, request) -> AsyncIterator[BrowserContext]:
    """A fresh browser profile whose pages are captured; screenshots them if the test fails."""
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    context.on("page", capture.watch)
    failed_before = request.session.testsfailed
    yield context
    if request.session.testsfailed > failed_before:
        ARTIFACTS.mkdir(exist_ok=True)
        for index, page in enumerate(context.pages):
            await page.screenshot(path=str(ARTIFACTS / f"{request.node.name}-{index}.png"), full_page=True)
    await capture.settle()
    await context.close()


@pytest_asyncio.fixture
async def credential(user_with_account: str, capture: Capture) -> dict:
    """A credential stored through the public API; its plaintexts are registered as secrets."""
    api_key, secret_key = f"AK-{secrets.token_hex(10)}", f"SK-{secrets.token_hex(16)}"
    async with user_scope(user_with_account) as scope:
        stored = await scope.put_credential("alpaca", api_key=api_key, secret_key=secret_key)
    capture.secrets |= {api_key, secret_key}
    return {
        "id": str(stored.id),
        "user_id": user_with_account,
        "email": f"{user_with_account}@example.test",
        "api_key": api_key,
        "secret_key": secret_key,
    }


async def submit_login(
    context: BrowserContext, server: AdminServer, account: OperatorAccount
) -> tuple[Page, int]:
    """Fill in and send the login form; the page and the login answer's status."""
    page = await context.new_page()
    await page.goto(f"{server.admin_url}/")
    await page.fill("input[name=username]", account.username)
    await page.fill("input[name=password]", account.password)
    async with page.expect_response(lambda r: r.url.endswith("/public/login/")) as answer:
        await page.click("button:has-text('Login')")
    return page, (await answer.value).status


async def log_in(context: BrowserContext, server: AdminServer, account: OperatorAccount) -> Page:
    page, status = await submit_login(context, server, account)
    assert status == 200
    await page.wait_for_selector("text=User Credentials Admin")
    return page


async def open_credential(page: Page, server: AdminServer, credential_id: str) -> None:
    await page.goto(f"{server.admin_url}/#/user_credentials_admin/{credential_id}/")
    await page.wait_for_selector("select[name=is_active]")


async def save(page: Page) -> Response:
    async with page.expect_response(lambda r: r.request.method == "PATCH") as answer:
        await page.click("button:has-text('Save')")
    return await answer.value


async def stored_secrets(credential: dict) -> tuple[str, str]:
    async with user_scope(credential["user_id"]) as scope:
        stored = await scope.get_credential("alpaca")
    return stored.api_key.get_secret_value(), stored.secret_key.get_secret_value()


@pytest.mark.asyncio
async def test_log_in_and_list_credentials(context, server, superuser, credential) -> None:
    """Make sure an operator logs in and sees the credential listed by type, owner e-mail and key id."""
    page = await log_in(context, server, superuser)

    await page.click("text=User Credentials Admin")
    row = page.locator("tr", has_text=credential["email"])
    await row.wait_for()

    assert "alpaca" in await row.inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "admin-credentials-list.png"), full_page=True)


@pytest.mark.asyncio
async def test_detail_page_save_keeps_secrets(context, server, superuser, credential) -> None:
    """Make sure opening a credential and saving it untouched leaves its secrets decrypting to the originals."""
    page = await log_in(context, server, superuser)
    await open_credential(page, server, credential["id"])
    assert await page.input_value("input[name=credential_type]") == "alpaca"

    answer = await save(page)

    assert answer.status == 200
    assert await stored_secrets(credential) == (credential["api_key"], credential["secret_key"])


@pytest.mark.asyncio
async def test_secret_form_stores_an_envelope(context, server, superuser, credential, owner, capture) -> None:
    """Make sure the form replaces the secrets with envelopes that the API decrypts to the typed values."""
    new_api, new_secret = f"AK-{secrets.token_hex(10)}", f"SK-{secrets.token_hex(16)}"
    capture.secrets |= {new_api, new_secret}
    page = await log_in(context, server, superuser)
    await page.click("text=Set Credential Secrets")
    await page.fill("input[name=user]", credential["email"])
    await page.fill("input[name=credential_type]", "alpaca")
    await page.fill("input[name=api_key]", new_api)
    await page.fill("input[name=secret_key]", new_secret)

    async with page.expect_response(lambda r: "/api/forms/" in r.url and r.request.method == "POST") as answer:
        await page.click("button:has-text('Submit')")

    assert (await answer.value).status == 200
    await page.wait_for_selector("text=Form Submitted")
    row = await owner.fetchrow(
        "SELECT api_key, secret_key FROM user_credentials WHERE id = $1", uuid.UUID(credential["id"])
    )
    assert is_envelope(row["api_key"]) and is_envelope(row["secret_key"])
    assert await stored_secrets(credential) == (new_api, new_secret)


@pytest.mark.asyncio
async def test_deactivate_credential(context, server, superuser, credential) -> None:
    """Make sure deactivating a credential on its page makes get_credential refuse it as inactive."""
    page = await log_in(context, server, superuser)
    await open_credential(page, server, credential["id"])
    await page.select_option("select[name=is_active]", "false")

    answer = await save(page)

    assert answer.status == 200
    with pytest.raises(CredentialNotFound) as refused:
        await stored_secrets(credential)
    assert refused.value.reason == "inactive"


@pytest.mark.asyncio
async def test_unauthenticated_visit_is_refused(context, server, credential) -> None:
    """Make sure a visitor without a session gets the login form and no data, page or API."""
    page = await context.new_page()
    async with page.expect_response(lambda r: "/api/tables/" in r.url) as answer:
        await page.goto(f"{server.admin_url}/#/user_credentials_admin/{credential['id']}/")

    assert (await answer.value).status == 401
    await page.wait_for_selector("input[name=password]")
    assert credential["email"] not in await page.content()
    direct = await context.request.get(f"{server.admin_url}/api/tables/user_credentials_admin/")
    assert direct.status == 401


@pytest.mark.asyncio
@pytest.mark.parametrize("flags", [{"admin": False}, {"active": False}], ids=["non-admin", "inactive"])
async def test_non_admin_and_inactive_users_are_refused(context, server, owner, flags) -> None:
    """Make sure a non-admin or inactive user with the right password is shown a login error and gets no session."""
    account = await create_operator(owner, **flags)
    page, status = await submit_login(context, server, account)

    assert status == 401
    await page.wait_for_selector("text=Problem logging in")
    assert "id" not in {cookie["name"] for cookie in await context.cookies()}
    assert await owner.fetchval("SELECT count(*) FROM sessions WHERE user_id = $1", account.id) == 0
    api = await context.request.get(f"{server.admin_url}/api/tables/")
    assert api.status == 401


@pytest.mark.asyncio
async def test_no_secret_reached_the_browser(context, server, superuser, credential, capture, owner) -> None:
    """Make sure no response the browser received in this module holds a plaintext secret or an envelope."""
    page = await log_in(context, server, superuser)
    for route in ("user_credentials_admin", f"user_credentials_admin/{credential['id']}", "admin_audit_log", "forms/set-credential-secrets"):
        async with page.expect_response(lambda r: "/api/" in r.url):
            await page.goto(f"{server.admin_url}/#/{route}/")
    await page.wait_for_selector("input[name=api_key]")
    await capture.settle()

    envelopes = {
        value
        for row in await owner.fetch("SELECT api_key, secret_key FROM user_credentials")
        for value in row
    }
    forbidden = capture.secrets | envelopes
    detail_url = f"/api/tables/user_credentials_admin/{credential['id']}/"
    assert any(detail_url in url for url in capture.bodies), "the credential was never loaded"
    leaks = [
        url
        for url, bodies in capture.bodies.items()
        for body in bodies
        if ENVELOPE.search(text := body.decode("utf-8", errors="replace"))
        or any(secret in text for secret in forbidden)
    ]
    assert leaks == []
