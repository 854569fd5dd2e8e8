"""GitHubClient and decipher_github_response against respx-mocked GitHub responses."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import msgspec
import pytest
import respx

from service.core.events import IssueEvent, Person
from service.errors import (
    Conflict,
    NotFound,
    PermanentError,
    RateLimited,
    TokenRejected,
    TransientError,
)
from service.trackers.base import IssueTracker
from service.trackers.github.api import (
    GitHubClient,
    TokenAuth,
    decipher_github_response,
)

API = "https://api.github.com"
TOKEN = "ghp_secret_never_shown_0123456789"
NOW = 1_768_472_000.0
REPO = f"{API}/repos/Codertocat/Hello-World"
COMMENTS = f"{REPO}/issues/1/comments"
MARKER = "<!-- coder-bridge:delegation=abc123 -->"
BODY = f"{MARKER}\nTask created: https://coder.example.com/tasks/ada/1"

EVENT = IssueEvent(
    tracker="github",
    delivery_id="72d3162e-cc78-11e3-81ab-4c9367dc0958",
    issue_key="github:186853002:1",
    issue_id="444500041",
    number="1",
    title="Spelling error in the README file",
    body="",
    url="https://github.com/Codertocat/Hello-World/issues/1",
    scope="Codertocat/Hello-World",
    author=Person("21031067", "Codertocat"),
    labeler=Person("21031067", "Codertocat"),
)


class CountingAuth:
    """A GitHubAuth that hands out a new token after each invalidate."""

    def __init__(self) -> None:
        self.generation = 0
        self.invalidated: list[int | None] = []

    async def authorization(self, installation_id: int | None) -> str:
        return f"Bearer token-{self.generation}"

    async def invalidate(self, installation_id: int | None) -> None:
        self.invalidated.append(installation_id)
        self.generation += 1


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


BRIDGE_USER_ID = 7  # the user the token belongs to (GET /user)


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as mock:
        mock.get(f"{API}/user").respond(200, json={"login": "bridge-bot", "id": BRIDGE_USER_ID})
        yield mock


@pytest.fixture
def client(http: httpx.AsyncClient) -> GitHubClient:
    return GitHubClient(API, TokenAuth(TOKEN), http=http, clock=lambda: NOW)


def comment(comment_id: int, body: str, *, user_id: int = BRIDGE_USER_ID) -> dict[str, Any]:
    """A comment as GitHub lists it, by the bridge's user unless ``user_id`` says else."""
    return {"id": comment_id, "body": body, "user": {"login": f"user{user_id}", "id": user_id},
            "performed_via_github_app": None}


def error(status: int, message: str, **headers: str) -> httpx.Response:
    body = {"message": message, "documentation_url": "https://docs.github.com/rest"}
    return httpx.Response(status, json=body, headers=headers)


def sent_body(route: respx.Route, index: int = -1) -> Any:
    return json.loads(route.calls[index].request.content)


# ---------------------------------------------------------------------------
# Upsert paths


def test_client_satisfies_the_issue_commenter_protocol(client: GitHubClient) -> None:
    commenter: IssueTracker = client
    assert commenter is client


async def test_creates_a_comment_when_none_carries_the_marker(
    client: GitHubClient, router: respx.MockRouter
) -> None:
    listing = router.get(COMMENTS).respond(200, json=[comment(5, "hello", user_id=1)])
    create = router.post(COMMENTS).respond(201, json=comment(3_000_000_000, BODY))

    assert await client.upsert_comment(EVENT, marker=MARKER, body=BODY, comment_id=None) == (
        "3000000000"
    )
    assert listing.calls[0].request.url.params["per_page"] == "100"
    assert sent_body(create) == {"body": BODY}
    request = create.calls[0].request
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["accept"] == "application/vnd.github+json"
    assert request.headers["x-github-api-version"] == "2022-11-28"
    assert request.headers["user-agent"] == "coder-bridge"


async def test_finds_the_marker_on_page_two_via_link_and_edits_it(
    client: GitHubClient, router: respx.MockRouter
) -> None:
    page2 = f"{COMMENTS}?per_page=100&page=2"
    link = f'<{page2}>; rel="next", <{page2}>; rel="last"'
    router.get(COMMENTS, params={"page": "2"}).respond(
        200, json=[comment(200, "other"), comment(201, f"old {MARKER}")]
    )
    router.get(COMMENTS).respond(
        200, json=[comment(i, "filler") for i in range(100)], headers={"Link": link}
    )
    patch = router.patch(f"{REPO}/issues/comments/201").respond(200, json=comment(201, BODY))
    create = router.post(COMMENTS)

    assert await client.upsert_comment(EVENT, marker=MARKER, body=BODY, comment_id=None) == "201"
    assert sent_body(patch) == {"body": BODY}
    assert not create.called


async def test_found_comment_with_the_same_body_is_left_alone(
    client: GitHubClient, router: respx.MockRouter
) -> None:
    router.get(COMMENTS).respond(200, json=[comment(9, BODY)])
    patch = router.patch(f"{REPO}/issues/comments/9")

    assert await client.upsert_comment(EVENT, marker=MARKER, body=BODY, comment_id=None) == "9"
    assert not patch.called


async def test_known_comment_id_is_patched_without_searching(
    client: GitHubClient, router: respx.MockRouter
) -> None:
    patch = router.patch(f"{REPO}/issues/comments/42").respond(200, json=comment(42, BODY))
    listing = router.get(COMMENTS)

    assert await client.upsert_comment(EVENT, marker=MARKER, body=BODY, comment_id="42") == "42"
    assert patch.call_count == 1
    assert not listing.called


async def test_a_marker_in_someone_elses_comment_is_ignored(
    client: GitHubClient, router: respx.MockRouter
) -> None:
    """An outsider who pastes the marker into their own comment does not get the bridge
    to edit it (they could later rewrite it into a phishing link under its name)."""
    router.get(COMMENTS).respond(200, json=[comment(5, f"pre-posted {MARKER}", user_id=666)])
    edit = router.patch(f"{REPO}/issues/comments/5")
    create = router.post(COMMENTS).respond(201, json=comment(6, BODY))

    assert await client.upsert_comment(EVENT, marker=MARKER, body=BODY, comment_id=None) == "6"
    assert not edit.called and create.called


async def test_a_comment_made_through_the_app_is_the_bridges_own(
    http: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    class App:
        app_id = 42

        async def authorization(self, installation_id: int | None) -> str:
            return "Bearer ghs_x"

        async def invalidate(self, installation_id: int | None) -> None:
            return None

        async def installation_for(self, repository: str) -> int:
            return 1

        async def installations(self) -> list[int]:
            return [1]

        async def hook_deliveries(self, *, since: float, max_pages: int) -> list[Any]:
            return []

        async def redeliver(self, delivery_id: int) -> None:
            return None

        async def check(self) -> str:
            return "ok"

    client = GitHubClient(API, App(), http=http, clock=lambda: NOW)  # type: ignore[arg-type]
    by_app = {**comment(8, f"old {MARKER}", user_id=41), "performed_via_github_app": {"id": 42}}
    other_app = {**comment(9, f"copy {MARKER}", user_id=41),
                 "performed_via_github_app": {"id": 5}}
    router.get(COMMENTS).respond(200, json=[other_app, by_app])
    edit = router.patch(f"{REPO}/issues/comments/8").respond(200, json=by_app)

    assert await client.upsert_comment(EVENT, marker=MARKER, body=BODY, comment_id=None) == "8"
    assert edit.called


@pytest.mark.parametrize("status", [403, 422])
async def test_a_refused_edit_posts_a_new_comment(
    client: GitHubClient, router: respx.MockRouter, status: int
) -> None:
    router.patch(f"{REPO}/issues/comments/42").mock(return_value=error(status, "refused"))
    router.get(COMMENTS).respond(200, json=[comment(42, f"old {MARKER}")])
    create = router.post(COMMENTS).respond(201, json=comment(43, BODY))

    assert await client.upsert_comment(EVENT, marker=MARKER, body=BODY, comment_id="42") == "43"
    assert create.called


async def test_reactions_are_added_once_and_a_gone_comment_is_fine(
    client: GitHubClient, router: respx.MockRouter
) -> None:
    url = f"{REPO}/issues/comments/55/reactions"
    react = router.post(url).mock(side_effect=[httpx.Response(201, json={"id": 1}),
                                               httpx.Response(200, json={"id": 1})])
    await client.react(EVENT, "55")
    await client.react(EVENT, "55")
    assert [sent_body(react, i) for i in (0, 1)] == [{"content": "eyes"}] * 2
    router.post(f"{REPO}/issues/comments/56/reactions").mock(
        return_value=error(404, "Not Found"))
    await client.react(EVENT, "56")  # no error: nobody left to show it to


async def test_the_status_label_replaces_the_previous_one(
    client: GitHubClient, router: respx.MockRouter
) -> None:
    labels = f"{REPO}/issues/1/labels"
    add = router.post(labels).respond(200, json=[
        {"name": "bug"}, {"name": "agent: starting"}, {"name": "agent: working"}])
    remove = router.delete(f"{labels}/agent%3A%20starting").respond(200, json=[])

    await client.set_status_label(EVENT, "agent: working",
                                  replaces={"agent: starting", "agent: working", "agent: done"})
    assert sent_body(add) == {"labels": ["agent: working"]}
    assert remove.call_count == 1  # the user's "bug" label is left alone


@pytest.mark.parametrize("status", [404, 410])
async def test_known_comment_id_gone_falls_back_to_search_then_create(
    client: GitHubClient, status: int, router: respx.MockRouter
) -> None:
    router.patch(f"{REPO}/issues/comments/42").mock(return_value=error(status, "Not Found"))
    listing = router.get(COMMENTS).respond(200, json=[])
    create = router.post(COMMENTS).respond(201, json=comment(43, BODY))

    assert await client.upsert_comment(EVENT, marker=MARKER, body=BODY, comment_id="42") == "43"
    assert listing.called and create.called


async def test_pagination_to_another_host_is_refused(
    client: GitHubClient, router: respx.MockRouter
) -> None:
    router.get(COMMENTS).respond(
        200, json=[], headers={"Link": '<https://evil.example/steal?page=2>; rel="next"'}
    )
    with pytest.raises(PermanentError, match="another host"):
        await client.upsert_comment(EVENT, marker=MARKER, body=BODY, comment_id=None)


async def test_body_over_65536_characters_is_never_sent(client: GitHubClient) -> None:
    with respx.mock(assert_all_called=False) as router:
        anything = router.route()
        with pytest.raises(PermanentError, match="65536"):
            body = MARKER + "x" * 65_536
            await client.upsert_comment(EVENT, marker=MARKER, body=body, comment_id=None)
        assert not anything.called


async def test_body_must_contain_the_marker(client: GitHubClient) -> None:
    with pytest.raises(ValueError, match="marker"):
        await client.upsert_comment(EVENT, marker=MARKER, body="no marker", comment_id=None)


@pytest.mark.parametrize("scope", ["ENG", "a/b/c", "../x", "acme/..", "acme/a b", "/repo"])
async def test_scope_that_is_not_owner_slash_repo_is_permanent(
    client: GitHubClient, scope: str
) -> None:
    bad = msgspec.structs.replace(EVENT, scope=scope)
    with pytest.raises(PermanentError, match="not a GitHub issue"):
        await client.upsert_comment(bad, marker=MARKER, body=BODY, comment_id=None)


async def test_github_enterprise_base_path_is_kept(
    http: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    ghe = "https://ghe.example.com/api/v3"
    client = GitHubClient(ghe + "/", TokenAuth(TOKEN), http=http)
    router.get(f"{ghe}/repos/Codertocat/Hello-World/issues/1/comments").respond(200, json=[])
    create = router.post(f"{ghe}/repos/Codertocat/Hello-World/issues/1/comments").respond(
        201, json=comment(1, BODY)
    )
    assert await client.upsert_comment(EVENT, marker=MARKER, body=BODY, comment_id=None) == "1"
    assert create.called


# ---------------------------------------------------------------------------
# 401: invalidate and retry once


async def test_401_invalidates_the_credential_and_retries_once(
    http: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    auth = CountingAuth()
    client = GitHubClient(API, auth, http=http)
    app_event = msgspec.structs.replace(EVENT, installation_id=777)
    patch = router.patch(f"{REPO}/issues/comments/42").mock(
        side_effect=[error(401, "Bad credentials"), httpx.Response(200, json=comment(42, BODY))]
    )

    assert await client.upsert_comment(app_event, marker=MARKER, body=BODY, comment_id="42") == (
        "42"
    )
    assert auth.invalidated == [777]
    assert [c.request.headers["authorization"] for c in patch.calls] == [
        "Bearer token-0",
        "Bearer token-1",
    ]


async def test_second_401_is_token_rejected(
    http: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    auth = CountingAuth()
    client = GitHubClient(API, auth, http=http)
    listing = router.get(COMMENTS).mock(return_value=error(401, "Bad credentials"))

    with pytest.raises(TokenRejected) as caught:
        await client.upsert_comment(EVENT, marker=MARKER, body=BODY, comment_id=None)
    assert listing.call_count == 2
    assert auth.invalidated == [None]
    assert caught.value.status == 401


# ---------------------------------------------------------------------------
# The one response mapping


def decipher(response: httpx.Response) -> Any:
    response.request = httpx.Request("GET", COMMENTS)
    return decipher_github_response(response, now=NOW)


def test_2xx_is_json_or_none() -> None:
    assert decipher(httpx.Response(200, json={"id": 1})) == {"id": 1}
    assert decipher(httpx.Response(201, json=[1])) == [1]
    assert decipher(httpx.Response(204)) is None


def test_2xx_that_is_not_json_is_transient() -> None:
    with pytest.raises(TransientError, match="not JSON"):
        decipher(httpx.Response(200, text="<html>proxy</html>"))


def test_401_is_token_rejected() -> None:
    with pytest.raises(TokenRejected):
        decipher(error(401, "Bad credentials"))


@pytest.mark.parametrize("status", [403, 429])
def test_retry_after_comes_first(status: int) -> None:
    response = error(
        status,
        "You have exceeded a secondary rate limit.",
        **{"retry-after": "30", "x-ratelimit-remaining": "0", "x-ratelimit-reset": "9999999999"},
    )
    with pytest.raises(RateLimited) as caught:
        decipher(response)
    assert caught.value.retry_after == 30
    assert caught.value.status == status


@pytest.mark.parametrize("status", [403, 429])
def test_primary_limit_waits_until_reset(status: int) -> None:
    headers = {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(NOW) + 1234)}
    with pytest.raises(RateLimited) as caught:
        decipher(error(status, "API rate limit exceeded for user ID 1.", **headers))
    assert caught.value.retry_after == 1234


def test_primary_limit_with_reset_in_the_past_waits_at_least_one_second() -> None:
    headers = {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(NOW) - 50)}
    with pytest.raises(RateLimited) as caught:
        decipher(error(403, "API rate limit exceeded", **headers))
    assert caught.value.retry_after == 1


def test_retry_after_as_http_date_is_understood() -> None:
    response = error(429, "slow down", **{"retry-after": "Thu, 15 Jan 2026 10:21:40 GMT"})
    with pytest.raises(RateLimited) as caught:
        decipher(response)
    assert caught.value.retry_after == pytest.approx(1768472500 - NOW)


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (403, "You have exceeded a secondary rate limit. Please wait a few minutes."),
        (403, "You have triggered an abuse detection mechanism."),
        (429, "Too many requests"),
        (429, ""),
    ],
)
def test_secondary_limits_wait_a_minute(status: int, message: str) -> None:
    response = error(status, message, **{"x-ratelimit-remaining": "4000"})
    with pytest.raises(RateLimited) as caught:
        decipher(response)
    assert caught.value.retry_after == 60


def test_plain_403_is_a_permission_problem() -> None:
    response = error(
        403, "Resource not accessible by integration", **{"x-ratelimit-remaining": "4999"}
    )
    with pytest.raises(PermanentError) as caught:
        decipher(response)
    assert not isinstance(caught.value, RateLimited | TransientError)
    assert "Resource not accessible by integration" in caught.value.message


@pytest.mark.parametrize("status", [404, 410])
def test_404_and_410_are_not_found(status: int) -> None:
    with pytest.raises(NotFound):
        decipher(error(status, "Not Found"))


def test_422_is_permanent_with_githubs_message() -> None:
    body = {
        "message": "Validation Failed",
        "errors": [{"code": "custom", "message": "Body is too long (maximum is 65536 characters)"}],
    }
    with pytest.raises(PermanentError) as caught:
        decipher(httpx.Response(422, json=body))
    assert caught.value.message == (
        "GitHub refused the request: Validation Failed: "
        "Body is too long (maximum is 65536 characters)"
    )


def test_409_is_conflict() -> None:
    with pytest.raises(Conflict):
        decipher(error(409, "Conflict"))


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_is_transient(status: int) -> None:
    with pytest.raises(TransientError) as caught:
        decipher(httpx.Response(status, text="<html>unicorn</html>"))
    assert not isinstance(caught.value, RateLimited)
    assert caught.value.status == status


def test_redirect_is_permanent() -> None:
    with pytest.raises(PermanentError):
        decipher(httpx.Response(301, headers={"Location": f"{API}/repositories/1"}))


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ConnectTimeout("timed out"),
        httpx.ReadTimeout("timed out"),
        httpx.ConnectError("refused"),
        httpx.RemoteProtocolError("peer closed"),
    ],
)
async def test_transport_failures_are_transient(
    client: GitHubClient, exc: Exception, router: respx.MockRouter
) -> None:
    router.get(COMMENTS).mock(side_effect=exc)
    with pytest.raises(TransientError) as caught:
        await client.upsert_comment(EVENT, marker=MARKER, body=BODY, comment_id=None)
    assert caught.value.status is None


async def test_rate_limit_wait_uses_the_injected_clock(
    http: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    client = GitHubClient(API, TokenAuth(TOKEN), http=http, clock=lambda: 1_000.0)
    router.get(COMMENTS).mock(
        return_value=error(
            403,
            "API rate limit exceeded",
            **{"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1900"},
        )
    )
    with pytest.raises(RateLimited) as caught:
        await client.upsert_comment(EVENT, marker=MARKER, body=BODY, comment_id=None)
    assert caught.value.retry_after == 900


async def test_errors_never_contain_the_token(
    client: GitHubClient, router: respx.MockRouter
) -> None:
    router.get(f"{API}/rate_limit").mock(side_effect=httpx.ConnectError(f"boom {TOKEN}"))
    router.get(COMMENTS).mock(return_value=error(401, "Bad credentials"))
    with pytest.raises(TransientError) as transport:
        await client.check()
    with pytest.raises(TokenRejected) as rejected:
        await client.upsert_comment(EVENT, marker=MARKER, body=BODY, comment_id=None)
    for exc in (transport.value, rejected.value):
        assert TOKEN not in str(exc) and TOKEN not in repr(exc)
        assert exc.__cause__ is None or TOKEN not in str(exc.__cause__)
    assert TOKEN not in repr(TokenAuth(TOKEN)) and TOKEN not in str(TokenAuth(TOKEN))


# ---------------------------------------------------------------------------
# check()


async def test_check_reports_the_rate_limit(client: GitHubClient, router: respx.MockRouter) -> None:
    core = {"limit": 5000, "remaining": 4990, "used": 10, "reset": 1}
    router.get(f"{API}/rate_limit").respond(200, json={"resources": {"core": core}})
    assert await client.check() == (
        "GitHub at https://api.github.com: credential accepted, 4990/5000 requests left"
    )


async def test_check_with_a_bad_token_is_token_rejected(
    client: GitHubClient, router: respx.MockRouter
) -> None:
    router.get(f"{API}/rate_limit").mock(return_value=error(401, "Bad credentials"))
    with pytest.raises(TokenRejected):
        await client.check()
