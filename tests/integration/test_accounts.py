"""Connected accounts: a token pair from Coder's OAuth2 provider is renewed before it
expires, once per account even when many ask at once; what waited for a person resumes
when they connect."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from service.accounts import REFRESH_MARGIN_SECONDS, CoderTokens, connect, open_pair
from service.coder.base import CoderUser
from service.coder.client import CoderClient
from service.coder.oauth2 import CoderOAuth
from service.core.events import IssueEvent, Person
from service.store import open_store
from service.store.base import Identity, NewDelivery, Store
from service.vault import Vault
from service.web.sessions import pkce_pair
from tests.fakes.coder import FakeCoder
from tests.fakes.server import serve_in_thread

CALLBACK = "https://bridge.example.test/connect/coder/callback"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await open_store(f"sqlite:///{tmp_path}/bridge.db")
    await opened.migrate()
    yield opened
    await opened.close()


@pytest.fixture
def coder() -> Iterator[tuple[FakeCoder, str]]:
    fake = FakeCoder("chats")
    fake.add_user("alice")
    fake.browser_user = "alice"
    with serve_in_thread(fake.app()) as url:
        yield fake, url


async def test_an_oauth_pair_is_renewed_before_it_expires_once_per_account(
    store: Store, coder: tuple[FakeCoder, str],
) -> None:
    fake, url = coder
    fake.oauth2_token_lifetime = 3600
    client_id, secret = fake.add_oauth2_app(CALLBACK)
    clock = Clock()
    vault = Vault([b"v" * 32])
    async with httpx.AsyncClient() as http:
        oauth = CoderOAuth(url, client_id, secret, redirect_uri=CALLBACK, http=http,
                           clock=clock)
        verifier, challenge = pkce_pair()
        approved = await http.post(await oauth.authorize_url(state="s", challenge=challenge))
        code = parse_qs(urlsplit(approved.headers["location"]).query)["code"][0]
        pair = await oauth.exchange(code, verifier)
        user = await CoderClient(url, pair.access_token, http=http, timeout=5).fetch_me()
        account, _ = await connect(store, vault, user=user, token=pair,
                                   identities=[Identity("github", "1")], now=clock())
        assert account.token_kind == "oauth" and account.token_expires_at == clock() + 3600
        tokens = CoderTokens(store, vault, oauth, clock=clock)

        assert await tokens.token_for(account) == pair.access_token  # an hour left: as is
        clock.now += 3600 - REFRESH_MARGIN_SECONDS + 1
        renewed = await asyncio.gather(*(tokens.token_for(account) for _ in range(5)))
        assert len(set(renewed)) == 1 and renewed[0] != pair.access_token  # one refresh
        stored = await store.get_account(account.id)
        assert stored is not None and open_pair(vault, stored).access_token == renewed[0]
        me = await CoderClient(url, renewed[0], http=http, timeout=5).fetch_me()
        assert me.username == "alice"


async def test_connecting_resumes_what_waited_for_that_person(store: Store) -> None:
    event = IssueEvent("github", "d-1", "github:1:1", "9", "1", "t", "", "https://g/1", "o/r",
                       Person("21031067", "Codertocat"), Person("21031067", "Codertocat"))
    await store.accept([NewDelivery(tracker="github", delivery_id="d-1",
                                    issue_key="github:1:1", event_json=event.to_json(),
                                    received_at=1.0, body_sha256="a" * 64)])
    [job] = await store.claim("w", now=2.0, lease_seconds=30, limit=1)
    await store.finish_job(job.id, "w")
    waiting = await store.create_delegation(issue_key="github:1:1", tracker="github",
                                            delivery_id="d-1", generation=1, now=2.0)
    await store.save_delegation(replace(waiting, state="needs_link",
                                        trigger_json=event.to_json()))
    vault = Vault([b"v" * 32])
    _, resumed = await connect(store, vault, user=CoderUser("u-9", "someone"), token="t",
                               identities=[Identity("github", "999")], now=3.0)
    assert resumed == 0  # not the person it waits for
    _, resumed = await connect(store, vault, user=CoderUser("u-1", "codertocat"), token="t",
                               identities=[Identity("github", "21031067")], now=4.0)
    assert resumed == 1
    [again] = await store.claim("w", now=5.0, lease_seconds=30, limit=1)
    assert again.delivery_id == "d-1" and again.kind == "trigger"
