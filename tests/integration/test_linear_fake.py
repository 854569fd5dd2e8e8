"""LinearClient against FakeLinear served on a real loopback port; and the fake itself."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import msgspec
import pytest

from service.core.events import IssueEvent, Person
from service.errors import NotFound, PermanentError, RateLimited, TokenRejected, TransientError
from service.trackers.linear.api import (
    COMMENT_CREATE,
    COMMENT_UPDATE,
    ISSUE_COMMENTS,
    PAGE_SIZE,
    REACTION_CREATE,
    LinearClient,
)
from tests.fakes.linear import (
    DEFAULT_API_KEY,
    DEFAULT_OAUTH_TOKEN,
    DEFAULT_USER,
    FIXTURE_IDENTIFIER,
    FIXTURE_ISSUE_ID,
    FakeLinear,
)
from tests.fakes.server import serve_in_thread

NOW = 1_768_472_000.0
MARKER = "<!-- coder-bridge:delegation=abc123 -->"

EVENT = IssueEvent(
    tracker="linear",
    delivery_id="234d1a4e-b617-4388-90fe-adc3633d6b72",
    issue_key=f"linear:{FIXTURE_ISSUE_ID}",
    issue_id=FIXTURE_ISSUE_ID,
    number=FIXTURE_IDENTIFIER,
    title="Add CSV export to the reports page",
    body="",
    url="https://linear.app/example/issue/ENG-123/add-csv-export-to-the-reports-page",
    scope="ENG",
    author=Person("5f8c3b8e-2a41-4c55-9a3e-0d6f1c2b7a10", "Ada Lovelace"),
    labeler=Person("5f8c3b8e-2a41-4c55-9a3e-0d6f1c2b7a10", "Ada Lovelace"),
)


def body(text: str) -> str:
    return f"{MARKER}\n{text}"


def bodies(fake: FakeLinear) -> list[str]:
    return [c["body"] for c in fake.comments(FIXTURE_ISSUE_ID)]


@pytest.fixture
def fake() -> FakeLinear:
    return FakeLinear(clock=lambda: NOW)


@pytest.fixture
def base_url(fake: FakeLinear) -> Iterator[str]:
    with serve_in_thread(fake) as url:
        yield url


@pytest.fixture
def endpoint(base_url: str) -> str:
    return f"{base_url}/graphql"


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as client:
        yield client


@pytest.fixture
def client(endpoint: str, http: httpx.AsyncClient) -> LinearClient:
    return LinearClient(endpoint, DEFAULT_API_KEY, http=http, clock=lambda: NOW)


async def upsert(client: LinearClient, text: str, comment_id: str | None = None) -> str:
    return await client.upsert_comment(EVENT, marker=MARKER, body=body(text), comment_id=comment_id)


async def post(
    http: httpx.AsyncClient, endpoint: str, query: str, variables: Any = None,
    authorization: str | None = DEFAULT_API_KEY,
) -> httpx.Response:
    headers = {"Authorization": authorization} if authorization is not None else {}
    payload: dict[str, Any] = {"query": query}
    if variables is not None:
        payload["variables"] = variables
    return await http.post(endpoint, headers=headers, json=payload)


# ---------------------------------------------------------------------------
# Upsert behaviour


async def test_upserting_twice_edits_the_one_comment(
    client: LinearClient, fake: FakeLinear
) -> None:
    first = await upsert(client, "creating task")
    second = await upsert(client, "task ready")

    assert first == second
    comments = fake.comments(FIXTURE_ISSUE_ID)
    assert [(c["id"], c["body"], c["user"]) for c in comments] == [
        (first, body("task ready"), DEFAULT_USER)
    ]
    assert comments[0]["editedAt"] is not None
    # The second upsert found the comment by its marker and asked once who the bridge is.
    assert fake.requests == ["issue", "commentCreate", "issue", "viewer", "commentUpdate"]


async def test_upsert_with_the_known_id_updates_directly(
    client: LinearClient, fake: FakeLinear
) -> None:
    comment_id = await upsert(client, "one")
    before = len(fake.requests)

    assert await upsert(client, "two", comment_id) == comment_id
    assert fake.requests[before:] == ["commentUpdate"]
    assert bodies(fake) == [body("two")]


async def test_deleted_known_comment_is_recreated_once(
    client: LinearClient, fake: FakeLinear
) -> None:
    old = await upsert(client, "one")
    fake.delete_comment(old)

    new = await upsert(client, "two", old)
    assert new != old
    assert bodies(fake) == [body("two")]
    assert fake.requests[-3:] == ["commentUpdate", "issue", "commentCreate"]


async def test_marker_beyond_the_first_page_is_found(
    client: LinearClient, fake: FakeLinear
) -> None:
    for i in range(70):
        fake.add_comment(FIXTURE_ISSUE_ID, f"chatter {i}")
    ours = fake.add_comment(FIXTURE_ISSUE_ID, body("old"), user=DEFAULT_USER)
    for i in range(10):
        fake.add_comment(FIXTURE_ISSUE_ID, f"more chatter {i}")

    assert await upsert(client, "new") == ours
    assert fake.requests == ["issue", "issue", "viewer", "commentUpdate"]
    afters = [variables["after"] for name, variables in fake.calls if name == "issue"]
    assert afters[0] is None and afters[1] is not None
    assert [c["body"] for c in fake.comments(FIXTURE_ISSUE_ID) if MARKER in c["body"]] == [
        body("new")
    ]


async def test_search_over_every_page_then_create(client: LinearClient, fake: FakeLinear) -> None:
    for i in range(2 * PAGE_SIZE + 1):
        fake.add_comment(FIXTURE_ISSUE_ID, f"chatter {i}")

    await upsert(client, "new")
    assert fake.requests == ["issue", "issue", "issue", "commentCreate"]
    assert len(fake.comments(FIXTURE_ISSUE_ID)) == 2 * PAGE_SIZE + 2


async def test_issue_identifier_works_as_the_issue_id(
    endpoint: str, http: httpx.AsyncClient, fake: FakeLinear
) -> None:
    client = LinearClient(endpoint, DEFAULT_API_KEY, http=http)
    by_identifier = msgspec.structs.replace(EVENT, issue_id=FIXTURE_IDENTIFIER)
    await client.upsert_comment(by_identifier, marker=MARKER, body=body("x"), comment_id=None)
    assert bodies(fake) == [body("x")]


async def test_unknown_issue_is_not_found(client: LinearClient) -> None:
    other = msgspec.structs.replace(EVENT, issue_id="00000000-0000-4000-8000-000000000000")
    with pytest.raises(NotFound, match="Could not find referenced Issue"):
        await client.upsert_comment(other, marker=MARKER, body=body("x"), comment_id=None)


# ---------------------------------------------------------------------------
# Failures, retries and rate limits


async def test_failure_after_acting_then_repeat_leaves_one_comment(
    client: LinearClient, fake: FakeLinear
) -> None:
    fake.fail_next("commentCreate", 502, after_acting=True)
    with pytest.raises(TransientError) as caught:
        await upsert(client, "creating task")
    assert caught.value.status == 502
    assert len(fake.comments(FIXTURE_ISSUE_ID)) == 1  # Linear did the work before the 502

    await upsert(client, "creating task")
    await upsert(client, "task ready")
    assert bodies(fake) == [body("task ready")]


async def test_failure_before_acting_then_retry_creates_one_comment(
    client: LinearClient, fake: FakeLinear
) -> None:
    fake.fail_next("commentCreate", 500)
    with pytest.raises(TransientError, match="server error"):
        await upsert(client, "creating task")
    assert fake.comments(FIXTURE_ISSUE_ID) == []

    await upsert(client, "creating task")
    assert len(fake.comments(FIXTURE_ISSUE_ID)) == 1


async def test_injected_ratelimited_is_rate_limited_until_the_reset(
    client: LinearClient, fake: FakeLinear
) -> None:
    fake.fail_ratelimited("issue", reset_ms=int((NOW + 1234) * 1000))
    with pytest.raises(RateLimited) as caught:
        await upsert(client, "x")
    assert caught.value.status == 400
    assert caught.value.retry_after == pytest.approx(1234)
    assert fake.comments(FIXTURE_ISSUE_ID) == []


async def test_injected_ratelimited_with_retry_after(
    client: LinearClient, fake: FakeLinear
) -> None:
    fake.fail_ratelimited("commentCreate", retry_after=17)
    with pytest.raises(RateLimited) as caught:
        await upsert(client, "x")
    assert caught.value.retry_after == 17
    assert fake.comments(FIXTURE_ISSUE_ID) == []


async def test_spent_hourly_budget_is_ratelimited_on_http_400() -> None:
    fake = FakeLinear(rate_limit=2, clock=lambda: NOW)
    with serve_in_thread(fake) as url:
        async with httpx.AsyncClient(timeout=5) as http:
            client = LinearClient(f"{url}/graphql", DEFAULT_API_KEY, http=http, clock=lambda: NOW)
            await upsert(client, "one")  # issue + commentCreate: the budget of 2 is spent
            with pytest.raises(RateLimited) as caught:
                await upsert(client, "two")
            assert caught.value.status == 400
            assert caught.value.retry_after == pytest.approx(3600)


async def test_bad_key_is_token_rejected(endpoint: str, fake: FakeLinear) -> None:
    async with httpx.AsyncClient(timeout=5) as http:
        client = LinearClient(endpoint, "lin_api_wrong", http=http)
        with pytest.raises(TokenRejected):
            await upsert(client, "x")
    assert fake.requests == ["issue"]
    assert all("lin_api" not in name for name in fake.requests)


async def test_revoked_key_is_token_rejected(client: LinearClient, fake: FakeLinear) -> None:
    await upsert(client, "x")
    fake.revoke(DEFAULT_API_KEY)
    with pytest.raises(TokenRejected):
        await upsert(client, "y")


async def test_oauth_token_is_accepted_as_bearer(endpoint: str, fake: FakeLinear) -> None:
    async with httpx.AsyncClient(timeout=5) as http:
        client = LinearClient(endpoint, DEFAULT_OAUTH_TOKEN, http=http)
        await upsert(client, "x")
        assert await client.check() == (
            f"Linear at {endpoint}: credential accepted as {DEFAULT_USER}, 1497/1500 requests left"
        )
    assert bodies(fake) == [body("x")]


async def test_api_key_sent_as_bearer_is_refused(
    endpoint: str, http: httpx.AsyncClient
) -> None:
    response = await post(http, endpoint, "{ viewer { id } }",
                          authorization=f"Bearer {DEFAULT_API_KEY}")
    assert response.json()["errors"][0]["extensions"]["code"] == "AUTHENTICATION_ERROR"


async def test_slow_linear_is_a_transient_timeout(endpoint: str, fake: FakeLinear) -> None:
    fake.delay_next("issue", 0.3)
    async with httpx.AsyncClient(timeout=0.05) as http:
        client = LinearClient(endpoint, DEFAULT_API_KEY, http=http)
        with pytest.raises(TransientError, match="did not answer in time"):
            await upsert(client, "x")


async def test_forbidden_is_permanent(client: LinearClient, fake: FakeLinear) -> None:
    fake.fail_next("commentCreate", 403)
    with pytest.raises(PermanentError) as caught:
        await upsert(client, "x")
    assert not isinstance(caught.value, TransientError)
    assert "permission" in caught.value.message


async def test_check_against_the_fake(client: LinearClient, endpoint: str) -> None:
    assert await client.check() == (
        f"Linear at {endpoint}: credential accepted as {DEFAULT_USER}, 1499/1500 requests left"
    )


# ---------------------------------------------------------------------------
# The fake itself behaves like Linear


async def test_fake_accepts_exactly_the_clients_operations(
    endpoint: str, http: httpx.AsyncClient, fake: FakeLinear
) -> None:
    created = await post(http, endpoint, COMMENT_CREATE,
                         {"input": {"issueId": FIXTURE_ISSUE_ID, "body": "hi"}})
    payload = created.json()["data"]["commentCreate"]
    assert created.status_code == 200 and payload["success"] is True
    comment_id = payload["comment"]["id"]
    updated = await post(http, endpoint, COMMENT_UPDATE,
                         {"id": comment_id, "input": {"body": "hello"}})
    assert updated.json()["data"]["commentUpdate"]["comment"]["id"] == comment_id
    reacted = await post(http, endpoint, REACTION_CREATE,
                         {"input": {"commentId": comment_id, "emoji": "👀"}})
    assert reacted.json()["data"]["reactionCreate"] == {"success": True}
    assert fake.reactions(comment_id) == ["👀"]
    listed = await post(http, endpoint, ISSUE_COMMENTS,
                        {"id": FIXTURE_ISSUE_ID, "first": 10, "after": None})
    connection = listed.json()["data"]["issue"]["comments"]
    assert connection == {
        "nodes": [{"id": comment_id, "body": "hello", "user": {"id": fake.user_id(DEFAULT_USER)}}],
        "pageInfo": {"hasNextPage": False, "endCursor": comment_id},
    }


async def test_fake_pages_with_cursors(
    endpoint: str, http: httpx.AsyncClient, fake: FakeLinear
) -> None:
    ids = [fake.add_comment(FIXTURE_ISSUE_ID, f"c{i}") for i in range(5)]
    first = await post(http, endpoint, ISSUE_COMMENTS, {"id": FIXTURE_ISSUE_ID, "first": 2})
    connection = first.json()["data"]["issue"]["comments"]
    assert [n["id"] for n in connection["nodes"]] == ids[:2]
    assert connection["pageInfo"] == {"hasNextPage": True, "endCursor": ids[1]}
    last = await post(http, endpoint, ISSUE_COMMENTS,
                      {"id": FIXTURE_ISSUE_ID, "first": 2, "after": ids[3]})
    connection = last.json()["data"]["issue"]["comments"]
    assert [n["body"] for n in connection["nodes"]] == ["c4"]
    assert connection["pageInfo"]["hasNextPage"] is False
    aliased = await post(
        http, endpoint,
        '{ i: issue(id: "ENG-123") { __typename identifier comments(first: 1) { nodes { id } } } }',
    )
    assert aliased.json()["data"]["i"] == {
        "__typename": "Issue", "identifier": "ENG-123", "comments": {"nodes": [{"id": ids[0]}]},
    }
    too_many = await post(http, endpoint, ISSUE_COMMENTS, {"id": FIXTURE_ISSUE_ID, "first": 251})
    assert too_many.json()["data"] is None
    assert too_many.json()["errors"][0]["extensions"]["code"] == "INPUT_ERROR"


@pytest.mark.parametrize(
    ("query", "variables", "message"),
    [
        ("{ viewer { id nope } }", None, 'Cannot query field "nope" on type "User".'),
        ("{ teams { nodes { id } } }", None, 'Cannot query field "teams" on type "Query".'),
        ("mutation { issueDelete(id: \"x\") { success } }", None,
         'Cannot query field "issueDelete" on type "Mutation".'),
        ("{ viewer }", None, 'Field "viewer" of type "User!" must have a selection of subfields.'),
        ("{ viewer { id { x } } }", None, 'Field "id" must not have a selection'),
        ("{ issue { id } }", None,
         'Field "issue" argument "id" of type "String!" is required, but it was not provided.'),
        ("{ issue(id: \"a\", nope: 1) { id } }", None, 'Unknown argument "nope" on field'),
        ("query Q($id: String!) { viewer { id } }", {"id": "a"},
         'Variable "$id" is never used in operation "Q".'),
        ("{ issue(id: $id) { id } }", None, 'Variable "$id" is not defined.'),
        ("query Q($id: Int!) { issue(id: $id) { id } }", {"id": 1},
         'Variable "$id" of type "Int!" used in position expecting type "String!".'),
        ("query Q($id: String) { issue(id: $id) { id } }", {"id": "a"},
         'Variable "$id" of type "String" used in position expecting type "String!".'),
        (COMMENT_UPDATE, {"input": {"body": "x"}},
         'Variable "$id" of required type "String!" was not provided.'),
        (COMMENT_CREATE, {"input": {"issueId": "a", "body": "x", "bogus": 1}},
         'Field "bogus" is not defined by type "CommentCreateInput".'),
        (ISSUE_COMMENTS, {"id": FIXTURE_ISSUE_ID, "first": "ten"},
         "Int cannot represent value"),
        ("{ issue(id: 5) { id } }", None, "String cannot represent value: 5"),
        ("{ viewer { id } ", None, "Syntax Error"),
        ("fragment F on User { id } { viewer { ...F } }", None, "Fragments are not supported"),
        ("subscription { viewer { id } }", None, "Subscriptions are not supported"),
    ],
)
async def test_fake_validates_operations_like_graphql(
    endpoint: str, http: httpx.AsyncClient, fake: FakeLinear,
    query: str, variables: Any, message: str,
) -> None:
    response = await post(http, endpoint, query, variables)
    assert response.status_code == 400
    messages = [e["message"] for e in response.json()["errors"]]
    assert any(message in m for m in messages), messages
    assert "data" not in response.json()
    assert fake.comments(FIXTURE_ISSUE_ID) == []


async def test_fake_answers_like_linear_on_errors(
    endpoint: str, http: httpx.AsyncClient, fake: FakeLinear
) -> None:
    anonymous = await post(http, endpoint, "{ viewer { id } }", authorization=None)
    assert anonymous.status_code == 400
    error = anonymous.json()["errors"][0]
    assert error["message"] == "Authentication required, not authenticated"
    assert error["extensions"]["code"] == "AUTHENTICATION_ERROR"
    assert error["extensions"]["statusCode"] == 401
    missing = await post(http, endpoint, COMMENT_UPDATE, {"id": "nope", "input": {"body": "x"}})
    assert missing.status_code == 200 and missing.json()["data"] is None
    assert missing.json()["errors"][0]["message"] == "Entity not found: Comment"
    assert missing.json()["errors"][0]["path"] == ["commentUpdate"]
    fake.fail_ratelimited("viewer")
    limited = await post(http, endpoint, "{ viewer { id } }")
    assert limited.status_code == 400
    extensions = limited.json()["errors"][0]["extensions"]
    assert (extensions["code"], extensions["statusCode"]) == ("RATELIMITED", 429)
    assert limited.headers["x-ratelimit-requests-remaining"] == "0"
    for response in (anonymous, missing, limited):
        assert {
            "x-ratelimit-requests-limit", "x-ratelimit-requests-remaining",
            "x-ratelimit-requests-reset", "x-ratelimit-complexity-remaining",
        } <= set(response.headers)
        assert int(response.headers["x-ratelimit-requests-reset"]) > NOW * 1000
    assert all(DEFAULT_API_KEY not in name for name in fake.requests)


async def test_fake_reports_complexity_and_spends_the_budget(
    endpoint: str, http: httpx.AsyncClient
) -> None:
    first = await post(http, endpoint, ISSUE_COMMENTS,
                       {"id": FIXTURE_ISSUE_ID, "first": 50, "after": None})
    second = await post(http, endpoint, "{ viewer { id } }")
    assert int(first.headers["x-complexity"]) > int(second.headers["x-complexity"]) >= 1
    assert first.headers["x-ratelimit-requests-remaining"] == "1499"
    assert second.headers["x-ratelimit-requests-remaining"] == "1498"


async def test_fake_injected_default_bodies_look_like_linear(
    endpoint: str, http: httpx.AsyncClient, fake: FakeLinear
) -> None:
    fake.fail_next("viewer", 500)
    fake.fail_next("viewer", 502)
    server = await post(http, endpoint, "{ viewer { id } }")
    assert server.json()["errors"][0]["extensions"]["code"] == "INTERNAL_SERVER_ERROR"
    proxy = await post(http, endpoint, "{ viewer { id } }")
    assert proxy.status_code == 502 and proxy.headers["content-type"].startswith("text/html")
    fine = await post(http, endpoint, "{ viewer { id name } }")
    assert fine.json() == {"data": {"viewer": {"id": fine.json()["data"]["viewer"]["id"],
                                               "name": DEFAULT_USER}}}


def test_fake_refuses_injection_for_unknown_operations(fake: FakeLinear) -> None:
    with pytest.raises(ValueError, match="unknown operation"):
        fake.fail_next("commentCreat", 500)
    with pytest.raises(ValueError, match="unknown operation"):
        fake.delay_next("issues", 1)
