"""The webhook edge as plain ASGI: routing, body limits, disconnects, failures.

Driven with hand-made ASGI messages (no server), so each test controls exactly
what the client sends and when it goes away.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from service.core.events import Decision, IssueEvent, Person, Ping, Trigger
from service.errors import MalformedPayload, StoreError
from service.store.base import NewDelivery
from service.web.webhooks import WebhookEndpoint, WebhookRouter, request_headers

LIMIT = 100


class FakeCommitter:
    """Records what would be stored; answers True (new) or raises ``error``."""

    def __init__(self, error: Exception | None = None) -> None:
        self.submitted: list[NewDelivery] = []
        self.error = error

    async def submit(self, delivery: NewDelivery) -> bool:
        if self.error is not None:
            raise self.error
        self.submitted.append(delivery)
        return True


def trigger(delivery_id: str = "d-1") -> Trigger:
    return Trigger(IssueEvent(
        tracker="github", delivery_id=delivery_id, issue_key="github:1:2", issue_id="3",
        number="2", title="t", body="", url="https://example.test/2", scope="o/r",
        author=Person("1", "a"), labeler=Person("1", "a")))


def scope(method: str = "POST", path: str = "/webhooks/github",
          headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "headers": headers or []}


class Client:
    """Feeds ``messages`` to the app one by one and records what it sends back."""

    def __init__(self, *messages: dict[str, Any]) -> None:
        self.messages = list(messages)
        self.received = 0
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        self.received += 1
        if not self.messages:
            return {"type": "http.disconnect"}
        return self.messages.pop(0)

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int | None:
        starts = [m for m in self.sent if m["type"] == "http.response.start"]
        return starts[0]["status"] if starts else None

    @property
    def json(self) -> Any:
        return orjson.loads(b"".join(m.get("body", b"") for m in self.sent
                                     if m["type"] == "http.response.body"))

    def header(self, name: bytes) -> bytes | None:
        start = next(m for m in self.sent if m["type"] == "http.response.start")
        return next((v for k, v in start["headers"] if k == name), None)


def body(data: bytes, more: bool = False) -> dict[str, Any]:
    return {"type": "http.request", "body": data, "more_body": more}


def endpoint(parse: Any, committer: FakeCommitter) -> WebhookEndpoint:
    return WebhookEndpoint("github", parse, committer,  # type: ignore[arg-type]
                           max_body_bytes=LIMIT, clock=lambda: 1234.5)


def accept_all(headers: Mapping[str, str], raw: bytes) -> Decision:
    return trigger(headers.get("x-github-delivery", "d-1"))


async def test_a_stored_delivery_is_answered_with_its_outcome_as_json() -> None:
    committer = FakeCommitter()
    client = Client(body(b'{"a":', more=True), body(b"1}"))
    await endpoint(accept_all, committer)(
        scope(headers=[(b"x-github-delivery", b"abc")]), client.receive, client.send)
    assert client.status == 200
    assert client.json == {"status": "accepted", "delivery_id": "abc"}
    assert client.header(b"content-type") == b"application/json"
    assert int(client.header(b"content-length") or 0) == len(orjson.dumps(client.json))
    assert [(d.delivery_id, d.received_at) for d in committer.submitted] == [("abc", 1234.5)]


async def test_a_declared_oversized_body_is_refused_before_it_is_read() -> None:
    committer = FakeCommitter()
    client = Client(body(b"x" * (LIMIT + 1)))
    headers = [(b"content-length", str(LIMIT + 1).encode())]
    await endpoint(accept_all, committer)(scope(headers=headers), client.receive, client.send)
    assert client.status == 413 and client.json["error"] == "too_large"
    assert client.received == 0 and committer.submitted == []


async def test_a_streamed_body_is_cut_off_as_soon_as_it_passes_the_limit() -> None:
    committer = FakeCommitter()
    chunk = b"x" * (LIMIT // 2 + 1)
    client = Client(body(chunk, more=True), body(chunk, more=True), body(chunk))
    await endpoint(accept_all, committer)(scope(), client.receive, client.send)
    assert client.status == 413
    assert client.received == 2 and committer.submitted == []


async def test_a_client_that_leaves_mid_body_gets_no_answer_and_nothing_is_stored() -> None:
    committer = FakeCommitter()
    client = Client(body(b"{", more=True))  # then http.disconnect
    with capture_logs() as logs:
        await endpoint(accept_all, committer)(scope(), client.receive, client.send)
    assert client.sent == [] and committer.submitted == []
    assert [entry["event"] for entry in logs] == ["webhook_abandoned"]


async def test_an_unexpected_error_is_logged_and_answered_500_without_details() -> None:
    def broken(headers: Mapping[str, str], raw: bytes) -> Decision:
        raise RuntimeError("secret internals")

    client = Client(body(b"{}"))
    with capture_logs() as logs:
        await endpoint(broken, FakeCommitter())(scope(), client.receive, client.send)
    assert client.status == 500
    assert client.json["error"] == "internal" and "secret" not in client.json["message"]
    assert any(entry["event"] == "webhook_failed" for entry in logs)


@pytest.mark.parametrize(
    ("error", "status", "reason"),
    [(MalformedPayload("body is not valid JSON"), 400, "malformed"),
     (StoreError("disk full"), 503, "storage_unavailable")],
)
async def test_refusals_name_their_reason(error: Exception, status: int, reason: str) -> None:
    def parse(headers: Mapping[str, str], raw: bytes) -> Decision:
        if isinstance(error, MalformedPayload):
            raise error
        return trigger()

    committer = FakeCommitter(error if isinstance(error, StoreError) else None)
    client = Client(body(b"{}"))
    await endpoint(parse, committer)(scope(), client.receive, client.send)
    assert client.status == status and client.json["error"] == reason


async def test_an_unconfigured_tracker_answers_404_without_reading_the_body() -> None:
    client = Client(body(b"{}"))
    await endpoint(None, FakeCommitter())(scope(), client.receive, client.send)
    assert client.status == 404 and client.json["error"] == "not_configured"
    assert client.received == 0


async def test_the_router_takes_only_webhook_paths_and_allows_only_post() -> None:
    forwarded: list[str] = []

    async def starlette(scope: Any, receive: Any, send: Any) -> None:
        forwarded.append(f"{scope['type']} {scope.get('path', '')}")

    def ping(headers: Mapping[str, str], raw: bytes) -> Decision:
        return Ping()

    router = WebhookRouter({"github": endpoint(ping, FakeCommitter())}, starlette)

    posted = Client(body(b"{}"))
    await router(scope(), posted.receive, posted.send)
    assert posted.json == {"status": "pong"}

    wrong_method = Client()
    await router(scope("GET"), wrong_method.receive, wrong_method.send)
    assert wrong_method.status == 405 and wrong_method.header(b"allow") == b"POST"

    for other in (scope("GET", "/healthz"), scope("POST", "/webhooks/gitlab"),
                  {"type": "lifespan"}):
        client = Client()
        await router(other, client.receive, client.send)
        assert client.sent == []
    assert forwarded == ["http /healthz", "http /webhooks/gitlab", "lifespan "]


def test_header_names_are_matched_in_lower_case_and_the_first_repeat_wins() -> None:
    headers = request_headers(scope(headers=[
        (b"X-Hub-Signature-256", b"sha256=first"), (b"x-hub-signature-256", b"sha256=second"),
        (b"x-github-event", b"issues")]))
    assert headers == {"x-hub-signature-256": "sha256=first", "x-github-event": "issues"}
    generated = request_headers(scope(headers=(pair for pair in [  # ASGI: any iterable
        (b"x-github-event", b"issues"), (b"X-GitHub-Event", b"ping")])))
    assert generated == {"x-github-event": "issues"}
