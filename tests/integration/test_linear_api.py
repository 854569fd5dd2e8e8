"""LinearClient and decipher_linear_response against respx-mocked Linear responses."""

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
    NotFound,
    PermanentError,
    RateLimited,
    RemoteError,
    RouteNotFound,
    TokenRejected,
    TransientError,
)
from service.trackers.base import IssueTracker
from service.trackers.linear.api import (
    PAGE_SIZE,
    LinearClient,
    authorization_header,
    decipher_linear_response,
)

API = "https://api.linear.app/graphql"
KEY = "lin_api_secretNeverShown0123456789abcdefABCDEF"
NOW = 1_768_472_000.0
ISSUE_ID = "9b2f6c1d-3e4a-4f5b-8c7d-1a2b3c4d5e6f"
MARKER = "<!-- coder-bridge:delegation=abc123 -->"
BODY = f"{MARKER}\nTask created: https://coder.example.com/tasks/ada/1"

EVENT = IssueEvent(
    tracker="linear",
    delivery_id="234d1a4e-b617-4388-90fe-adc3633d6b72",
    issue_key=f"linear:{ISSUE_ID}",
    issue_id=ISSUE_ID,
    number="ENG-123",
    title="Add CSV export to the reports page",
    body="",
    url="https://linear.app/example/issue/ENG-123/add-csv-export-to-the-reports-page",
    scope="ENG",
    author=Person("5f8c3b8e-2a41-4c55-9a3e-0d6f1c2b7a10", "Ada Lovelace"),
    labeler=Person("5f8c3b8e-2a41-4c55-9a3e-0d6f1c2b7a10", "Ada Lovelace"),
)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as mock:
        yield mock


@pytest.fixture
def client(http: httpx.AsyncClient) -> LinearClient:
    return LinearClient(API, KEY, http=http, clock=lambda: NOW)


# -- response builders -------------------------------------------------------------


def gql_error(message: str, code: str, kind: str, status_code: int, **extra: Any) -> dict[str, Any]:
    extensions = {"code": code, "type": kind, "statusCode": status_code, "userError": True}
    return {"message": message, "extensions": {**extensions, **extra}}


NOT_FOUND_COMMENT = gql_error(
    "Entity not found: Comment", "INPUT_ERROR", "invalid input", 400,
    userPresentableMessage="Could not find referenced Comment.",
)
NOT_FOUND_ISSUE = gql_error(
    "Entity not found: Issue", "INPUT_ERROR", "invalid input", 400,
    userPresentableMessage="Could not find referenced Issue.",
)
AUTH = gql_error(
    "Authentication required, not authenticated", "AUTHENTICATION_ERROR",
    "authentication error", 401,
)
RATELIMITED = gql_error("Rate limit exceeded", "RATELIMITED", "ratelimited", 429)


def errors(*entries: dict[str, Any], status: int = 200, **headers: str) -> httpx.Response:
    return httpx.Response(status, json={"errors": list(entries), "data": None}, headers=headers)


def data(payload: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.Response(200, json={"data": payload}, headers=headers)


VIEWER_ID = "viewer-bridge"  # the user the API key acts as


def page(nodes: list[tuple[str, str]], cursor: str | None = None, *,
         user: str = VIEWER_ID) -> httpx.Response:
    """A page of comments, written by ``user`` (the bridge's own, by default)."""
    connection = {
        "nodes": [{"id": node_id, "body": body, "user": {"id": user}} for node_id, body in nodes],
        "pageInfo": {"hasNextPage": cursor is not None, "endCursor": cursor},
    }
    return data({"issue": {"comments": connection}})


def saved(field: str, comment_id: str, success: bool = True) -> httpx.Response:
    return data({field: {"success": success, "comment": {"id": comment_id, "url": "u"}}})


class Linear:
    """Answers each POST by operation name; records (operation, variables)."""

    def __init__(self, **answers: Any) -> None:
        answers.setdefault("Viewer", data({"viewer": {"id": VIEWER_ID, "name": "Bridge"}}))
        self.answers = {name: list(value) if isinstance(value, list) else [value]
                        for name, value in answers.items()}
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        payload = json.loads(request.content)
        name = payload["query"].split("(")[0].split("{")[0].split()[-1]
        self.seen.append((name, payload["variables"]))
        self.requests.append(request)
        queue = self.answers[name]
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, httpx.Response)
        return answer

    @property
    def names(self) -> list[str]:
        """The operations asked, without the one-off ``Viewer`` lookup."""
        return [name for name, _ in self.seen if name != "Viewer"]


def serve(router: respx.MockRouter, linear: Linear) -> Linear:
    router.post(API).mock(side_effect=linear)
    return linear


# ---------------------------------------------------------------------------
# Authorization rule


@pytest.mark.parametrize(
    ("credential", "header"),
    [
        ("lin_api_abc", "lin_api_abc"),
        ("  lin_api_abc\n", "lin_api_abc"),
        ("lin_oauth_0123", "Bearer lin_oauth_0123"),
        ("some-oauth-access-token", "Bearer some-oauth-access-token"),
        ("Bearer already-prefixed", "Bearer already-prefixed"),
    ],
)
def test_authorization_rule(credential: str, header: str) -> None:
    assert authorization_header(credential) == header


def test_empty_key_is_refused() -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        LinearClient(API, "  ", http=httpx.AsyncClient())


async def test_request_shape(client: LinearClient, router: respx.MockRouter) -> None:
    linear = serve(
        router, Linear(IssueComments=page([]), CommentCreate=saved("commentCreate", "c1"))
    )
    await client.upsert_comment(EVENT, marker=MARKER, body=BODY, comment_id=None)

    request = linear.requests[0]
    assert request.method == "POST"
    assert request.headers["authorization"] == KEY
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == "coder-bridge"
    payload = json.loads(request.content)
    assert set(payload) == {"query", "variables"}
    assert "comments(first: $first, after: $after)" in payload["query"]


# ---------------------------------------------------------------------------
# Upsert paths


def test_client_satisfies_the_issue_commenter_protocol(client: LinearClient) -> None:
    commenter: IssueTracker = client
    assert commenter is client


async def test_creates_a_comment_when_none_carries_the_marker(
    client: LinearClient, router: respx.MockRouter
) -> None:
    linear = serve(router, Linear(
        IssueComments=page([("c0", "hello")]), CommentCreate=saved("commentCreate", "c-new")
    ))
    assert await client.upsert_comment(EVENT, marker=MARKER, body=BODY, comment_id=None) == "c-new"
    assert linear.seen == [
        ("IssueComments", {"id": ISSUE_ID, "first": PAGE_SIZE, "after": None}),
        ("CommentCreate", {"input": {"issueId": ISSUE_ID, "body": BODY}}),
    ]


async def test_finds_the_marker_on_page_two_and_edits_it(
    client: LinearClient, router: respx.MockRouter
) -> None:
    linear = serve(router, Linear(
        IssueComments=[
            page([(f"c{i}", "filler") for i in range(PAGE_SIZE)], cursor="cursor-1"),
            page([("c50", "other"), ("c51", f"old {MARKER}")]),
        ],
        CommentUpdate=saved("commentUpdate", "c51"),
    ))
    assert await client.upsert_comment(EVENT, marker=MARKER, body=BODY, comment_id=None) == "c51"
    assert linear.seen == [
        ("IssueComments", {"id": ISSUE_ID, "first": PAGE_SIZE, "after": None}),
        ("IssueComments", {"id": ISSUE_ID, "first": PAGE_SIZE, "after": "cursor-1"}),
        ("Viewer", {}),  # asked once, when a comment carries the marker
        ("CommentUpdate", {"id": "c51", "input": {"body": BODY}}),
    ]


async def test_found_comment_with_the_same_body_is_left_alone(
    client: LinearClient, router: respx.MockRouter
) -> None:
    linear = serve(router, Linear(IssueComments=page([("c9", BODY)])))
    assert await client.upsert_comment(EVENT, marker=MARKER, body=BODY, comment_id=None) == "c9"
    assert linear.names == ["IssueComments"]


async def test_known_comment_id_is_updated_without_searching(
    client: LinearClient, router: respx.MockRouter
) -> None:
    linear = serve(router, Linear(CommentUpdate=saved("commentUpdate", "c42")))
    assert await client.upsert_comment(EVENT, marker=MARKER, body=BODY, comment_id="c42") == "c42"
    assert linear.seen == [("CommentUpdate", {"id": "c42", "input": {"body": BODY}})]


@pytest.mark.parametrize("status", [200, 400])
async def test_known_comment_id_gone_falls_back_to_search_then_create(
    client: LinearClient, router: respx.MockRouter, status: int
) -> None:
    linear = serve(router, Linear(
        CommentUpdate=errors(NOT_FOUND_COMMENT, status=status),
        IssueComments=page([]),
        CommentCreate=saved("commentCreate", "c43"),
    ))
    assert await client.upsert_comment(EVENT, marker=MARKER, body=BODY, comment_id="c42") == "c43"
    assert linear.names == ["CommentUpdate", "IssueComments", "CommentCreate"]


async def test_known_comment_id_gone_but_marker_found_edits_that_one(
    client: LinearClient, router: respx.MockRouter
) -> None:
    linear = serve(router, Linear(
        CommentUpdate=[errors(NOT_FOUND_COMMENT), saved("commentUpdate", "c7")],
        IssueComments=page([("c7", f"{MARKER} old")]),
    ))
    assert await client.upsert_comment(EVENT, marker=MARKER, body=BODY, comment_id="gone") == "c7"
    assert linear.names == ["CommentUpdate", "IssueComments", "CommentUpdate"]


async def test_a_refused_edit_posts_a_new_comment(
    client: LinearClient, router: respx.MockRouter
) -> None:
    forbidden = gql_error("Forbidden", "FORBIDDEN", "forbidden", 403)
    linear = serve(router, Linear(
        CommentUpdate=errors(forbidden, status=400),
        IssueComments=page([("c42", f"old {MARKER}")]),
        CommentCreate=saved("commentCreate", "c43"),
    ))
    assert await client.upsert_comment(EVENT, marker=MARKER, body=BODY, comment_id="c42") == "c43"
    assert linear.names == ["CommentUpdate", "IssueComments", "CommentCreate"]


async def test_a_marker_in_someone_elses_comment_is_ignored(
    client: LinearClient, router: respx.MockRouter
) -> None:
    linear = serve(router, Linear(
        IssueComments=page([("c1", f"pre-posted {MARKER}")], user="someone-else"),
        CommentCreate=saved("commentCreate", "c2"),
    ))
    assert await client.upsert_comment(EVENT, marker=MARKER, body=BODY, comment_id=None) == "c2"
    assert "CommentUpdate" not in linear.names


async def test_reactions_use_the_emoji_and_a_gone_comment_is_fine(
    client: LinearClient, router: respx.MockRouter
) -> None:
    linear = serve(router, Linear(ReactionCreate=[
        data({"reactionCreate": {"success": True}}), errors(NOT_FOUND_COMMENT)]))
    await client.react(EVENT, "c9")
    await client.react(EVENT, "c10")
    assert linear.seen == [
        ("ReactionCreate", {"input": {"commentId": "c9", "emoji": "👀"}}),
        ("ReactionCreate", {"input": {"commentId": "c10", "emoji": "👀"}}),
    ]


async def test_missing_issue_is_not_found(client: LinearClient, router: respx.MockRouter) -> None:
    serve(router, Linear(IssueComments=errors(NOT_FOUND_ISSUE)))
    with pytest.raises(NotFound) as caught:
        await client.upsert_comment(EVENT, marker=MARKER, body=BODY, comment_id=None)
    assert caught.value.message == "Linear could not find it: Could not find referenced Issue."


async def test_paging_stops_when_the_cursor_does_not_move(
    client: LinearClient, router: respx.MockRouter
) -> None:
    linear = serve(router, Linear(
        IssueComments=[page([("a", "x")], cursor="same"), page([("b", "y")], cursor="same")],
        CommentCreate=saved("commentCreate", "c1"),
    ))
    await client.upsert_comment(EVENT, marker=MARKER, body=BODY, comment_id=None)
    assert linear.names == ["IssueComments", "IssueComments", "CommentCreate"]


async def test_success_false_is_transient(client: LinearClient, router: respx.MockRouter) -> None:
    serve(router, Linear(
        IssueComments=page([]), CommentCreate=saved("commentCreate", "c1", success=False)
    ))
    with pytest.raises(TransientError, match="not saved"):
        await client.upsert_comment(EVENT, marker=MARKER, body=BODY, comment_id=None)


async def test_payload_without_a_comment_id_is_transient(
    client: LinearClient, router: respx.MockRouter
) -> None:
    serve(router, Linear(
        IssueComments=page([]),
        CommentCreate=data({"commentCreate": {"success": True, "comment": None}}),
    ))
    with pytest.raises(TransientError, match="no comment id"):
        await client.upsert_comment(EVENT, marker=MARKER, body=BODY, comment_id=None)


async def test_unexpected_comment_list_shape_is_transient(
    client: LinearClient, router: respx.MockRouter
) -> None:
    serve(router, Linear(IssueComments=data({"issue": {"comments": None}})))
    with pytest.raises(TransientError, match="comment list"):
        await client.upsert_comment(EVENT, marker=MARKER, body=BODY, comment_id=None)


async def test_body_must_contain_the_marker(client: LinearClient) -> None:
    with pytest.raises(ValueError, match="marker"):
        await client.upsert_comment(EVENT, marker=MARKER, body="no marker", comment_id=None)


async def test_a_github_event_is_not_a_linear_issue(client: LinearClient) -> None:
    github = msgspec.structs.replace(EVENT, tracker="github", issue_key="github:1:1")
    with pytest.raises(PermanentError, match="not a Linear issue"):
        await client.upsert_comment(github, marker=MARKER, body=BODY, comment_id=None)


# ---------------------------------------------------------------------------
# The one response mapping


def decipher(response: httpx.Response, now: float = NOW) -> Any:
    response.request = httpx.Request("POST", API)
    return decipher_linear_response(response, now=now)


def test_data_is_returned() -> None:
    assert decipher(data({"viewer": {"id": "u1"}})) == {"viewer": {"id": "u1"}}


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, text="<html>proxy</html>"),
        httpx.Response(200, json=[1, 2]),
        httpx.Response(200, json={"data": None}),
        httpx.Response(200),
    ],
)
def test_2xx_without_data_is_transient(response: httpx.Response) -> None:
    with pytest.raises(TransientError):
        decipher(response)


def test_errors_are_checked_even_with_partial_data_on_200() -> None:
    body = {"data": {"viewer": {"id": "u1"}}, "errors": [{"message": "Something odd"}]}
    with pytest.raises(PermanentError, match="Something odd"):
        decipher(httpx.Response(200, json=body))


@pytest.mark.parametrize("status", [200, 400, 429])
def test_ratelimited_code_is_rate_limited_whatever_the_status(status: int) -> None:
    with pytest.raises(RateLimited) as caught:
        decipher(errors(RATELIMITED, status=status))
    assert caught.value.status == status
    assert caught.value.retry_after == 60


def test_ratelimited_type_alone_is_rate_limited() -> None:
    entry = {"message": "Too many", "extensions": {"type": "ratelimited"}}
    with pytest.raises(RateLimited):
        decipher(errors(entry, status=400))


def test_http_429_without_a_body_is_rate_limited() -> None:
    with pytest.raises(RateLimited) as caught:
        decipher(httpx.Response(429, text="slow down"))
    assert caught.value.retry_after == 60


def test_retry_after_header_comes_first() -> None:
    reset = str(int((NOW + 900) * 1000))
    response = errors(RATELIMITED, status=400, **{
        "Retry-After": "17", "X-RateLimit-Requests-Reset": reset,
        "X-RateLimit-Requests-Remaining": "0",
    })
    with pytest.raises(RateLimited) as caught:
        decipher(response)
    assert caught.value.retry_after == 17


def test_retry_after_as_http_date() -> None:
    response = errors(RATELIMITED, status=400, **{"Retry-After": "Thu, 15 Jan 2026 10:21:40 GMT"})
    with pytest.raises(RateLimited) as caught:
        decipher(response)
    assert caught.value.retry_after == pytest.approx(1_768_472_500 - NOW)


def test_requests_reset_in_epoch_ms_gives_the_wait() -> None:
    reset = str(int((NOW + 1234) * 1000))
    response = errors(RATELIMITED, status=400, **{
        "X-RateLimit-Requests-Remaining": "0", "X-RateLimit-Requests-Reset": reset,
    })
    with pytest.raises(RateLimited) as caught:
        decipher(response)
    assert caught.value.retry_after == pytest.approx(1234)


def test_requests_reset_in_seconds_is_understood() -> None:
    response = errors(RATELIMITED, status=400, **{"X-RateLimit-Requests-Reset": str(int(NOW) + 90)})
    with pytest.raises(RateLimited) as caught:
        decipher(response)
    assert caught.value.retry_after == pytest.approx(90)


def test_exhausted_complexity_bucket_decides_the_wait() -> None:
    response = errors(RATELIMITED, status=400, **{
        "X-RateLimit-Requests-Remaining": "1400",
        "X-RateLimit-Requests-Reset": str(int((NOW + 100) * 1000)),
        "X-RateLimit-Complexity-Remaining": "0",
        "X-RateLimit-Complexity-Reset": str(int((NOW + 700) * 1000)),
    })
    with pytest.raises(RateLimited) as caught:
        decipher(response)
    assert caught.value.retry_after == pytest.approx(700)


def test_reset_in_the_past_waits_at_least_one_second() -> None:
    response = errors(RATELIMITED, status=400, **{
        "X-RateLimit-Requests-Reset": str(int((NOW - 50) * 1000)),
    })
    with pytest.raises(RateLimited) as caught:
        decipher(response)
    assert caught.value.retry_after == 1


@pytest.mark.parametrize(
    "response",
    [
        errors(AUTH, status=400),
        errors(AUTH, status=200),
        errors(AUTH, status=401),
        httpx.Response(401, text="Unauthorized"),
    ],
)
def test_authentication_errors_are_token_rejected(response: httpx.Response) -> None:
    with pytest.raises(TokenRejected) as caught:
        decipher(response)
    assert caught.value.message == "Linear rejected the API key"


@pytest.mark.parametrize("status", [200, 400])
def test_entity_not_found_is_not_found(status: int) -> None:
    with pytest.raises(NotFound) as caught:
        decipher(errors(NOT_FOUND_COMMENT, status=status))
    assert "Could not find referenced Comment." in caught.value.message


def test_validation_error_is_permanent_with_linears_message() -> None:
    entry = gql_error(
        'Cannot query field "nope" on type "Issue".', "GRAPHQL_VALIDATION_FAILED",
        "graphql error", 400,
    )
    with pytest.raises(PermanentError) as caught:
        decipher(errors(entry, status=400))
    assert not isinstance(caught.value, TransientError | NotFound | TokenRejected)
    assert caught.value.message == (
        'Linear refused the request: Cannot query field "nope" on type "Issue".'
    )


def test_user_presentable_message_is_preferred_and_long_ones_are_cut() -> None:
    entry = gql_error("Argument Validation Error", "INPUT_ERROR", "invalid input", 400,
                      userPresentableMessage="x" * 1000)
    with pytest.raises(PermanentError) as caught:
        decipher(errors(entry, status=400))
    assert caught.value.message.startswith("Linear refused the request: xxx")
    assert len(caught.value.message) < 400


@pytest.mark.parametrize("kind", ["internal error", "lock timeout"])
def test_internal_graphql_errors_are_transient(kind: str) -> None:
    entry = gql_error("Something broke", "INTERNAL_SERVER_ERROR", kind, 500)
    with pytest.raises(TransientError) as caught:
        decipher(errors(entry, status=200))
    assert not isinstance(caught.value, RateLimited)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_is_transient(status: int) -> None:
    with pytest.raises(TransientError) as caught:
        decipher(httpx.Response(status, text="<html>bad gateway</html>"))
    assert not isinstance(caught.value, RateLimited)
    assert caught.value.status == status


def test_http_404_without_graphql_errors_is_a_wrong_api_url() -> None:
    with pytest.raises(RouteNotFound, match="no Linear GraphQL API"):
        decipher(httpx.Response(404, text="Not Found"))


@pytest.mark.parametrize("status", [301, 403, 418])
def test_other_statuses_without_errors_are_permanent(status: int) -> None:
    with pytest.raises(PermanentError) as caught:
        decipher(httpx.Response(status, text="no"))
    assert not isinstance(caught.value, TransientError)


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
    client: LinearClient, exc: Exception, router: respx.MockRouter
) -> None:
    router.post(API).mock(side_effect=exc)
    with pytest.raises(TransientError) as caught:
        await client.upsert_comment(EVENT, marker=MARKER, body=BODY, comment_id=None)
    assert caught.value.status is None


async def test_rate_limit_wait_uses_the_injected_clock(
    http: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    client = LinearClient(API, KEY, http=http, clock=lambda: 1_000_000_000.0)
    router.post(API).mock(return_value=errors(
        RATELIMITED, status=400, **{"X-RateLimit-Requests-Reset": "1000000900000"}
    ))
    with pytest.raises(RateLimited) as caught:
        await client.upsert_comment(EVENT, marker=MARKER, body=BODY, comment_id=None)
    assert caught.value.retry_after == pytest.approx(900)


async def test_errors_never_contain_the_key(client: LinearClient, router: respx.MockRouter) -> None:
    echo = {"message": f"Invalid key {KEY}", "extensions": {"code": "INPUT_ERROR"}}
    router.post(API).mock(side_effect=[
        httpx.ConnectError(f"boom {KEY}"), errors(AUTH, status=400), errors(echo, status=400)
    ])
    caught = []
    for _ in range(3):
        with pytest.raises(RemoteError) as info:
            await client.check()
        caught.append(info.value)
    assert [type(e) for e in caught] == [TransientError, TokenRejected, PermanentError]
    for exc in caught:
        assert KEY not in str(exc) and KEY not in repr(exc)
        assert exc.__cause__ is None or KEY not in str(exc.__cause__)
    assert "***" in caught[2].message
    assert KEY not in repr(client) and KEY not in str(client)


# ---------------------------------------------------------------------------
# check()


async def test_check_reports_the_viewer_and_budget(
    client: LinearClient, router: respx.MockRouter
) -> None:
    linear = serve(router, Linear(Viewer=data(
        {"viewer": {"id": "u1", "name": "Bridge Bot"}},
        **{"X-RateLimit-Requests-Remaining": "1499", "X-RateLimit-Requests-Limit": "1500"},
    )))
    assert await client.check() == (
        f"Linear at {API}: credential accepted as Bridge Bot, 1499/1500 requests left"
    )
    assert "viewer" in json.loads(linear.requests[0].content)["query"]


async def test_check_with_a_bad_key_is_token_rejected(
    client: LinearClient, router: respx.MockRouter
) -> None:
    router.post(API).mock(return_value=errors(AUTH, status=400))
    with pytest.raises(TokenRejected):
        await client.check()


async def test_oauth_token_is_sent_as_bearer(
    http: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    client = LinearClient(API, "oauth-access-token", http=http)
    linear = serve(router, Linear(Viewer=data({"viewer": {"id": "u1", "name": "App"}})))
    await client.check()
    assert linear.requests[0].headers["authorization"] == "Bearer oauth-access-token"
