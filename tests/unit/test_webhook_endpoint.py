"""The webhook route: signature header first, body limits, deadlines, budget, failures.

Driven with hand-made ASGI messages through the Starlette app (no server), so each
test controls exactly what the client sends and when it goes away.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from typing import Any

import orjson
import pytest
from starlette.applications import Starlette
from starlette.routing import Route
from structlog.testing import capture_logs

from service.core.events import Decision, IssueEvent, Person, Ping, Trigger
from service.errors import MalformedPayload, SignatureError, StoreError
from service.store.base import NewDelivery
from service.web.webhooks import Intake, WebhookEndpoint

LIMIT = 100
SIGNED = [(b"x-signature", b"ok")]


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


def check_signature_header(headers: Mapping[str, str]) -> None:
    if "x-signature" not in headers:
        raise SignatureError("missing X-Signature header")


def accept_all(headers: Mapping[str, str], raw: bytes) -> Decision:
    return trigger(headers.get("x-github-delivery", "d-1"))


def app(parse: Any, committer: FakeCommitter, *, configured: bool = True) -> Starlette:
    intake = Intake(check_signature_header, parse) if configured else None
    endpoint = WebhookEndpoint({"github": intake, "linear": None},
                               committer,  # type: ignore[arg-type]
                               max_body_bytes=LIMIT, clock=lambda: 1234.5)
    return Starlette(routes=[Route("/webhooks/{tracker}", endpoint, methods=["POST"])])


def scope(method: str = "POST", path: str = "/webhooks/github",
          headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    return {"type": "http", "http_version": "1.1", "method": method, "path": path,
            "raw_path": path.encode(), "root_path": "", "scheme": "http", "query_string": b"",
            "headers": SIGNED if headers is None else headers, "server": ("test", 80)}


class Client:
    """Feeds ``messages`` to the app one by one and records what it sends back; with
    ``stall``, waits for ever once the messages run out (a client that sends no more)."""

    def __init__(self, *messages: dict[str, Any], stall: bool = False) -> None:
        self.messages = list(messages)
        self.stall = stall
        self.received = 0
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        self.received += 1
        if not self.messages:
            if self.stall:
                await asyncio.Event().wait()
            return {"type": "http.disconnect"}
        return self.messages.pop(0)

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    async def call(self, asgi: Starlette, request: dict[str, Any]) -> Client:
        await asgi(request, self.receive, self.send)
        return self

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


async def test_a_stored_delivery_is_answered_with_its_outcome_as_json() -> None:
    committer = FakeCommitter()
    client = await Client(body(b'{"a":', more=True), body(b"1}")).call(
        app(accept_all, committer), scope(headers=[*SIGNED, (b"x-github-delivery", b"abc")]))
    assert client.status == 200
    assert client.json == {"status": "accepted", "delivery_id": "abc"}
    assert client.header(b"content-type") == b"application/json"
    assert int(client.header(b"content-length") or 0) == len(orjson.dumps(client.json))
    assert [(d.delivery_id, d.received_at) for d in committer.submitted] == [("abc", 1234.5)]
    assert committer.submitted[0].body_sha256 == hashlib.sha256(b'{"a":1}').hexdigest()


async def test_a_missing_signature_header_is_refused_before_the_body_is_read() -> None:
    committer = FakeCommitter()
    client = await Client(body(b"{}")).call(app(accept_all, committer), scope(headers=[]))
    assert client.status == 401 and client.json["error"] == "signature"
    assert client.received == 0 and committer.submitted == []


async def test_a_declared_oversized_body_is_refused_before_it_is_read() -> None:
    committer = FakeCommitter()
    headers = [*SIGNED, (b"content-length", str(LIMIT + 1).encode())]
    client = await Client(body(b"x" * (LIMIT + 1))).call(app(accept_all, committer),
                                                         scope(headers=headers))
    assert client.status == 413 and client.json["error"] == "too_large"
    assert client.received == 0 and committer.submitted == []
    assert client.header(b"connection") == b"close"


async def test_a_streamed_body_is_cut_off_as_soon_as_it_passes_the_limit() -> None:
    committer = FakeCommitter()
    chunk = b"x" * (LIMIT // 2 + 1)
    client = await Client(body(chunk, more=True), body(chunk, more=True), body(chunk)).call(
        app(accept_all, committer), scope())
    assert client.status == 413
    assert client.received == 2 and committer.submitted == []


async def test_bodies_past_the_memory_budget_are_refused_with_retry_after() -> None:
    committer = FakeCommitter()
    asgi = app(accept_all, committer)
    endpoint = asgi.routes[0].endpoint  # type: ignore[attr-defined]
    endpoint.budget.limit = 150  # as if other bodies in flight held the rest
    first = Client(body(b"x" * 80, more=True), stall=True)
    pending = asyncio.ensure_future(first.call(asgi, scope()))
    await asyncio.sleep(0.01)
    assert endpoint.budget.held == 80  # the first body, still arriving, holds its bytes
    second = await Client(body(b"y" * 80)).call(asgi, scope())
    assert second.status == 503 and second.json["error"] == "busy"
    assert second.header(b"retry-after") is not None
    assert second.header(b"connection") == b"close"
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    assert endpoint.budget.held == 0  # given back, whatever ended the read
    assert committer.submitted == []


async def test_a_client_that_leaves_mid_body_gets_no_answer_and_nothing_is_stored() -> None:
    committer = FakeCommitter()
    with capture_logs() as logs:
        client = await Client(body(b"{", more=True)).call(app(accept_all, committer), scope())
    assert client.sent == [] and committer.submitted == []
    assert [entry["event"] for entry in logs] == ["webhook_abandoned"]


async def test_an_unexpected_error_is_logged_and_answered_500_without_details() -> None:
    def broken(headers: Mapping[str, str], raw: bytes) -> Decision:
        raise RuntimeError("secret internals")

    with capture_logs() as logs:
        client = await Client(body(b"{}")).call(app(broken, FakeCommitter()), scope())
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
    client = await Client(body(b"{}")).call(app(parse, committer), scope())
    assert client.status == status and client.json["error"] == reason


async def test_an_unconfigured_tracker_answers_404_without_reading_the_body() -> None:
    for asgi, path in [(app(accept_all, FakeCommitter(), configured=False), "/webhooks/github"),
                       (app(accept_all, FakeCommitter()), "/webhooks/linear"),
                       (app(accept_all, FakeCommitter()), "/webhooks/gitlab")]:
        client = await Client(body(b"{}")).call(asgi, scope(path=path))
        assert client.status == 404 and client.json["error"] == "not_configured"
        assert client.received == 0


async def test_webhooks_are_posted_and_other_methods_are_refused_as_everywhere() -> None:
    def ping(headers: Mapping[str, str], raw: bytes) -> Decision:
        return Ping()

    asgi = app(ping, FakeCommitter())
    posted = await Client(body(b"{}")).call(asgi, scope())
    assert posted.json == {"status": "pong"}
    wrong_method = await Client().call(asgi, scope("GET"))
    assert wrong_method.status == 405 and wrong_method.header(b"allow") == b"POST"
    slash = await Client(body(b"{}")).call(asgi, scope(path="/webhooks/github/"))
    assert slash.status == 307 and slash.header(b"location", ) == b"http://test/webhooks/github"
