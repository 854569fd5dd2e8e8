"""decipher_response and CoderClient: every Coder error body maps to the right class."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import respx

from service.coder.client import CoderClient, decipher_response, parse_retry_after
from service.errors import (
    Conflict,
    NotFound,
    PermanentError,
    RateLimited,
    RemoteError,
    RouteNotFound,
    TokenRejected,
    TransientError,
)

BASE = "https://coder.example.com"
TOKEN = "abcde12345-AbCdEfGhIjKlMnOpQrStUv"
SIGNED_OUT = "You are signed out or your session has expired. Please sign in again to continue."


def answer(
    status: int, body: Any = None, *, text: str | None = None, **headers: str
) -> httpx.Response:
    """A response to a request that carried TOKEN, as the client would get it."""
    request = httpx.Request(
        "POST", f"{BASE}/api/v2/tasks/me", headers={"Coder-Session-Token": TOKEN}
    )
    if text is not None:
        return httpx.Response(status, text=text, headers=headers, request=request)
    if body is None:
        return httpx.Response(status, headers=headers, request=request)
    return httpx.Response(status, json=body, headers=headers, request=request)


def error_of(response: httpx.Response) -> RemoteError:
    with pytest.raises(RemoteError) as info:
        decipher_response(response)
    return info.value


# --- success ------------------------------------------------------------------------------------


def test_2xx_json_is_returned_decoded() -> None:
    assert decipher_response(answer(201, {"id": "k", "owner_name": "alice"})) == {
        "id": "k",
        "owner_name": "alice",
    }


@pytest.mark.parametrize("status", [200, 202, 204])
def test_2xx_without_body_is_none(status: int) -> None:
    assert decipher_response(answer(status)) is None


def test_2xx_that_is_not_json_is_permanent_and_says_why() -> None:
    response = answer(200, text="<html>Sign in to Okta</html>", **{"Content-Type": "text/html"})
    err = error_of(response)
    assert type(err) is PermanentError
    assert "not JSON (text/html)" in err.message
    assert "Okta" not in err.message


# --- 401 ----------------------------------------------------------------------------------------

UNAUTHORIZED_BODIES = [
    {
        "message": SIGNED_OUT,
        "detail": 'Cookie "coder_session_token" or query parameter must be provided.',
    },
    {
        "message": SIGNED_OUT,
        "detail": "Invalid API key format: incorrect amount of API key parts, expected 2 got 1",
    },
    {"message": SIGNED_OUT, "detail": "API key is invalid."},
    {"message": SIGNED_OUT, "detail": "API key secret is invalid."},
    {"message": SIGNED_OUT, "detail": 'API key expired at "2020-01-01 00:00:00 +0000 UTC".'},
    {"message": 'User is not active (status = "suspended"). Contact an admin to reactivate.'},
]


@pytest.mark.parametrize("body", UNAUTHORIZED_BODIES)
def test_every_401_body_is_token_rejected_with_coder_words(body: dict[str, str]) -> None:
    err = error_of(answer(401, body))
    assert type(err) is TokenRejected
    assert err.status == 401
    assert body["message"] in err.message
    assert body.get("detail", "") in err.message


# --- 404 ----------------------------------------------------------------------------------------


def test_404_route_not_found_is_route_not_found() -> None:
    err = error_of(answer(404, {"message": "Route not found."}))
    assert type(err) is RouteNotFound


def test_404_about_an_object_is_not_found_never_route() -> None:
    body = {"message": "Resource not found or you do not have access to this resource"}
    err = error_of(answer(404, body))
    assert type(err) is NotFound
    assert err.message == body["message"] + "."


def test_404_with_a_similar_message_is_not_a_route_miss() -> None:
    err = error_of(answer(404, {"message": "Route not found. Try again"}))
    assert type(err) is NotFound


def test_404_without_json_is_not_found() -> None:
    err = error_of(answer(404, text="404 page not found"))
    assert type(err) is NotFound


# --- 409, 429, 5xx, other 4xx -------------------------------------------------------------------


def test_409_is_conflict_and_names_the_invalid_field() -> None:
    body = {
        "message": 'Workspace "cb-0123456789abcdef" already exists.',
        "validations": [
            {"field": "name", "detail": "This value is already in use and should be unique."}
        ],
    }
    err = error_of(answer(409, body))
    assert type(err) is Conflict
    assert err.message == (
        'Workspace "cb-0123456789abcdef" already exists. '
        "Invalid fields: name: This value is already in use and should be unique."
    )


RATE_LIMIT = {"message": "You've been rate limited for sending more than 512 requests in 1m0s."}


def test_429_with_retry_after_carries_the_seconds() -> None:
    err = error_of(answer(429, RATE_LIMIT, **{"Retry-After": "42"}))
    assert isinstance(err, RateLimited)
    assert isinstance(err, TransientError)
    assert err.retry_after == 42.0
    assert err.message == RATE_LIMIT["message"]


def test_429_without_retry_after_has_none() -> None:
    err = error_of(answer(429, RATE_LIMIT))
    assert isinstance(err, RateLimited)
    assert err.retry_after is None


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("7", 7.0),
        (" 1.5 ", 1.5),
        ("Wed, 21 Oct 2026 07:28:00 GMT", None),
        ("-3", None),
        ("nan", None),
    ],
)
def test_retry_after_accepts_only_seconds(value: str, seconds: float | None) -> None:
    assert parse_retry_after(value) == seconds


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, {"message": "Internal error creating task.", "detail": "pq: connection reset"}),
        (502, {"message": "Failed to reach task app endpoint."}),
        (503, None),
        (408, None),
    ],
)
def test_server_side_failures_are_transient(status: int, body: Any) -> None:
    err = error_of(answer(status, body))
    assert type(err) is TransientError
    assert err.status == status


def test_502_html_page_from_a_proxy_gives_a_plain_message() -> None:
    err = error_of(answer(502, text="<html><body><h1>502 Bad Gateway</h1>nginx</body></html>"))
    assert type(err) is TransientError
    assert err.message == "the server answered HTTP 502 (Bad Gateway) without an explanation"


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (
            400,
            {
                "message": "Unable to create a Task with the provided name.",
                "detail": "must be <= 32 characters",
            },
        ),
        (400, {"message": 'Template does not have a valid "coder_ai_task" resource.'}),
        (403, {"message": "Forbidden."}),
        (413, None),
    ],
)
def test_other_4xx_are_permanent(status: int, body: Any) -> None:
    err = error_of(answer(status, body))
    assert type(err) is PermanentError
    if body:
        assert body["message"] in err.message
        assert body.get("detail", "") in err.message


def test_str_of_an_error_names_service_and_status() -> None:
    err = error_of(answer(400, {"message": "Display name must be 64 characters or less."}))
    assert str(err) == "coder: Display name must be 64 characters or less. (HTTP 400)"


def test_a_body_that_echoes_the_token_is_redacted() -> None:
    body = {"message": SIGNED_OUT, "detail": f"Invalid API key format: {TOKEN}"}
    err = error_of(answer(401, body))
    assert TOKEN not in err.message
    assert TOKEN.split("-")[1] not in err.message
    assert "[redacted]" in err.message


# --- CoderClient over respx ---------------------------------------------------------------------


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def coder(http: httpx.AsyncClient) -> CoderClient:
    return CoderClient(BASE + "/", TOKEN, http=http, timeout=5.0)


@respx.mock
async def test_request_sends_token_and_accept_and_learns_version(coder: CoderClient) -> None:
    route = respx.get(f"{BASE}/api/v2/users/me").respond(
        200,
        json={"id": "u1", "username": "alice", "organization_ids": ["o1"], "extra": 1},
        headers={"X-Coder-Build-Version": "v2.36.1"},
    )
    user = await coder.fetch_me()
    assert (user.id, user.username, user.organization_ids) == ("u1", "alice", ("o1",))
    sent = route.calls.last.request
    assert sent.headers["Coder-Session-Token"] == TOKEN
    assert sent.headers["Accept"] == "application/json"
    assert coder.build_version == "v2.36.1"


@respx.mock
async def test_request_passes_params_and_json(coder: CoderClient) -> None:
    route = respx.post(f"{BASE}/api/v2/tasks", params={"q": "owner:me"}).respond(200, json=[])
    assert (
        await coder.request("POST", "/api/v2/tasks", json={"a": 1}, params={"q": "owner:me"}) == []
    )
    assert route.calls.last.request.content == b'{"a":1}'


@respx.mock
async def test_version_is_learned_from_error_answers_too(coder: CoderClient) -> None:
    respx.get(f"{BASE}/api/v2/tasks").respond(
        404, json={"message": "Route not found."}, headers={"X-Coder-Build-Version": "v2.38.0"}
    )
    with pytest.raises(RouteNotFound):
        await coder.request("GET", "/api/v2/tasks")
    assert coder.build_version == "v2.38.0"


@respx.mock
async def test_fetch_me_without_username_is_permanent(coder: CoderClient) -> None:
    respx.get(f"{BASE}/api/v2/users/me").respond(200, json={"id": "u1"})
    with pytest.raises(PermanentError, match="username"):
        await coder.fetch_me()


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ReadTimeout("timed out"),
        httpx.ConnectTimeout("timed out"),
        httpx.ConnectError("[Errno 111] Connection refused"),
        httpx.RemoteProtocolError("peer closed connection"),
        httpx.ReadError("reset"),
    ],
)
@respx.mock
async def test_transport_failures_are_transient_with_plain_words(
    coder: CoderClient, exc: Exception
) -> None:
    respx.get(f"{BASE}/api/v2/users/me").mock(side_effect=exc)
    with pytest.raises(TransientError) as info:
        await coder.fetch_me()
    assert info.value.status is None
    assert "coder.example.com" in info.value.message
    assert str(exc) not in info.value.message


@respx.mock
async def test_timeout_message_says_it_did_not_answer(coder: CoderClient) -> None:
    respx.get(f"{BASE}/api/v2/users/me").mock(side_effect=httpx.ReadTimeout("x"))
    with pytest.raises(TransientError, match="did not answer in time"):
        await coder.fetch_me()


async def test_unusable_url_is_permanent(http: httpx.AsyncClient) -> None:
    client = CoderClient("ftp://coder.example.com", TOKEN, http=http, timeout=1.0)
    with pytest.raises(PermanentError, match="not an http"):
        await client.fetch_me()


def test_repr_hides_the_token(coder: CoderClient) -> None:
    assert TOKEN not in repr(coder)
    assert TOKEN.split("-")[1] not in repr(coder)
    assert "hidden" in repr(coder)


ALL_FAILURES: list[tuple[int, Any]] = [
    (401, {"message": SIGNED_OUT, "detail": f"Invalid API key format: {TOKEN}"}),
    (404, {"message": f"Resource {TOKEN} not found"}),
    (404, {"message": "Route not found."}),
    (409, {"message": "conflict", "validations": [{"field": "token", "detail": TOKEN}]}),
    (429, RATE_LIMIT),
    (500, {"message": "Internal error.", "detail": f"bad header {TOKEN}"}),
    (400, {"message": "Request body must be valid JSON.", "detail": TOKEN}),
    (502, None),
]


@pytest.mark.parametrize(("status", "body"), ALL_FAILURES)
@respx.mock
async def test_token_never_appears_in_errors(coder: CoderClient, status: int, body: Any) -> None:
    respx.get(f"{BASE}/api/v2/users/me").respond(status, json=body)
    with pytest.raises(RemoteError) as info:
        await coder.fetch_me()
    err = info.value
    for text in (str(err), repr(err), err.message, *map(str, err.args)):
        assert TOKEN not in text
        assert TOKEN.split("-")[1] not in text
