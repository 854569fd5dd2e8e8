"""Sign in with GitHub and Linear, and Coder's OAuth2 provider: the bridge's clients
against the fakes, which answer as reference oauth.md says (codes single-use, PKCE
checked, errors in each provider's own shape)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from service.coder.client import CoderClient
from service.coder.oauth2 import CoderOAuth
from service.errors import PermanentError, TokenRejected
from service.trackers.github.oauth import GitHubSignIn
from service.trackers.linear.oauth import LinearSignIn
from service.web.sessions import new_state, pkce_pair
from tests.fakes.coder import FakeCoder
from tests.fakes.github import FakeGitHub
from tests.fakes.linear import FakeLinear
from tests.fakes.server import serve_in_thread

CALLBACK = "https://bridge.example.test/connect/{}/callback"


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


async def follow(http: httpx.AsyncClient, url: str, *, method: str = "GET") -> dict[str, str]:
    """Visit an authorize URL as the browser would; the callback's query parameters."""
    answer = await http.request(method, url)
    assert answer.status_code == 302, answer.text
    return {k: v[0] for k, v in parse_qs(urlsplit(answer.headers["location"]).query).items()}


async def test_github_sign_in_names_the_user_and_keeps_no_token(
    http: httpx.AsyncClient,
) -> None:
    fake = FakeGitHub()
    fake.configure_oauth("Iv1.client", "client-secret")
    fake.set_user_id("Codertocat", 21031067)
    with serve_in_thread(fake) as url:
        sign_in = GitHubSignIn(web_url=url, api_url=url, client_id="Iv1.client",
                               client_secret="client-secret",
                               redirect_uri=CALLBACK.format("github"), http=http)
        state = new_state()
        verifier, challenge = pkce_pair()
        back = await follow(http, await sign_in.authorize_url(state=state, challenge=challenge))
        assert back["state"] == state
        who = await sign_in.identify(back["code"], verifier)
        assert (who.id, who.login) == ("21031067", "Codertocat")
        assert fake.live_oauth_tokens == 0  # dropped at once
        with pytest.raises(TokenRejected) as used:  # a code works once
            await sign_in.identify(back["code"], verifier)
        assert used.value.public == "the sign-in expired or was already used; start again"

        other = await follow(http, await sign_in.authorize_url(state=state, challenge=challenge))
        with pytest.raises(TokenRejected):  # PKCE: another verifier is refused
            await sign_in.identify(other["code"], pkce_pair()[0])
        wrong = GitHubSignIn(web_url=url, api_url=url, client_id="Iv1.client",
                             client_secret="not-it", redirect_uri=CALLBACK.format("github"),
                             http=http)
        third = await follow(http, await wrong.authorize_url(state=state, challenge=challenge))
        with pytest.raises(PermanentError) as misconfigured:
            await wrong.identify(third["code"], verifier)
        assert "misconfigured" in misconfigured.value.public
        assert "not-it" not in str(misconfigured.value)


async def test_linear_sign_in_names_the_user(http: httpx.AsyncClient) -> None:
    fake = FakeLinear()
    fake.configure_oauth("lin-client", "lin-secret")
    fake.add_user("Ada Lovelace", "5f8c3b8e-2a41-4c55-9a3e-0d6f1c2b7a10")
    with serve_in_thread(fake) as url:
        sign_in = LinearSignIn(web_url=url, api_url=f"{url}/graphql", client_id="lin-client",
                               client_secret="lin-secret",
                               redirect_uri=CALLBACK.format("linear"), http=http)
        verifier, challenge = pkce_pair()
        authorize = await sign_in.authorize_url(state="s1", challenge=challenge)
        query = parse_qs(urlsplit(authorize).query)
        assert (query["actor"], query["scope"], query["code_challenge_method"]) == (
            ["user"], ["read"], ["S256"])
        back = await follow(http, authorize)
        who = await sign_in.identify(back["code"], verifier)
        assert (who.id, who.login) == ("5f8c3b8e-2a41-4c55-9a3e-0d6f1c2b7a10", "Ada Lovelace")
        with pytest.raises(TokenRejected):
            await sign_in.identify(back["code"], verifier)


async def test_connect_with_coder_exchanges_refreshes_and_revokes(
    http: httpx.AsyncClient,
) -> None:
    fake = FakeCoder("chats")
    fake.add_user("alice")
    fake.browser_user = "alice"
    with serve_in_thread(fake.app()) as url:
        oauth = CoderOAuth(url, "unused", "unused", redirect_uri=CALLBACK.format("coder"),
                           http=http)
        assert not await oauth.offered()  # off by default, as on Coder
        client_id, secret = fake.add_oauth2_app(CALLBACK.format("coder"))
        oauth = CoderOAuth(url, client_id, secret, redirect_uri=CALLBACK.format("coder"),
                           http=http)
        assert await oauth.offered()
        verifier, challenge = pkce_pair()
        authorize = await oauth.authorize_url(state="s2", challenge=challenge)
        page = await http.get(authorize)
        assert page.status_code == 200 and "alice" in page.text  # Coder's consent page
        back = await follow(http, authorize, method="POST")  # "Allow"
        assert back["state"] == "s2"
        pair = await oauth.exchange(back["code"], verifier)
        assert pair.expires_at is not None
        me = await CoderClient(url, pair.access_token, http=http, timeout=5).fetch_me()
        assert me.username == "alice"

        fresh = await oauth.refresh(pair.refresh_token)
        assert fresh.access_token != pair.access_token
        with pytest.raises(TokenRejected):  # the old pair stopped working
            await CoderClient(url, pair.access_token, http=http, timeout=5).fetch_me()
        with pytest.raises(TokenRejected):
            await oauth.refresh(pair.refresh_token)
        await oauth.revoke(fresh.refresh_token)
        assert fake.oauth2_refresh_tokens == 0
        with pytest.raises(TokenRejected):
            await CoderClient(url, fresh.access_token, http=http, timeout=5).fetch_me()

        wrong = CoderOAuth(url, client_id, "wrong", redirect_uri=CALLBACK.format("coder"),
                           http=http)
        again = await follow(http, await wrong.authorize_url(state="s3", challenge=challenge),
                             method="POST")
        with pytest.raises(PermanentError) as refused:
            await wrong.exchange(again["code"], verifier)
        assert "misconfigured" in refused.value.public
