"""The /connect page in a real browser: headless Chromium (Debian's ``chromium``, driven
by Playwright) against the bridge process and the fakes of GitHub, Linear and Coder.

Each test clicks what a person clicks, by the accessible names interface §6 gives, and
writes a screenshot of the page in each state under its tmp dir.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.e2e.harness import AUTHOR_GITHUB_ID, AUTHOR_LINEAR_ID, Bridge, running_bridge, wait_for

CHROMIUM = os.environ.get("CODER_BRIDGE_CHROMIUM", "/usr/bin/chromium")
CONSENT = "Others may delegate my issues to my Coder account"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), (
        f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium), "
        "as .ci/run does")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    opened = context.new_page()
    opened.set_default_timeout(15_000)
    yield opened
    context.close()


def shot(page: Page, tmp_path: Path, name: str) -> None:
    page.screenshot(path=str(tmp_path / "screenshots" / f"{name}.png"), full_page=True)


def with_sign_in(bridge: Bridge) -> None:
    bridge.github.configure_oauth("Iv1.bridge", "github-client-secret")
    bridge.github.set_user_id("Codertocat", int(AUTHOR_GITHUB_ID))
    bridge.linear.configure_oauth("linear-bridge", "linear-client-secret")
    bridge.linear.add_user("Ada Lovelace", AUTHOR_LINEAR_ID)


SIGN_IN = {"public_url": "SELF", "github_oauth": ("Iv1.bridge", "github-client-secret"),
           "linear_oauth": ("linear-bridge", "linear-client-secret")}


def test_sign_in_paste_a_token_test_and_disconnect(
    tmp_path: Path, page: Page,
) -> None:
    with running_bridge(tmp_path, start=False, **SIGN_IN) as bridge:
        with_sign_in(bridge)
        token = bridge.coder.add_user("codertocat")
        bridge.start()
        page.goto(f"{bridge.url}/connect")
        expect(page.get_by_role("heading", name="Connect your Coder account")).to_be_visible()
        expect(page.get_by_role("button", name="Save token")).to_have_count(0)
        shot(page, tmp_path, "1-signed-out")

        page.get_by_role("button", name="Sign in with GitHub").click()
        expect(page.get_by_role("status")).to_have_text(
            "Signed in with GitHub as Codertocat.")
        shot(page, tmp_path, "2-signed-in")

        page.get_by_label("Coder token").fill("abcdefghij-0000000000000000000000")
        page.get_by_role("button", name="Save token").click()
        expect(page.get_by_role("status")).to_contain_text("Coder rejected that token")
        shot(page, tmp_path, "3-rejected")

        page.get_by_label("Coder token").fill(token)
        page.get_by_role("button", name="Save token").click()
        expect(page.locator("p.connected")).to_contain_text("Connected as codertocat on")
        assert token not in page.content() and token.split("-")[1] not in page.content()
        shot(page, tmp_path, "4-connected")

        page.get_by_role("button", name="Test connection").click()
        expect(page.get_by_role("status")).to_contain_text(
            "Coder answered: connected as codertocat")
        page.get_by_role("checkbox", name=CONSENT).check()
        page.get_by_role("button", name="Save setting").click()
        expect(page.get_by_role("checkbox", name=CONSENT)).to_be_checked()
        listing = bridge.cli("users", "list").stdout
        assert "codertocat\tgithub:21031067 (Codertocat)\ttoken valid" in listing
        assert "others may delegate" in listing

        page.get_by_role("button", name="Sign in with Linear").click()  # both: one account
        expect(page.get_by_role("status")).to_have_text(
            "Signed in with Linear as Ada Lovelace.")
        assert f"linear:{AUTHOR_LINEAR_ID}" in bridge.cli("users", "list").stdout

        [cookie] = [c for c in page.context.cookies() if c["name"] == "coder-bridge-session"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
        assert not cookie["secure"]  # http on loopback; Secure and __Host- under https
        assert token not in cookie["value"]

        page.get_by_role("button", name="Disconnect").click()
        expect(page.get_by_role("status")).to_contain_text("Disconnected")
        expect(page.get_by_role("button", name="Save token")).to_be_visible()
        assert "no linked accounts" in bridge.cli("users", "list").stdout
        shot(page, tmp_path, "5-disconnected")

        page.get_by_role("button", name="Sign out").click()
        expect(page.get_by_role("button", name="Sign in with GitHub")).to_be_visible()
        assert bridge.github.live_oauth_tokens == 0  # the sign-in token was dropped
        assert token not in bridge.logs()


def test_sign_in_with_linear_and_connect_with_coder(tmp_path: Path, page: Page) -> None:
    with running_bridge(tmp_path, start=False, coder_mode="chats", **SIGN_IN) as bridge:
        with_sign_in(bridge)
        bridge.coder.add_user("ada")
        bridge.coder.browser_user = "ada"
        client_id, secret = bridge.coder.add_oauth2_app(f"{bridge.url}/connect/coder/callback")
        bridge.settings["coder_oauth"] = (client_id, secret)
        bridge.start()

        page.goto(f"{bridge.url}/connect")
        page.get_by_role("button", name="Sign in with Linear").click()
        expect(page.get_by_role("status")).to_have_text(
            "Signed in with Linear as Ada Lovelace.")
        page.get_by_role("button", name="Connect with Coder").click()
        expect(page.get_by_role("heading", name="Authorize coder-bridge")).to_be_visible()
        shot(page, tmp_path, "1-coder-consent")
        page.get_by_role("button", name="Allow").click()
        expect(page.locator("p.connected")).to_contain_text("Connected as ada on")
        expect(page.get_by_text("(connected with Coder)")).to_be_visible()
        shot(page, tmp_path, "2-connected-with-coder")
        listing = bridge.cli("users", "list").stdout
        assert f"ada\tlinear:{AUTHOR_LINEAR_ID}" in listing and "token valid" in listing

        page.get_by_role("button", name="Test connection").click()
        expect(page.get_by_role("status")).to_contain_text("connected as ada")
        page.get_by_role("button", name="Disconnect").click()
        expect(page.get_by_role("status")).to_contain_text("Disconnected")
        assert bridge.coder.oauth2_refresh_tokens == 0  # revoked at Coder


def test_forged_posts_and_floods_are_refused_and_the_page_is_locked_down(
    tmp_path: Path, page: Page,
) -> None:
    with running_bridge(tmp_path, start=False, **SIGN_IN) as bridge:
        with_sign_in(bridge)
        token = bridge.coder.add_user("codertocat")
        bridge.start()
        page.goto(f"{bridge.url}/connect")
        page.get_by_role("button", name="Sign in with GitHub").click()
        page.get_by_label("Coder token").fill(token)
        page.get_by_role("button", name="Save token").click()
        expect(page.locator("p.connected")).to_contain_text("Connected as codertocat on")

        answer = httpx.get(f"{bridge.url}/connect")
        headers = answer.headers
        assert headers["cache-control"] == "no-store"
        assert headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert "script-src" not in headers["content-security-policy"]  # default-src 'none'
        assert headers["referrer-policy"] == "same-origin"

        cookies = {c["name"]: c["value"] for c in page.context.cookies()}
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.content())
        assert csrf
        with httpx.Client(base_url=bridge.url, cookies=cookies) as client:
            forged = client.post("/connect/disconnect", data={"csrf": "guessed"})
            assert forged.status_code == 403
            other_site = client.post("/connect/disconnect", data={"csrf": csrf.group(1)},
                                     headers={"Origin": "https://evil.example"})
            assert other_site.status_code == 403
            assert "codertocat" in bridge.cli("users", "list").stdout  # still connected
            answers = [client.post("/connect/token", data={"csrf": csrf.group(1),
                                                           "token": "abcdefghij-" + "x" * 22})
                       .status_code for _ in range(7)]
            assert answers[:4] == [303] * 4 and 429 in answers  # one earlier, five a minute
        state = httpx.get(f"{bridge.url}/connect/github/callback?code=x&state=forged")
        assert state.status_code == 400


def test_an_unlinked_author_connects_and_the_same_comment_becomes_the_task(
    tmp_path: Path, page: Page,
) -> None:
    with running_bridge(tmp_path, start=False, **SIGN_IN) as bridge:
        with_sign_in(bridge)
        token = bridge.coder.add_user("codertocat")
        bridge.start()
        bridge.deliver()
        waiting = bridge.wait_for_comment("has not connected a Coder account")
        assert f"{bridge.url}/connect" in waiting["body"]
        assert bridge.coder.tasks == []

        page.goto(f"{bridge.url}/connect")
        page.get_by_role("button", name="Sign in with GitHub").click()
        page.get_by_label("Coder token").fill(token)
        page.get_by_role("button", name="Save token").click()
        expect(page.get_by_role("status")).to_contain_text("1 request waiting for you has "
                                                           "started")
        comment = bridge.wait_for_comment("/tasks/codertocat/", timeout=10)
        assert comment["id"] == waiting["id"]  # the same comment, edited
        wait_for(lambda: len(bridge.coder.tasks) == 1, what="the task")
        assert len(bridge.comments()) == 1
