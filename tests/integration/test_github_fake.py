"""GitHubClient against FakeGitHub served on a real loopback port."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import msgspec
import pytest

from service.core.events import IssueEvent, Person
from service.errors import NotFound, PermanentError, RateLimited, TokenRejected, TransientError
from service.trackers.github.api import GitHubClient, TokenAuth
from tests.fakes.github import CONTENT_LIMITS, DEFAULT_LOGIN, DEFAULT_TOKEN, FakeGitHub
from tests.fakes.server import serve_in_thread

NOW = 1_768_472_000.0
REPO = "Codertocat/Hello-World"
MARKER = "<!-- coder-bridge:delegation=abc123 -->"
COMMENTS_PATH = f"/repos/{REPO}/issues/1/comments"

EVENT = IssueEvent(
    tracker="github",
    delivery_id="72d3162e-cc78-11e3-81ab-4c9367dc0958",
    issue_key="github:186853002:1",
    issue_id="444500041",
    number="1",
    title="Spelling error in the README file",
    body="",
    url="https://github.com/Codertocat/Hello-World/issues/1",
    scope=REPO,
    author=Person("21031067", "Codertocat"),
    labeler=Person("21031067", "Codertocat"),
)


def body(text: str) -> str:
    return f"{MARKER}\n{text}"


@pytest.fixture
def fake() -> FakeGitHub:
    return FakeGitHub(clock=lambda: NOW)


@pytest.fixture
def base_url(fake: FakeGitHub) -> Iterator[str]:
    with serve_in_thread(fake) as url:
        yield url


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as client:
        yield client


@pytest.fixture
def client(base_url: str, http: httpx.AsyncClient) -> GitHubClient:
    return GitHubClient(base_url, TokenAuth(DEFAULT_TOKEN), http=http, clock=lambda: NOW)


async def upsert(client: GitHubClient, text: str, comment_id: str | None = None) -> str:
    return await client.upsert_comment(EVENT, marker=MARKER, body=body(text), comment_id=comment_id)


# ---------------------------------------------------------------------------
# Upsert behaviour


async def test_upserting_twice_edits_the_one_comment(
    client: GitHubClient, fake: FakeGitHub
) -> None:
    first = await upsert(client, "creating task")
    second = await upsert(client, "task ready")

    assert first == second
    comments = fake.comments(REPO, 1)
    assert [c["body"] for c in comments] == [body("task ready")]
    assert comments[0]["id"] > 2**31
    assert comments[0]["user"]["login"] == DEFAULT_LOGIN
    assert ("PATCH", f"/repos/{REPO}/issues/comments/{first}") in fake.requests


async def test_upsert_with_the_known_id_patches_directly(
    client: GitHubClient, fake: FakeGitHub
) -> None:
    comment_id = await upsert(client, "one")
    before = len(fake.requests)

    assert await upsert(client, "two", comment_id) == comment_id
    assert fake.requests[before:] == [("PATCH", f"/repos/{REPO}/issues/comments/{comment_id}")]
    assert [c["body"] for c in fake.comments(REPO, 1)] == [body("two")]


async def test_deleted_known_comment_is_recreated_once(
    client: GitHubClient, fake: FakeGitHub
) -> None:
    old = await upsert(client, "one")
    fake.delete_comment(int(old))

    new = await upsert(client, "two", old)
    assert new != old
    assert [c["body"] for c in fake.comments(REPO, 1)] == [body("two")]


async def test_marker_beyond_the_first_100_comments_is_found(
    client: GitHubClient, fake: FakeGitHub
) -> None:
    for i in range(130):
        fake.add_comment(REPO, 1, f"chatter {i}")
    ours = fake.add_comment(REPO, 1, body("old"), login=DEFAULT_LOGIN)
    for i in range(20):
        fake.add_comment(REPO, 1, f"more chatter {i}")

    assert await upsert(client, "new") == str(ours)
    assert fake.requests.count(("GET", COMMENTS_PATH)) == 2
    assert ("POST", COMMENTS_PATH) not in fake.requests
    edited = [c for c in fake.comments(REPO, 1) if MARKER in c["body"]]
    assert [(c["id"], c["body"]) for c in edited] == [(ours, body("new"))]


async def test_search_over_every_page_then_create(client: GitHubClient, fake: FakeGitHub) -> None:
    for i in range(250):
        fake.add_comment(REPO, 1, f"chatter {i}")

    await upsert(client, "new")
    assert fake.requests.count(("GET", COMMENTS_PATH)) == 3
    assert len(fake.comments(REPO, 1)) == 251


async def test_502_after_acting_then_retry_leaves_one_comment(
    client: GitHubClient, fake: FakeGitHub
) -> None:
    fake.fail_next("create_comment", 502, after_acting=True)
    with pytest.raises(TransientError) as caught:
        await upsert(client, "creating task")
    assert caught.value.status == 502
    assert len(fake.comments(REPO, 1)) == 1  # GitHub did the work before the 502

    await upsert(client, "creating task")
    await upsert(client, "task ready")
    assert [c["body"] for c in fake.comments(REPO, 1)] == [body("task ready")]


async def test_502_before_acting_then_retry_creates_one_comment(
    client: GitHubClient, fake: FakeGitHub
) -> None:
    fake.fail_next("create_comment", 502)
    with pytest.raises(TransientError):
        await upsert(client, "creating task")
    assert fake.comments(REPO, 1) == []

    await upsert(client, "creating task")
    assert len(fake.comments(REPO, 1)) == 1


# ---------------------------------------------------------------------------
# Rate limits, errors, auth


async def test_primary_rate_limit_waits_until_reset(client: GitHubClient, fake: FakeGitHub) -> None:
    fake.fail_primary_rate_limit("list_comments", reset=NOW + 1234)
    with pytest.raises(RateLimited) as caught:
        await upsert(client, "x")
    assert caught.value.retry_after == 1234
    assert caught.value.status == 403


async def test_secondary_rate_limit_waits_a_minute(client: GitHubClient, fake: FakeGitHub) -> None:
    fake.fail_secondary_rate_limit("create_comment")
    with pytest.raises(RateLimited) as caught:
        await upsert(client, "x")
    assert caught.value.retry_after == 60
    assert fake.comments(REPO, 1) == []


async def test_429_with_retry_after_waits_that_long(client: GitHubClient, fake: FakeGitHub) -> None:
    fake.fail_secondary_rate_limit("list_comments", status=429, retry_after=17)
    with pytest.raises(RateLimited) as caught:
        await upsert(client, "x")
    assert caught.value.retry_after == 17
    assert caught.value.status == 429


async def test_spent_hourly_budget_is_a_primary_rate_limit() -> None:
    fake = FakeGitHub(rate_limit=2, clock=lambda: NOW)
    with serve_in_thread(fake) as url:
        async with httpx.AsyncClient(timeout=5) as http:
            client = GitHubClient(url, TokenAuth(DEFAULT_TOKEN), http=http, clock=lambda: NOW)
            await upsert(client, "one")  # GET + POST: the budget of 2 is spent
            with pytest.raises(RateLimited) as caught:
                await upsert(client, "two")
            assert caught.value.retry_after == 3600
            assert (
                await client.check() == f"GitHub at {url}: credential accepted, 0/2 requests left"
            )


async def test_bad_token_is_rejected_after_one_retry(base_url: str, fake: FakeGitHub) -> None:
    async with httpx.AsyncClient(timeout=5) as http:
        client = GitHubClient(base_url, TokenAuth("ghp_wrong"), http=http)
        with pytest.raises(TokenRejected):
            await upsert(client, "x")
    assert fake.requests == [("GET", COMMENTS_PATH), ("GET", COMMENTS_PATH)]


async def test_unknown_repository_is_not_found(client: GitHubClient) -> None:
    other = msgspec.structs.replace(EVENT, scope="acme/missing")
    with pytest.raises(NotFound):
        await client.upsert_comment(other, marker=MARKER, body=body("x"), comment_id=None)


async def test_repository_names_are_case_insensitive(
    client: GitHubClient, fake: FakeGitHub
) -> None:
    lower = msgspec.structs.replace(EVENT, scope=REPO.lower())
    await client.upsert_comment(lower, marker=MARKER, body=body("x"), comment_id=None)
    assert len(fake.comments(REPO, 1)) == 1


async def test_slow_github_is_a_transient_timeout(base_url: str, fake: FakeGitHub) -> None:
    fake.delay_next("list_comments", 0.3)
    async with httpx.AsyncClient(timeout=0.05) as http:
        client = GitHubClient(base_url, TokenAuth(DEFAULT_TOKEN), http=http)
        with pytest.raises(TransientError, match="did not answer in time"):
            await upsert(client, "x")


async def test_permission_403_is_permanent(client: GitHubClient, fake: FakeGitHub) -> None:
    fake.fail_next("create_comment", 403)
    with pytest.raises(PermanentError) as caught:
        await upsert(client, "x")
    assert not isinstance(caught.value, TransientError)
    assert "Resource not accessible" in caught.value.message


async def test_check_against_the_fake(client: GitHubClient, base_url: str) -> None:
    assert await client.check() == (
        f"GitHub at {base_url}: credential accepted, 5000/5000 requests left"
    )


# ---------------------------------------------------------------------------
# The fake itself behaves like GitHub


async def test_fake_paginates_with_a_real_link_header(
    base_url: str, fake: FakeGitHub, http: httpx.AsyncClient
) -> None:
    for i in range(65):
        fake.add_comment(REPO, 1, f"c{i}")
    auth = {"Authorization": f"token {DEFAULT_TOKEN}"}

    first = await http.get(f"{base_url}{COMMENTS_PATH}", headers=auth)
    assert len(first.json()) == 30
    assert first.links["next"]["url"] == f"{base_url}{COMMENTS_PATH}?per_page=30&page=2"
    assert first.links["last"]["url"] == f"{base_url}{COMMENTS_PATH}?per_page=30&page=3"
    last = await http.get(first.links["last"]["url"], headers=auth)
    assert [c["body"] for c in last.json()] == ["c60", "c61", "c62", "c63", "c64"]
    assert "next" not in last.links and "prev" in last.links
    capped = await http.get(f"{base_url}{COMMENTS_PATH}?per_page=500", headers=auth)
    assert len(capped.json()) == 65 and "Link" not in capped.headers


async def test_fake_answers_like_github_on_errors(
    base_url: str, fake: FakeGitHub, http: httpx.AsyncClient
) -> None:
    auth = {"Authorization": f"Bearer {DEFAULT_TOKEN}"}
    bad = await http.get(f"{base_url}{COMMENTS_PATH}", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and bad.json()["message"] == "Bad credentials"
    assert "documentation_url" in bad.json()
    anonymous = await http.get(f"{base_url}{COMMENTS_PATH}")
    assert anonymous.json()["message"] == "Requires authentication"
    missing = await http.get(f"{base_url}/repos/{REPO}/issues/99/comments", headers=auth)
    assert missing.status_code == 404 and missing.json()["message"] == "Not Found"
    too_long = await http.post(
        f"{base_url}{COMMENTS_PATH}", headers=auth, json={"body": "x" * 65_537}
    )
    assert too_long.status_code == 422
    assert too_long.json()["errors"][0]["message"] == (
        "Body is too long (maximum is 65536 characters)"
    )
    unknown_route = await http.get(f"{base_url}/nope", headers=auth)
    assert unknown_route.status_code == 404
    for response in (bad, anonymous, missing, too_long):
        assert {"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"} <= set(
            response.headers
        )
    assert all(DEFAULT_TOKEN not in path for _, path in fake.requests)


async def test_fake_create_answers_201_with_location(
    base_url: str, http: httpx.AsyncClient
) -> None:
    response = await http.post(
        f"{base_url}{COMMENTS_PATH}",
        headers={"Authorization": f"Bearer {DEFAULT_TOKEN}"},
        json={"body": "hi"},
    )
    assert response.status_code == 201
    assert response.headers["location"] == response.json()["url"]
    assert response.headers["x-ratelimit-remaining"] == "4999"


def test_fake_refuses_injection_for_unknown_routes(fake: FakeGitHub) -> None:
    with pytest.raises(ValueError, match="unknown route"):
        fake.fail_next("create_commment", 500)


async def test_fake_enforces_the_content_creation_limit_per_token(
    http: httpx.AsyncClient,
) -> None:
    """80 mutating requests a minute and 500 an hour pass; the next one gets GitHub's
    secondary-limit 403 (requests still left), reads pass, and the window slides."""
    now = [NOW]
    fake = FakeGitHub(clock=lambda: now[0])
    fake.content_limits = CONTENT_LIMITS
    auth = {"Authorization": f"Bearer {DEFAULT_TOKEN}"}
    with serve_in_thread(fake) as url:
        async def post() -> httpx.Response:
            return await http.post(f"{url}{COMMENTS_PATH}", headers=auth, json={"body": "c"})

        for _ in range(80):
            assert (await post()).status_code == 201
        refused = await post()
        assert refused.status_code == 403
        assert refused.json()["message"].startswith("You have exceeded a secondary rate limit")
        assert int(refused.headers["x-ratelimit-remaining"]) > 0
        assert (await http.get(f"{url}{COMMENTS_PATH}", headers=auth)).status_code == 200
        for minute in range(1, 7):  # 80 more each minute, until 500 in the hour
            now[0] = NOW + 60 * minute
            for _ in range(min(80, 500 - 80 * minute)):
                assert (await post()).status_code == 201
        assert (await post()).status_code == 403  # 500 within the hour
        now[0] = NOW + 3600  # the first minute's 80 are an hour old
        assert (await post()).status_code == 201
    assert fake.status_count(403, 429) == 2
    assert len(fake.comments(REPO, 1)) == 501
