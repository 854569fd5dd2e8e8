"""GitHub App authentication (AppAuth) with respx, and end to end against FakeGitHub."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import jwt
import msgspec
import pytest
import respx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from service.core.events import IssueEvent, Person
from service.errors import NotFound, PermanentError, TokenRejected, TransientError
from service.trackers.github.api import GitHubAppCredential, GitHubAuth, GitHubClient, TokenAuth
from service.trackers.github.app_auth import AppAuth
from service.trackers.github.ratelimit import ContentRateLimiter
from tests.fakes.github import (
    JWT_DECODE_MESSAGE,
    JWT_EXP_TOO_FAR_MESSAGE,
    JWT_EXPIRED_MESSAGE,
    JWT_IAT_MESSAGE,
    FakeGitHub,
)
from tests.fakes.server import serve_in_thread

API = "https://api.github.com"
APP_ID = 12345
INSTALLATION = 4242
REPO = "acme/app"
NOW = 1_768_472_000.0
MARKER = "<!-- coder-bridge:delegation=abc123 -->"
TOKEN_URL = f"{API}/app/installations/{INSTALLATION}/access_tokens"
LOOKUP_URL = f"{API}/repos/{REPO}/installation"
TOKEN = "ghs_installation_token_never_shown"


def private_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def public_pem(key: rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
KEY_PEM = private_pem(KEY)
PUBLIC_PEM = public_pem(KEY)


class FakeTime:
    """A Unix clock moved by tests and by ``sleep`` (which yields to the loop once)."""

    def __init__(self, start: float = NOW) -> None:
        self.now = start

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def event(number: int = 1, *, installation_id: int | None = INSTALLATION) -> IssueEvent:
    return IssueEvent(
        tracker="github",
        delivery_id=f"delivery-{number}",
        issue_key=f"github:1:{number}",
        issue_id=str(number),
        number=str(number),
        title="t",
        body="",
        url=f"https://github.com/{REPO}/issues/{number}",
        scope=REPO,
        author=Person("1", "octocat"),
        labeler=Person("1", "octocat"),
        installation_id=installation_id,
    )


def body(text: str) -> str:
    return f"{MARKER}\n{text}"


def token_answer(token: str = TOKEN, expires_at: str = "2026-01-15T11:13:20Z") -> httpx.Response:
    return httpx.Response(201, json={"token": token, "expires_at": expires_at})


def claims_of(header: str) -> dict[str, Any]:
    scheme, _, token = header.partition(" ")
    assert scheme == "Bearer"
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    decoded: dict[str, Any] = jwt.decode(
        token, KEY.public_key(), algorithms=["RS256"], options={"verify_exp": False}
    )
    return decoded


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as client:
        yield client


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as mock:
        yield mock


@pytest.fixture
def clock() -> FakeTime:
    return FakeTime()


@pytest.fixture
def auth(http: httpx.AsyncClient, clock: FakeTime) -> AppAuth:
    return AppAuth(API, APP_ID, KEY_PEM, http=http, clock=clock.clock)


# ---------------------------------------------------------------------------
# The App JWT and the token exchange (respx)


def test_app_auth_satisfies_both_protocols(auth: AppAuth) -> None:
    as_auth: GitHubAuth = auth
    assert isinstance(as_auth, GitHubAppCredential)
    assert not isinstance(TokenAuth("t"), GitHubAppCredential)


def test_jwt_claims(auth: AppAuth) -> None:
    claims = claims_of(f"Bearer {auth.app_jwt()}")
    assert claims == {"iat": int(NOW) - 60, "exp": int(NOW) + 540, "iss": str(APP_ID)}
    assert claims["exp"] - claims["iat"] <= 600


async def test_exchange_sends_a_fresh_jwt_and_caches_the_token(
    auth: AppAuth, router: respx.MockRouter, clock: FakeTime
) -> None:
    exchange = router.post(TOKEN_URL).mock(
        side_effect=[token_answer("ghs_first"), token_answer("ghs_second")]
    )

    assert await auth.authorization(INSTALLATION) == "Bearer ghs_first"
    assert await auth.authorization(INSTALLATION) == "Bearer ghs_first"
    assert exchange.call_count == 1
    request = exchange.calls[0].request
    assert claims_of(request.headers["authorization"])["iss"] == str(APP_ID)
    assert request.headers["accept"] == "application/vnd.github+json"
    assert request.headers["x-github-api-version"] == "2022-11-28"

    clock.now += 10
    await auth.invalidate(INSTALLATION)
    assert await auth.authorization(INSTALLATION) == "Bearer ghs_second"
    assert exchange.call_count == 2
    second = claims_of(exchange.calls[1].request.headers["authorization"])
    assert second["iat"] == int(NOW) + 10 - 60  # a new JWT for each exchange


@pytest.mark.parametrize(
    ("seconds_before_expiry", "exchanges"),
    [(301, 1), (300, 2), (10, 2)],
    ids=["5 min + 1 s left: cached", "5 min left: renewed", "10 s left: renewed"],
)
async def test_token_is_renewed_five_minutes_before_expiry(
    auth: AppAuth,
    router: respx.MockRouter,
    clock: FakeTime,
    seconds_before_expiry: int,
    exchanges: int,
) -> None:
    expires_at = "2026-01-15T11:13:20Z"  # NOW + 3600
    exchange = router.post(TOKEN_URL).mock(return_value=token_answer(expires_at=expires_at))
    await auth.authorization(INSTALLATION)
    clock.now = NOW + 3600 - seconds_before_expiry
    await auth.authorization(INSTALLATION)
    assert exchange.call_count == exchanges


async def test_concurrent_callers_share_one_exchange(
    auth: AppAuth, router: respx.MockRouter
) -> None:
    async def slow_answer(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.02)
        return token_answer()

    exchange = router.post(TOKEN_URL).mock(side_effect=slow_answer)
    headers = await asyncio.gather(*(auth.authorization(INSTALLATION) for _ in range(10)))
    assert set(headers) == {f"Bearer {TOKEN}"}
    assert exchange.call_count == 1


async def test_tokens_are_cached_per_installation(auth: AppAuth, router: respx.MockRouter) -> None:
    router.post(TOKEN_URL).mock(return_value=token_answer("ghs_a"))
    router.post(f"{API}/app/installations/7/access_tokens").mock(return_value=token_answer("ghs_b"))
    assert await auth.authorization(INSTALLATION) == "Bearer ghs_a"
    assert await auth.authorization(7) == "Bearer ghs_b"


async def test_401_on_the_exchange_says_the_app_credentials_are_wrong(
    auth: AppAuth, router: respx.MockRouter
) -> None:
    router.post(TOKEN_URL).respond(
        401, json={"message": "A JSON web token could not be decoded", "documentation_url": "x"}
    )
    with pytest.raises(TokenRejected) as caught:
        await auth.authorization(INSTALLATION)
    assert "App id or private key is wrong" in caught.value.message
    assert caught.value.status == 401
    assert caught.value.__cause__ is None


async def test_unknown_installation_is_permanent(auth: AppAuth, router: respx.MockRouter) -> None:
    router.post(TOKEN_URL).respond(404, json={"message": "Not Found"})
    with pytest.raises(PermanentError, match=f"installation {INSTALLATION} does not exist"):
        await auth.authorization(INSTALLATION)


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(201, json={"token": TOKEN}),
        httpx.Response(201, json={"expires_at": "2026-01-15T11:13:20Z"}),
        httpx.Response(201, json={"token": TOKEN, "expires_at": "soon"}),
        httpx.Response(201, json=["not", "an", "object"]),
    ],
    ids=["no expiry", "no token", "unreadable expiry", "not an object"],
)
async def test_incomplete_token_answer_is_transient(
    auth: AppAuth, router: respx.MockRouter, answer: httpx.Response
) -> None:
    router.post(TOKEN_URL).mock(return_value=answer)
    with pytest.raises(TransientError) as caught:
        await auth.authorization(INSTALLATION)
    assert TOKEN not in str(caught.value)


async def test_unreachable_github_is_transient(auth: AppAuth, router: respx.MockRouter) -> None:
    router.post(TOKEN_URL).mock(side_effect=httpx.ConnectTimeout("slow"))
    with pytest.raises(TransientError, match="did not answer in time"):
        await auth.authorization(INSTALLATION)


async def test_an_app_needs_an_installation(auth: AppAuth) -> None:
    with pytest.raises(PermanentError, match="through an installation"):
        await auth.authorization(None)
    await auth.invalidate(None)  # nothing to drop, no error


async def test_installation_lookup_by_repository_is_cached(
    auth: AppAuth, router: respx.MockRouter
) -> None:
    lookup = router.get(LOOKUP_URL).respond(200, json={"id": INSTALLATION})
    assert await auth.installation_for(REPO) == INSTALLATION
    assert await auth.installation_for(REPO.upper()) == INSTALLATION
    assert lookup.call_count == 1
    assert claims_of(lookup.calls[0].request.headers["authorization"])["iss"] == str(APP_ID)


async def test_app_not_installed_is_permanent_not_not_found(
    auth: AppAuth, router: respx.MockRouter
) -> None:
    router.get(LOOKUP_URL).respond(404, json={"message": "Not Found"})
    with pytest.raises(PermanentError) as caught:
        await auth.installation_for(REPO)
    assert caught.value.message == f"the GitHub App is not installed on {REPO}"
    assert not isinstance(caught.value, NotFound)


async def test_uninstalled_app_forgets_the_repository(
    auth: AppAuth, router: respx.MockRouter
) -> None:
    lookup = router.get(LOOKUP_URL).respond(200, json={"id": INSTALLATION})
    router.post(TOKEN_URL).respond(404, json={"message": "Not Found"})
    await auth.installation_for(REPO)
    with pytest.raises(PermanentError):
        await auth.authorization(INSTALLATION)
    await auth.installation_for(REPO)
    assert lookup.call_count == 2


@pytest.mark.parametrize("repository", ["acme", "acme/app/x", "../x", ""])
async def test_installation_lookup_refuses_non_repositories(auth: AppAuth, repository: str) -> None:
    with pytest.raises(ValueError):
        await auth.installation_for(repository)


async def test_check_names_the_app(auth: AppAuth, router: respx.MockRouter) -> None:
    answer = {"id": APP_ID, "slug": "my-app", "name": "My App"}
    app = router.get(f"{API}/app").respond(200, json=answer)
    assert await auth.check() == f"GitHub App my-app (My App) accepted (app id {APP_ID})"
    assert claims_of(app.calls[0].request.headers["authorization"])["iss"] == str(APP_ID)


async def test_client_check_uses_the_app_check(
    auth: AppAuth, http: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    router.get(f"{API}/app").respond(200, json={"id": APP_ID, "slug": "my-app", "name": "my-app"})
    client = GitHubClient(API, auth, http=http)
    assert await client.check() == f"GitHub at {API}: GitHub App my-app accepted (app id {APP_ID})"


def test_secrets_never_show(auth: AppAuth) -> None:
    text = f"{auth!r} {auth!s}"
    assert "PRIVATE" not in text and KEY_PEM[40:80] not in text
    assert text.startswith("AppAuth(api_url='https://api.github.com', app_id=12345)")


def test_key_with_escaped_newlines_is_accepted(http: httpx.AsyncClient) -> None:
    AppAuth(API, APP_ID, KEY_PEM.strip().replace("\n", "\\n"), http=http)


@pytest.mark.parametrize(
    "pem",
    [
        "",
        "not a key",
        PUBLIC_PEM,
        private_pem(ec.generate_private_key(ec.SECP256R1())),
    ],
    ids=["empty", "garbage", "public key", "EC key"],
)
def test_unusable_private_key_is_refused_without_echoing_it(
    http: httpx.AsyncClient, pem: str
) -> None:
    with pytest.raises(ValueError) as caught:
        AppAuth(API, APP_ID, pem, http=http)
    assert str(caught.value) in (
        "the GitHub App private key is not a PEM private key without a passphrase",
        "the GitHub App private key must be an RSA key",
    )
    assert caught.value.__cause__ is None


@pytest.mark.parametrize("app_id", [0, -1, True])
def test_app_id_must_be_a_positive_integer(http: httpx.AsyncClient, app_id: int) -> None:
    with pytest.raises(ValueError):
        AppAuth(API, app_id, KEY_PEM, http=http)


# ---------------------------------------------------------------------------
# End to end against FakeGitHub on loopback


@pytest.fixture
def fake(clock: FakeTime) -> FakeGitHub:
    fake = FakeGitHub(tokens={}, issues=[(REPO, n) for n in (1, 2, 3)], clock=clock.clock)
    fake.configure_app(APP_ID, PUBLIC_PEM, installations={INSTALLATION: [REPO]})
    fake.add_issue("other/repo", 1)
    return fake


@pytest.fixture
def base_url(fake: FakeGitHub) -> Iterator[str]:
    with serve_in_thread(fake) as url:
        yield url


@pytest.fixture
def app_client(base_url: str, http: httpx.AsyncClient, clock: FakeTime) -> GitHubClient:
    auth = AppAuth(base_url, APP_ID, KEY_PEM, http=http, clock=clock.clock)
    return GitHubClient(base_url, auth, http=http, clock=clock.clock)


async def upsert(client: GitHubClient, issue: IssueEvent, text: str) -> str:
    return await client.upsert_comment(issue, marker=MARKER, body=body(text), comment_id=None)


async def test_comment_is_written_by_the_app_bot(
    app_client: GitHubClient, fake: FakeGitHub
) -> None:
    await upsert(app_client, event(1), "hello")
    [comment] = fake.comments(REPO, 1)
    assert comment["user"]["login"] == "my-app[bot]"
    assert comment["user"]["type"] == "Bot"
    assert fake.token_exchanges == [INSTALLATION]


async def test_two_comments_one_exchange(app_client: GitHubClient, fake: FakeGitHub) -> None:
    await upsert(app_client, event(1), "one")
    await upsert(app_client, event(2), "two")
    assert fake.token_exchanges == [INSTALLATION]


async def test_token_renewed_shortly_before_expiry(
    app_client: GitHubClient, fake: FakeGitHub, clock: FakeTime
) -> None:
    await upsert(app_client, event(1), "one")
    clock.now += 3600 - 301
    await upsert(app_client, event(2), "two")
    assert fake.token_exchanges == [INSTALLATION]
    clock.now += 2  # now under five minutes left
    await upsert(app_client, event(3), "three")
    assert fake.token_exchanges == [INSTALLATION, INSTALLATION]


async def test_fake_refuses_an_expired_installation_token(
    app_client: GitHubClient,
    fake: FakeGitHub,
    clock: FakeTime,
    base_url: str,
    http: httpx.AsyncClient,
) -> None:
    await upsert(app_client, event(1), "one")
    [token] = fake.installation_tokens(INSTALLATION)
    url = f"{base_url}/repos/{REPO}/issues/1/comments"
    headers = {"Authorization": f"Bearer {token}"}
    assert (await http.get(url, headers=headers)).status_code == 200
    clock.now += 3600
    expired = await http.get(url, headers=headers)
    assert expired.status_code == 401
    assert expired.json()["message"] == "Bad credentials"


async def test_revoked_token_is_refreshed_and_the_comment_lands(
    app_client: GitHubClient, fake: FakeGitHub
) -> None:
    await upsert(app_client, event(1), "one")
    fake.revoke_installation_tokens(INSTALLATION)
    await upsert(app_client, event(2), "two")
    assert [c["body"] for c in fake.comments(REPO, 2)] == [body("two")]
    assert fake.token_exchanges == [INSTALLATION, INSTALLATION]


async def test_repository_hook_finds_the_installation_by_repository(
    app_client: GitHubClient, fake: FakeGitHub
) -> None:
    await upsert(app_client, event(1, installation_id=None), "one")
    await upsert(app_client, event(2, installation_id=None), "two")
    assert fake.installation_lookups == [REPO]
    assert fake.token_exchanges == [INSTALLATION]
    assert fake.comments(REPO, 2)[0]["user"]["login"] == "my-app[bot]"


async def test_app_not_installed_on_the_repository(
    app_client: GitHubClient, fake: FakeGitHub
) -> None:
    other = msgspec.structs.replace(event(1, installation_id=None), scope="other/repo")
    with pytest.raises(PermanentError) as caught:
        await upsert(app_client, other, "x")
    assert caught.value.message == "the GitHub App is not installed on other/repo"
    assert fake.comments("other/repo", 1) == []


async def test_installation_token_only_reaches_its_repositories(
    app_client: GitHubClient, fake: FakeGitHub
) -> None:
    other = msgspec.structs.replace(event(1), scope="other/repo")
    with pytest.raises(NotFound):
        await upsert(app_client, other, "x")


async def test_wrong_private_key_is_token_rejected(
    base_url: str, http: httpx.AsyncClient, fake: FakeGitHub, clock: FakeTime
) -> None:
    auth = AppAuth(base_url, APP_ID, private_pem(OTHER_KEY), http=http, clock=clock.clock)
    client = GitHubClient(base_url, auth, http=http, clock=clock.clock)
    with pytest.raises(TokenRejected, match="App id or private key is wrong"):
        await upsert(client, event(1), "x")
    assert fake.token_exchanges == []
    assert fake.comments(REPO, 1) == []


async def test_wrong_app_id_is_token_rejected(
    base_url: str, http: httpx.AsyncClient, clock: FakeTime
) -> None:
    auth = AppAuth(base_url, APP_ID + 1, KEY_PEM, http=http, clock=clock.clock)
    with pytest.raises(TokenRejected):
        await auth.check()


async def test_client_check_against_the_fake(app_client: GitHubClient, base_url: str) -> None:
    assert await app_client.check() == (
        f"GitHub at {base_url}: GitHub App my-app (My App) accepted (app id {APP_ID})"
    )
    assert await app_client.check(INSTALLATION) == (
        f"GitHub at {base_url}: credential accepted, 5000/5000 requests left"
    )


def signed(claims: dict[str, Any], key: rsa.RSAPrivateKey = KEY) -> str:
    return jwt.encode(claims, key, algorithm="RS256")


NOW_INT = int(NOW)


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (
            signed({"iat": NOW_INT - 60, "exp": NOW_INT + 700, "iss": str(APP_ID)}),
            JWT_EXP_TOO_FAR_MESSAGE,
        ),
        (
            signed({"iat": NOW_INT - 700, "exp": NOW_INT - 100, "iss": str(APP_ID)}),
            JWT_EXPIRED_MESSAGE,
        ),
        (signed({"iat": NOW_INT + 100, "exp": NOW_INT + 500, "iss": str(APP_ID)}), JWT_IAT_MESSAGE),
        (signed({"iat": NOW_INT - 60, "exp": NOW_INT + 540, "iss": "999"}), JWT_DECODE_MESSAGE),
        (
            signed({"iat": NOW_INT - 60, "exp": NOW_INT + 540, "iss": str(APP_ID)}, OTHER_KEY),
            JWT_DECODE_MESSAGE,
        ),
        (signed({"iat": NOW_INT - 60, "iss": str(APP_ID)}), JWT_DECODE_MESSAGE),
        ("not-a-jwt", JWT_DECODE_MESSAGE),
        (TOKEN, JWT_DECODE_MESSAGE),
    ],
    ids=[
        "exp too far",
        "expired",
        "iat in the future",
        "unknown app",
        "wrong key",
        "no exp",
        "garbage",
        "installation token",
    ],
)
async def test_fake_validates_the_app_jwt(
    base_url: str, http: httpx.AsyncClient, fake: FakeGitHub, token: str, message: str
) -> None:
    answer = await http.post(
        f"{base_url}/app/installations/{INSTALLATION}/access_tokens",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert answer.status_code == 401
    assert answer.json()["message"] == message
    assert fake.token_exchanges == []


# ---------------------------------------------------------------------------
# Labelling 500 issues at once


async def test_500_comments_never_exceed_80_mutations_per_minute(
    http: httpx.AsyncClient, clock: FakeTime
) -> None:
    issues = 500
    fake = FakeGitHub(
        tokens={}, issues=[(REPO, n) for n in range(1, issues + 1)], clock=clock.clock
    )
    fake.configure_app(APP_ID, PUBLIC_PEM, installations={INSTALLATION: [REPO]})
    limiter = ContentRateLimiter(clock=clock.clock, sleep=clock.sleep)
    started = time.monotonic()
    with serve_in_thread(fake) as url:
        auth = AppAuth(url, APP_ID, KEY_PEM, http=http, clock=clock.clock)
        client = GitHubClient(url, auth, http=http, clock=clock.clock, limiter=limiter)
        await asyncio.gather(*(upsert(client, event(n), f"task {n}") for n in range(1, issues + 1)))

    posts = [
        t
        for t, method, path in fake.timed_requests
        if method == "POST" and path.endswith("/comments")
    ]
    assert len(posts) == issues
    assert all(len(fake.comments(REPO, n)) == 1 for n in range(1, issues + 1))
    busiest = max(sum(1 for t in posts if start <= t < start + 60) for start in posts)
    assert busiest == 80
    assert max(posts) - NOW == 360  # 80 at 0 s, 60 s, …, 360 s: no needless waiting
    assert fake.token_exchanges == [INSTALLATION]
    assert time.monotonic() - started < 60  # simulated time: no real minute-long sleeps
