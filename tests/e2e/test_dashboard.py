"""The web dashboard in a real browser: Debian's Chromium driven by Playwright.

Signs in with an API key, creates a capsule, types in its terminal and reads the output,
re-attaches, uploads and downloads a file, sees the metrics chart, snapshots and deletes a
template, looks at usage and API keys, and destroys the capsule. Saves a screenshot of each
page under docs/dashboard/.

Needs `chromium` (scripts/deps.sh) and the `playwright` package (scripts/e2e-venv.sh); the
browser is Debian's, never one downloaded by `playwright install`.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from conftest import MINIMAL, REPO_ROOT, TERMINAL, WrennServer, poll, wait_status

CHROMIUM = os.environ.get("WRENN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = REPO_ROOT / "docs" / "dashboard"
expect.set_options(timeout=20_000)
VIEWPORT = {"width": 1366, "height": 860}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/deps.sh", pytrace=False)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Browser, server: WrennServer) -> Iterator[Page]:
    """A fresh browser tab on the dashboard. Page errors and CSP violations fail the test."""
    ctx = browser.new_context(viewport=VIEWPORT, accept_downloads=True, color_scheme="light")
    pg = ctx.new_page()
    pg.set_default_timeout(20_000)
    problems: list[str] = []
    pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))

    def console(msg) -> None:
        # A refused fetch is logged by the browser as "Failed to load resource", and a
        # WebSocket dialled while the server restarts as ERR_CONNECTION_REFUSED (the page
        # cannot silence either); the page shows those in words, and the tests check them.
        network = ("Failed to load resource", "net::ERR_CONNECTION_REFUSED")
        if msg.type == "error" and not any(n in msg.text for n in network):
            problems.append(f"console: {msg.text}")

    pg.on("console", console)
    pg.on("dialog", lambda d: d.accept(d.default_value or ""))
    pg.goto(server.base_url + "/")
    try:
        yield pg
    finally:
        ctx.close()
    assert not problems, problems


def sign_in(page: Page, key: str) -> None:
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Capsules", exact=True)).to_be_visible()
    expect(page.locator("#live")).to_have_text("live")


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def terminal_text(page: Page) -> str:
    return page.locator("#terminal .xterm-rows").inner_text()


def type_in_terminal(page: Page, text: str) -> None:
    page.locator("#terminal").click()
    page.keyboard.type(text)
    page.keyboard.press("Enter")


def expect_terminal(page: Page, pattern: str | re.Pattern, timeout: float = 15) -> re.Match:
    rx = re.compile(pattern)
    return poll(
        lambda: rx.search(terminal_text(page)), timeout=timeout, what=f"terminal {rx.pattern!r}"
    )


def test_static_files_redirect_and_headers(server: WrennServer) -> None:
    r = httpx.get(server.base_url + "/", follow_redirects=False)
    assert r.status_code in (303, 307, 308), r.status_code
    assert r.headers["location"] == "/dashboard/"
    r = httpx.get(server.base_url + "/dashboard/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self';" in csp and "default-src 'none'" in csp, csp
    assert r.headers["x-content-type-options"] == "nosniff"
    etag = r.headers["etag"]
    r = httpx.get(server.base_url + "/dashboard/", headers={"If-None-Match": etag})
    assert r.status_code == 304
    r = httpx.get(server.base_url + "/dashboard/vendor/xterm/xterm.mjs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
    r = httpx.get(server.base_url + "/dashboard/missing.js")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_key_as_subprotocol_only_on_websocket_upgrades(server: WrennServer) -> None:
    """The browser's way to send the key (a WebSocket subprotocol) opens no other door."""
    from conftest import WS_UPGRADE_HEADERS

    offer = {"Sec-WebSocket-Protocol": f"wrenn, wrenn.key.{server.key_alpha}"}
    r = httpx.get(server.base_url + "/v1/capsules", headers=offer)
    assert r.status_code == 401, r.text
    bad = {"Sec-WebSocket-Protocol": "wrenn, wrenn.key.wrn_" + "0" * 40}
    pty = server.base_url + "/v1/capsules/cl-" + "0" * 25 + "/pty"
    r = httpx.get(pty, headers={**WS_UPGRADE_HEADERS, **bad})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", r.text


def test_keyboard_only_sign_in_and_navigation(page: Page, server: WrennServer) -> None:
    expect(page.get_by_label("API key")).to_be_focused()
    page.keyboard.type(server.key_alpha)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Capsules", exact=True)).to_be_visible()
    expect(page.locator("#main")).to_be_focused()
    # Backwards from the page: Sign out, then the navigation.
    for _ in range(4):
        page.keyboard.press("Shift+Tab")
    expect(page.get_by_role("link", name="Templates")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Templates and snapshots")).to_be_visible()
    expect(page.get_by_role("link", name="Templates")).to_have_attribute("aria-current", "page")
    # After a reload the first Tab reaches the skip link, which jumps to the page.
    page.reload()
    expect(page.get_by_role("heading", name="Templates and snapshots")).to_be_visible()
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#main")).to_be_focused()
    assert page.url.endswith("#/templates"), page.url


def test_bad_key_is_refused_in_words(page: Page) -> None:
    expect(page.get_by_role("heading", name="Sign in to Wrenn")).to_be_visible()
    shot(page, "signin")
    page.get_by_label("API key").fill("wrn_" + "0" * 40)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("That API key was not accepted")
    assert page.evaluate("sessionStorage.getItem('wrenn.apiKey')") is None


def test_capsule_terminal_files_metrics_and_destroy(
    page: Page, server: WrennServer, api: httpx.Client
) -> None:
    sign_in(page, server.key_alpha)
    assert page.evaluate("sessionStorage.getItem('wrenn.apiKey')") == server.key_alpha
    assert page.evaluate("localStorage.length") == 0

    # Create: the row appears and turns `running` from the event stream alone.
    page.locator("#new-template").select_option(MINIMAL)
    page.locator("#new-memory_mb").fill("256")
    page.get_by_role("button", name="Create capsule").click()
    link = page.locator(".notice.ok a")
    expect(link).to_have_text(re.compile(r"^cl-"))
    cid = link.inner_text()
    row = page.locator(f"#capsule-table tr[data-id='{cid}']")
    expect(row.locator(".status")).to_have_text("running", timeout=60_000)
    expect(row).to_contain_text("256 MiB")
    assert api.get(f"/v1/capsules/{cid}").json()["memory_mb"] == 256
    shot(page, "capsules")

    try:
        row.get_by_role("link", name=cid).click()
        expect(page.locator("h1")).to_have_text(cid)

        # Terminal: type, read the output back.
        expect(page.locator("#terminal-state")).to_contain_text("connected (pty-")
        type_in_terminal(page, "export MARK=wren$((6*7)); echo dash-$((6*7))")
        expect_terminal(page, r"dash-42")

        # The keyboard is never trapped: Ctrl+] leaves the terminal.
        page.locator("#terminal").click()
        page.keyboard.press("Control+BracketRight")
        expect(page.locator("#terminal-help")).to_be_focused()

        # Resize: the shell sees the terminal's new size.
        size = re.compile(r"^(\d+)\s(\d+)\s*$", re.M)
        type_in_terminal(page, "clear; stty size")
        before = expect_terminal(page, size)
        page.set_viewport_size({"width": 1000, "height": 860})
        time.sleep(0.5)
        type_in_terminal(page, "clear; stty size")
        cols = int(before.group(2))
        after = poll(
            lambda: (m := size.search(terminal_text(page))) and int(m.group(2)) < cols and m,
            timeout=15,
            what=f"fewer columns than {before.group(0)!r}",
        )
        assert int(after.group(1)) > 0, after.group(0)
        page.set_viewport_size(VIEWPORT)

        # Reconnect re-attaches to the same shell (same tag, same variables).
        tag = re.search(r"pty-[0-9a-z]+", page.locator("#terminal-state").inner_text()).group(0)
        page.get_by_role("button", name="Reconnect").click()
        expect(page.locator("#terminal-state")).to_have_text(f"connected ({tag})")
        type_in_terminal(page, "echo mark=$MARK")
        expect_terminal(page, r"mark=wren42")

        # New shell: another session (the old one is killed), without the old variables.
        page.get_by_role("button", name="New shell").click()
        expect(page.locator("#terminal-state")).to_contain_text("connected (pty-")
        expect(page.locator("#terminal-state")).not_to_contain_text(tag)
        type_in_terminal(page, "echo mark=[$MARK]")
        expect_terminal(page, r"mark=\[\]")

        # Files: upload into /tmp, see it listed, download it back.
        page.locator("#files-path").fill("/tmp")
        page.get_by_role("button", name="Open").click()
        expect(page.locator("#files-path")).to_have_value("/tmp")
        payload = b"hello from the dashboard\n" + bytes(range(256))
        page.locator("#files-upload").set_input_files(
            files=[{"name": "dash.bin", "mimeType": "application/octet-stream", "buffer": payload}]
        )
        page.locator("#files-upload-button").click()
        expect(page.locator("#file-table tr[data-name='dash.bin']")).to_be_visible()
        r = api.post(f"/v1/capsules/{cid}/files/read", json={"path": "/tmp/dash.bin"})
        assert r.status_code == 200 and r.content == payload
        with page.expect_download() as dl:
            page.get_by_role("button", name="Download dash.bin").click()
        assert dl.value.suggested_filename == "dash.bin"
        assert Path(dl.value.path()).read_bytes() == payload

        # Metrics: the CPU, memory and disk charts draw real samples.
        for cls in ("cpu", "mem", "disk"):
            line = page.locator(f"#metrics path.line.{cls}")
            expect(line).to_have_count(1, timeout=30_000)
        mem_line = page.locator("#metrics path.line.mem")
        poll(
            lambda: int(mem_line.get_attribute("data-points") or 0) >= 4,
            timeout=40,
            what="four memory samples",
        )
        type_in_terminal(page, "clear; uname -a; ls /")
        expect_terminal(page, r"Linux")
        page.locator("#terminal-state").focus()
        shot(page, "capsule")

        # Templates: snapshot the capsule, see it, delete it.
        page.get_by_role("link", name="Templates").click()
        page.locator("#snap-capsule").select_option(cid)
        page.locator("#snap-name").fill("dash-snap")
        page.get_by_role("button", name="Snapshot", exact=True).click()
        snap_row = page.locator("#template-table tr[data-name='dash-snap']")
        expect(snap_row).to_be_visible(timeout=60_000)
        expect(snap_row).to_contain_text("snapshot")
        shot(page, "templates")
        snap_row.get_by_role("button", name="Delete template dash-snap").click()
        expect(page.locator(".notice")).to_have_text("Deleted template dash-snap.", timeout=60_000)
        expect(snap_row).to_have_count(0)
        assert "dash-snap" not in {t["name"] for t in api.get("/v1/snapshots").json()}

        # Usage: today's bars and the current reservation.
        page.get_by_role("link", name="Usage").click()
        expect(page.locator("#usage-charts svg")).to_have_count(2)
        expect(page.locator(".tile").first).to_contain_text("Running capsules")
        shot(page, "usage")

        # Pause and resume from the capsule page; the badge follows the events.
        page.go_back()
        page.go_back()
        expect(page.locator("h1")).to_have_text(cid)
        page.get_by_role("button", name=f"Pause {cid}").click()
        expect(page.locator(".title .status")).to_have_text("paused", timeout=30_000)
        expect(page.locator("#terminal")).to_have_count(0)
        page.get_by_role("button", name=f"Resume {cid}").click()
        expect(page.locator(".title .status")).to_have_text("running", timeout=30_000)
        expect(page.locator("#terminal-state")).to_contain_text("connected (pty-")
        type_in_terminal(page, "echo back-$((2+3))")
        expect_terminal(page, r"back-5")

        # Destroy: back to the list, the row is gone, the API agrees.
        page.get_by_role("button", name=f"Destroy {cid}").click()
        expect(page.get_by_role("heading", name="Capsules", exact=True)).to_be_visible()
        expect(page.locator(f"#capsule-table tr[data-id='{cid}']")).to_have_count(0, timeout=30_000)
        wait_status(api, cid, TERMINAL, timeout=30, fail_on=frozenset())
    finally:
        api.delete(f"/v1/capsules/{cid}")


def test_api_keys_page(page: Page, server: WrennServer, api: httpx.Client) -> None:
    sign_in(page, server.key_alpha)
    page.get_by_role("link", name="API keys").click()
    expect(page.get_by_role("heading", name="API keys")).to_be_visible()
    listing = api.get("/v1/api-keys")
    assert listing.status_code == 200, listing.text
    page.locator("#key-name").fill("dashboard-test")
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#new-key").inner_text()
    assert secret.startswith("wrn_")
    row = page.locator("#key-table tr", has_text="dashboard-test")
    expect(row).to_have_count(1)
    expect(row).to_contain_text(secret[:8])
    with server.client(secret) as c:
        assert c.get("/v1/capsules").status_code == 200
    shot(page, "keys")
    row.get_by_role("button", name="Revoke key dashboard-test").click()
    expect(row).to_have_count(0)
    with server.client(secret) as c:
        assert c.get("/v1/capsules").status_code == 401


def test_reconnects_after_a_server_restart(
    page: Page, server: WrennServer, api: httpx.Client, restart_server
) -> None:
    """The event stream and the terminal come back by themselves; the shell is the same one."""
    r = api.post("/v1/capsules", json={"template": "busybox"})
    assert r.status_code == 202, r.text
    cid = r.json()["id"]
    try:
        wait_status(api, cid, {"running"})
        sign_in(page, server.key_alpha)
        page.goto(f"{server.base_url}/dashboard/#/capsules/{cid}")
        state = page.locator("#terminal-state")
        expect(state).to_contain_text("connected (pty-")
        tag = re.search(r"pty-[0-9a-z]+", state.inner_text()).group(0)
        type_in_terminal(page, "X=re$((1+2))")

        restart_server()

        expect(page.locator("#live")).to_have_text("live", timeout=30_000)
        expect(state).to_have_text(f"connected ({tag})", timeout=30_000)
        type_in_terminal(page, "echo x=$X")
        expect_terminal(page, r"x=re3")

        # The list follows capsules made by other clients, over the new stream.
        page.get_by_role("link", name="Capsules", exact=True).click()
        r = api.post("/v1/capsules", json={"template": "busybox"})
        assert r.status_code == 202, r.text
        other = r.json()["id"]
        row = page.locator(f"#capsule-table tr[data-id='{other}']")
        expect(row.locator(".status")).to_have_text("running", timeout=30_000)
        api.delete(f"/v1/capsules/{other}")
        expect(row).to_have_count(0, timeout=30_000)
    finally:
        with contextlib.suppress(httpx.HTTPError):  # a failed restart must not hide its error
            api.delete(f"/v1/capsules/{cid}")
