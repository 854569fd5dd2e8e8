"""The reconciliation sweep with a GitHub App and no repository list: every repository of
every installation is searched, over GitHub's pagination, against FakeGitHub on loopback."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from service.config import GitHubConfig, Secret
from service.trackers.github.api import GitHubClient
from service.trackers.github.app_auth import AppAuth
from service.trackers.github.redelivery import MAX_PER_SWEEP
from service.trackers.github.sweep import GitHubSweep
from tests.fakes.github import FakeGitHub
from tests.fakes.server import serve_in_thread

APP_ID = 777
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
KEY_PEM = KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
PUBLIC_PEM = KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
LABEL = "delegate-to-agent"
AUTHOR = (41, "alice")


def stamp(seconds_ago: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - seconds_ago))


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def fake() -> Iterator[FakeGitHub]:
    fake = FakeGitHub(tokens={})
    big = [f"acme/r{n:03}" for n in range(105)]  # two pages of installation repositories
    # 101 installations: the one covering beta/app is on the second page
    installations = {1: big, 500: ["beta/app"]} | {100 + n: [] for n in range(99)}
    for name in [*big, "beta/app"]:
        fake.add_issue(name, 1)
    fake.configure_app(APP_ID, PUBLIC_PEM, installations=installations)
    fake.add_labelled_issue("acme/r103", 5, label=LABEL, author=AUTHOR, labeler=AUTHOR,
                            updated_at=stamp(60))
    fake.add_labelled_issue("beta/app", 7, label=LABEL, author=AUTHOR, labeler=(42, "bob"),
                            updated_at=stamp(60))
    fake.add_labelled_issue("acme/r001", 9, label="other", author=AUTHOR, labeler=AUTHOR,
                            updated_at=stamp(60))
    fake.add_labelled_issue("acme/r002", 3, label=LABEL, author=AUTHOR, labeler=AUTHOR,
                            updated_at=stamp(3 * 86400))
    yield fake


async def test_an_app_without_a_list_searches_every_repository_of_every_installation(
    fake: FakeGitHub, http: httpx.AsyncClient,
) -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:  # search's spacing, counted but not waited
        waits.append(seconds)

    with serve_in_thread(fake) as url:
        auth = AppAuth(url, APP_ID, KEY_PEM, http=http)
        client = GitHubClient(url, auth, http=http)
        config = GitHubConfig(webhook_secrets=(Secret("s" * 20),), api_url=url, app_id=APP_ID,
                              trigger_label=LABEL)
        found = await GitHubSweep(client, config, sleep=sleep).labelled_issues(
            since=time.time() - 86400)

    by_scope = {(e.scope, e.number): e for e in found}
    assert set(by_scope) == {("acme/r103", "5"), ("beta/app", "7")}
    assert by_scope[("acme/r103", "5")].installation_id == 1
    assert by_scope[("beta/app", "7")].installation_id == 500
    assert by_scope[("beta/app", "7")].labeler is not None
    assert by_scope[("beta/app", "7")].labeler.login == "bob"
    # 105 repositories, five a query: 21 searches for installation 1, one for installation
    # 2, spaced apart (the first needs no wait)
    assert len(waits) == 21


async def test_failed_app_deliveries_are_read_over_pages_and_asked_for_again_in_bounds(
    fake: FakeGitHub, http: httpx.AsyncClient,
) -> None:
    """The history is read page by page (cursor in ``Link``) back to ``since`` only, and at
    most ``MAX_PER_SWEEP`` deliveries are asked for in one sweep, the newest first."""
    now = time.time()
    old = fake.record_hook_delivery("too-old", event="issue_comment", action="created",
                                    status_code=503, delivered_at=now - 2 * 86400)
    ids = [fake.record_hook_delivery(f"missed-{n}", event="issue_comment", action="created",
                                     status_code=503, delivered_at=now - 600 + n)
           for n in range(MAX_PER_SWEEP + 20)]
    with serve_in_thread(fake) as url:
        auth = AppAuth(url, APP_ID, KEY_PEM, http=http)
        client = GitHubClient(url, auth, http=http)
        config = GitHubConfig(webhook_secrets=(Secret("s" * 20),), api_url=url, app_id=APP_ID,
                              trigger_label=LABEL)
        sweep = GitHubSweep(client, config)
        assert await sweep.redeliver_failed(since=now - 86400) == MAX_PER_SWEEP
        assert fake.hook_redeliveries == list(reversed(ids))[:MAX_PER_SWEEP]
        assert old not in fake.hook_redeliveries
        assert fake.requests.count(("GET", "/app/hook/deliveries")) == 2
