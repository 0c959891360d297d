"""The admin panel in a real browser: Debian's chromium, driven by Playwright.

Nothing downloads a browser: Playwright launches /usr/bin/chromium. The
admin server is the real host app, connected as the operator role. Each test
captures every response its browser receives and every console error; the
page tests visit every page as a superuser and as a plain operator and fail
on any console error (CSP violations are console errors) or blank table,
and the leak scan reads every body. A failing test leaves a screenshot in
test-artifacts/.
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
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Request,
    Response,
    async_playwright,
)
from playwright.async_api import Error as PlaywrightError

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
SIDEBAR_LINK = '.table_list a[href="#/{}/"]'


class Capture:
    """Every response body a test's browser received, and the secrets it must not contain."""

    def __init__(self) -> None:
        self.bodies: dict[str, list[bytes]] = {}
        self.unread: list[str] = []
        self.secrets: set[str] = set()
        self._pending: list[asyncio.Task] = []
        self._in_flight: set[Request] = set()

    def watch(self, page: Page) -> None:
        page.on("response", lambda response: self._pending.append(asyncio.ensure_future(self._keep(response))))
        page.on("request", lambda request: self._in_flight.add(request))
        page.on("requestfinished", lambda request: self._in_flight.discard(request))
        page.on("requestfailed", lambda request: self._in_flight.discard(request))

    async def quiet(self) -> None:
        """Wait until no request is in flight and every body is read (before leaving a document)."""
        for _ in range(TIMEOUT_MS // 100):
            if not self._in_flight:
                break
            await asyncio.sleep(0.1)
        assert not self._in_flight, f"requests still in flight: {[r.url for r in self._in_flight]}"
        await self.settle()

    async def _keep(self, response: Response) -> None:
        if 300 <= response.status < 400:  # a redirect has no body to read
            return
        try:
            body = await response.body()
        except PlaywrightError as error:
            self.unread.append(f"{response.url}: {error}")
            return
        self.bodies.setdefault(response.url, []).append(body)

    async def settle(self) -> None:
        await asyncio.gather(*self._pending)
        self._pending.clear()

    async def leaks(self, forbidden: set[str]) -> list[str]:
        """URLs whose body holds a secret or an envelope; every response must have been read."""
        await self.quiet()
        assert self.unread == [], "responses the leak scan could not read"
        assert self.bodies, "the browser received nothing"
        return [
            url
            for url, bodies in self.bodies.items()
            for body in bodies
            if ENVELOPE.search(text := body.decode("utf-8", errors="replace"))
            or any(secret in text for secret in forbidden)
        ]


class Console:
    """Console errors and uncaught exceptions, from the moment a test says so."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.listening = False

    def watch(self, page: Page) -> None:
        page.on("console", self._message)
        page.on("pageerror", lambda error: self.listening and self.errors.append(f"uncaught: {error}"))

    def _message(self, message: ConsoleMessage) -> None:
        if self.listening and message.type == "error":
            self.errors.append(f"{message.text} at {message.location.get('url')}")


@pytest.fixture(scope="module")
def server(test_db) -> Iterator[AdminServer]:
    server = start_admin_server(test_db, "browser")
    yield server
    stop_admin_server(server)


@pytest.fixture
def capture() -> Capture:
    return Capture()


@pytest.fixture
def console() -> Console:
    return Console()


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


@pytest_asyncio.fixture(scope="module")
async def operator(owner: asyncpg.Pool) -> OperatorAccount:
    return await create_operator(owner, superuser=False)


@pytest_asyncio.fixture
async def context(browser: Browser, capture: Capture, console: Console, request) -> AsyncIterator[BrowserContext]:
    """A fresh browser profile whose pages are captured; screenshots them if the test fails."""
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    context.on("page", capture.watch)
    context.on("page", console.watch)
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
    await page.wait_for_selector(f"{SIDEBAR_LINK.format('user_credentials_admin')}:has-text('Credentials')")
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
async def test_log_in_and_list_credentials(context, server, superuser, credential, owner) -> None:
    """Make sure an operator logs in and sees the credential listed by type, owner e-mail and key id."""
    page = await log_in(context, server, superuser)

    key_id = await owner.fetchval(
        "SELECT key_id FROM user_credentials_admin WHERE id = $1", uuid.UUID(credential["id"])
    )
    await page.click(SIDEBAR_LINK.format("user_credentials_admin"))
    row = page.locator("tr", has_text=credential["email"])
    await row.wait_for()

    cells = [cell.strip() for cell in await row.locator("td").all_inner_texts()]
    assert key_id
    assert {"alpaca", credential["email"], key_id} <= set(cells)
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
    await page.click('a[href="#/forms/set-credential-secrets/"]')
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
    """Make sure no response this test's browser receives, across the credential pages, the secrets form and the audit log, holds a plaintext secret or an envelope."""
    new_api, new_secret = f"AK-{secrets.token_hex(10)}", f"SK-{secrets.token_hex(16)}"
    capture.secrets |= {new_api, new_secret}
    page = await log_in(context, server, superuser)
    await page.goto(f"{server.admin_url}/#/forms/set-credential-secrets/")
    await page.fill("input[name=user]", credential["email"])
    await page.fill("input[name=credential_type]", "alpaca")
    await page.fill("input[name=api_key]", new_api)
    await page.fill("input[name=secret_key]", new_secret)
    async with page.expect_response(lambda r: "/api/forms/" in r.url and r.request.method == "POST") as answer:
        await page.click("button:has-text('Submit')")
    assert (await answer.value).status == 200
    for route in ("user_credentials_admin", f"user_credentials_admin/{credential['id']}", "admin_audit_log"):
        async with page.expect_response(lambda r: "/api/tables/" in r.url):
            await page.goto(f"{server.admin_url}/#/{route}/")
        await page.wait_for_selector(".table_wrapper tbody tr, [data-uitest=save_button]")

    envelopes = {
        value
        for row in await owner.fetch("SELECT api_key, secret_key FROM user_credentials")
        for value in row
    }
    detail_url = f"/api/tables/user_credentials_admin/{credential['id']}/"
    await capture.settle()
    assert any(detail_url in url for url in capture.bodies), "the credential was never loaded"
    assert any("/api/forms/" in url for url in capture.bodies), "the form's answer was never read"
    assert await capture.leaks(capture.secrets | envelopes) == []


# Every page, as each kind of operator ########################################

#: What each kind of operator must be offered, per table: (label, add, edit, delete).
#: "form" for add: "Add row" leads to the secrets form.
OFFERED = {
    "superuser": {
        "user": ("Users (Better Auth)", False, False, False),
        "user_accounts": ("Accounts", True, True, True),
        "user_credentials_admin": ("Credentials", "form", True, True),
        "piccolo_user": ("Operators", True, True, True),
        "admin_audit_log": ("Audit Log", False, False, False),
    },
    "operator": {
        "user": ("Users (Better Auth)", False, False, False),
        "user_accounts": ("Accounts", False, False, False),
        "user_credentials_admin": ("Credentials", False, True, False),
        "piccolo_user": ("Operators", False, False, False),
        "admin_audit_log": ("Audit Log", False, False, False),
    },
}
#: On a credential, the only fields an operator may change.
CREDENTIAL_EDITABLE = {"is_active", "expires_at"}
SECRET_FORM = "#/forms/set-credential-secrets/"


@pytest_asyncio.fixture
async def audit_entry(owner: asyncpg.Pool) -> None:
    """At least one audit-log row, so its list page has something to show."""
    await owner.execute(
        "INSERT INTO admin_audit_log (actor_username, action, table_name, row_id, changes) "
        "VALUES ('browser-test', 'update', 'user_accounts', NULL, '{}')"
    )


async def shown(page: Page, selector: str) -> bool:
    return await page.locator(selector).first.is_visible()


async def visit(page: Page, server: AdminServer, route: str) -> None:
    await page.goto(f"{server.admin_url}/#/{route}")


async def check_list(page: Page, server: AdminServer, table: str, label: str, add) -> str:
    """The list page shows its label and rows; returns the first row's detail route."""
    await visit(page, server, f"{table}/")
    await page.wait_for_selector(f".title h1:text-is('{label}')")
    await page.wait_for_selector(".table_wrapper tbody tr")
    rows = page.locator(".table_wrapper tbody tr")
    assert await rows.count() >= 1, f"{table}: blank table"
    first = await rows.first.locator("td").all_inner_texts()
    assert any(text.strip() for text in first), f"{table}: blank row"
    add_button = page.locator(f'.title_bar a.button[href="#/{table}/add/"], .title_bar a.button[href="{SECRET_FORM}"]')
    if add:
        assert await add_button.is_visible(), f"{table}: no Add row"
        expected = SECRET_FORM if add == "form" else f"#/{table}/add/"
        assert await add_button.get_attribute("href") == expected
    else:
        assert not await add_button.is_visible(), f"{table}: Add row offered"
    assert not await shown(page, ".table_wrapper tbody input[type=checkbox]"), "bulk selection offered"
    link = rows.first.locator(f'a[href^="#/{table}/"]').first
    return (await link.get_attribute("href") or "").removeprefix("#/")


async def check_detail(page: Page, server: AdminServer, table: str, route: str, label: str, edit: bool, delete: bool) -> None:
    await visit(page, server, route)
    await page.wait_for_selector(f"h1:text-is('Edit {label}')")
    await page.wait_for_selector("form [name]", state="attached")
    controls = await page.eval_on_selector_all(
        "form [name]", "els => els.map(e => [e.getAttribute('name'), e.disabled])"
    )
    assert controls, f"{table}: blank form"
    for name, disabled in controls:
        may_change = edit and (table != "user_credentials_admin" or name in CREDENTIAL_EDITABLE)
        assert disabled != may_change, f"{table}.{name}: {'disabled' if disabled else 'editable'}"
    assert await shown(page, "[data-uitest=save_button]") == edit, f"{table}: Save"
    assert await shown(page, "[data-uitest=drop_down_button]") == delete, f"{table}: Delete menu"


async def check_add(page: Page, server: AdminServer, table: str, label: str, add) -> None:
    await visit(page, server, f"{table}/add/")
    if add == "form":
        await page.wait_for_url(f"**/{SECRET_FORM}")
        await page.wait_for_selector("input[name=api_key]")
        return
    await page.wait_for_selector(f"h1:text-is('Add {label}')")
    await page.wait_for_selector("form [name]", state="attached")
    assert await shown(page, "[data-uitest=create_button]") == bool(add), f"{table}: Create"
    if not add:
        enabled = await page.eval_on_selector_all("form [name]", "els => els.filter(e => !e.disabled).length")
        assert enabled == 0, f"{table}: fields offered on a refused add"


async def check_secret_form(page: Page, server: AdminServer, allowed: bool) -> None:
    await visit(page, server, "forms/set-credential-secrets/")
    await page.wait_for_selector("input[name=api_key]")
    for name in ("api_key", "secret_key"):
        field = page.locator(f"input[name={name}]")
        await page.wait_for_function(f"document.querySelector('input[name={name}]').type === 'password'")
        assert await field.get_attribute("autocomplete") == "new-password"
        assert await field.is_enabled() == allowed
    assert await shown(page, "[data-uitest=submit_custom_form_button]") == allowed


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["superuser", "operator"])
async def test_every_page_as_each_operator_kind(
    kind, context, server, superuser, operator, credential, new_user, audit_entry, capture, console, owner
) -> None:
    """Make sure every table's list, detail and add page, every form and the account pages render with data, offer only what the operator may do, and log no console error."""
    await new_user()  # a Better Auth user without an account, too
    page = await log_in(context, server, superuser if kind == "superuser" else operator)
    console.listening = True
    assert await page.title() == "Orchestrator admin"

    tables = await page.eval_on_selector_all(
        ".table_list a[href^='#/']", "els => els.map(e => e.getAttribute('href'))"
    )
    assert {href.strip("#/") for href in tables if "forms/" not in href} == set(OFFERED[kind])
    for table, (label, *_) in OFFERED[kind].items():
        assert await page.locator(SIDEBAR_LINK.format(table)).inner_text() == label
    # The secrets form is for superusers: an operator is not offered it.
    assert await shown(page, f'.table_list a[href="{SECRET_FORM}"]') == (kind == "superuser")
    for table, (label, add, edit, delete) in OFFERED[kind].items():
        detail = await check_list(page, server, table, label, add)
        await check_detail(page, server, table, detail, label, edit, delete)
        await check_add(page, server, table, label, add)
    await check_secret_form(page, server, allowed=kind == "superuser")
    for route, ready in (("", ".table_list"), ("change-password/", "input[type=password]")):
        await visit(page, server, route)
        await page.wait_for_selector(ready)
    await capture.quiet()  # a new document drops the bodies not read yet
    mfa = await page.goto(f"{server.admin_url}/api/mfa-setup/")
    assert mfa is not None and mfa.status == 200
    assert "content-security-policy" in mfa.headers
    await page.wait_for_load_state("load")

    envelopes = {v for row in await owner.fetch("SELECT api_key, secret_key FROM user_credentials") for v in row}
    assert await capture.leaks(capture.secrets | envelopes) == []
    assert console.errors == []


@pytest.mark.asyncio
async def test_expired_credential_is_shown_expired(context, server, operator, credential, owner, console) -> None:
    """Make sure an active credential past its expiry shows "expired" in the list, not the active tick, and an unexpired one does not."""
    await owner.execute(
        "UPDATE user_credentials SET expires_at = now() - interval '1 day' WHERE id = $1",
        uuid.UUID(credential["id"]),
    )
    page = await log_in(context, server, operator)
    console.listening = True
    await visit(page, server, "user_credentials_admin/")
    row = page.locator(".table_wrapper tbody tr", has_text=credential["email"])
    await row.wait_for()
    headers = [h.strip().lower() for h in await page.locator(".table_wrapper thead th").all_inner_texts()]
    cell = row.locator("td").nth(headers.index("is active"))

    await page.wait_for_function(
        "cell => cell.dataset.odbState === 'expired'", arg=await cell.element_handle()
    )
    shown_text = await cell.evaluate("cell => getComputedStyle(cell, '::after').content")
    assert shown_text == '"expired"'
    assert not await cell.locator("svg").is_visible()
    others = page.locator(".table_wrapper tbody td[data-odb-state]")
    assert await others.count() == 1
    assert console.errors == []
