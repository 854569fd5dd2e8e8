"""``POST /webhooks/{tracker}``: check the signature header → read the body → verify and
parse → store durably → answer.

One delivery, from the route to the commit, is ``WebhookEndpoint.handle`` top to
bottom. Nothing remote happens here: the answer waits only for the local commit
(``service.web.ingest.GroupCommitter``). Bad input gets a clear status and a JSON
body and loses nothing:

* 404 for a tracker that is not configured;
* 401 for a missing or malformed signature header, before the body is read; 401
  for a signature that matches no secret (or a stale Linear delivery);
* 413 for a body over ``server.max_body_bytes`` (by ``Content-Length``, or as soon
  as the streamed body passes it);
* 503 with ``Retry-After`` when the bodies being received at once would hold more
  than their memory budget, or when the delivery could not be stored;
* 400 for a body that is not the JSON the tracker sends.

Refusals that leave a body unread also close the connection. A request whose body
does not arrive in time is cut off by the connection guard
(``service.web.connections``); the endpoint then sees the client leave.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import orjson
import structlog
from prometheus_client import Counter
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from service import metrics
from service.core.events import Change, Comment, Decision, Ignored, Ping, Trigger
from service.errors import (
    PayloadTooLarge,
    ServerBusy,
    SignatureError,
    StoreError,
    WebhookError,
)
from service.logging import get_logger
from service.store.base import NewDelivery
from service.web.ingest import GroupCommitter

log = get_logger("service.web")

#: Seconds a tracker is asked to wait before sending again when the bridge is busy.
RETRY_AFTER_SECONDS = 5


#: The kind of job each decision that asks for work is stored as.
_KINDS: dict[type, str] = {Trigger: "trigger", Comment: "comment", Change: "change"}


@dataclass(frozen=True)
class Intake:
    """How one tracker's deliveries are checked and read.

    ``check_signature_header`` raises ``SignatureError`` when the signature header is
    missing or malformed (before the body is read); ``parse`` verifies the signature
    over the raw body and turns the delivery into a ``Decision``, raising
    ``WebhookError`` subclasses.
    """

    check_signature_header: Callable[[Mapping[str, str]], object]
    parse: Callable[[Mapping[str, str], bytes], Decision]


class BodyBudget:
    """The bytes that bodies still being received may hold in memory, all together.

    A flood of large, slowly sent bodies would otherwise hold the memory of every one
    of them; past the budget a body is refused (503) instead.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> bool:
        """Hold ``size`` more bytes if that stays within the limit."""
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give_back(self, size: int) -> None:
        self.held -= size


async def read_body(request: Request, *, limit: int, budget: BodyBudget) -> bytes:
    """The raw body, refusing more than ``limit`` bytes (by header, and while reading).

    Raises ``PayloadTooLarge`` as soon as the limit is passed, ``ServerBusy`` when the
    budget is spent, and Starlette's ``ClientDisconnect`` when the client leaves.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            if size + len(chunk) > limit:
                raise PayloadTooLarge(f"the body exceeds the limit of {limit} bytes")
            if not budget.take(len(chunk)):
                raise ServerBusy("too many deliveries are being received at once")
            size += len(chunk)
            chunks.append(chunk)
    finally:
        budget.give_back(size)
    return b"".join(chunks)


class WebhookEndpoint:
    """The endpoint of the ``POST /webhooks/{tracker}`` route of every tracker.

    An ASGI callable, so that Starlette's ``Route`` calls it as it is (its method
    check answers 405 as for any route) without the per-request wrapper it puts
    around plain functions: every delivery takes this path.
    """

    def __init__(
        self, intakes: Mapping[str, Intake | None], committer: GroupCommitter, *,
        max_body_bytes: int, clock: Callable[[], float] = time.time,
    ) -> None:
        """``intakes`` names every tracker the bridge knows; None where it is not
        configured (its deliveries are answered 404)."""
        self.intakes = intakes
        self.committer = committer
        self.max_body_bytes = max_body_bytes
        self.budget = BodyBudget(max(4 * max_body_bytes, 8 * 1024 * 1024))
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.handle(Request(scope, receive))
        await response(scope, receive, send)

    async def handle(self, request: Request) -> Response:
        """Answer one delivery; an unexpected error is logged and answered 500."""
        tracker = request.path_params["tracker"]
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(tracker=tracker)
        intake = self.intakes.get(tracker)
        if intake is None:
            return _json(404, error="not_configured", message=f"{tracker} is not configured")
        try:
            return await self._receive(tracker, intake, request)
        except WebhookError as exc:
            return self._reject(tracker, exc)
        except ClientDisconnect:
            log.info("webhook_abandoned", note="the client disconnected before the body ended")
            return _NoAnswer()
        except Exception:
            log.exception("webhook_failed")
            return _json(500, error="internal", message="unexpected error; retry later")

    async def _receive(self, tracker: str, intake: Intake, request: Request) -> Response:
        headers = request.headers
        intake.check_signature_header(headers)
        body = await read_body(request, limit=self.max_body_bytes, budget=self.budget)
        decision = intake.parse(headers, body)
        if isinstance(decision, Ping):
            _count(tracker, "ignored", "ping")
            log.info("webhook_ping")
            return _json(200, status="pong")
        if isinstance(decision, Ignored):
            _count(tracker, "ignored", decision.code)
            log.info("webhook_ignored", reason=decision.reason)
            return _json(200, status="ignored", reason=decision.reason)
        event = decision.event
        structlog.contextvars.bind_contextvars(delivery_id=event.delivery_id)
        delivery = NewDelivery(tracker=tracker, delivery_id=event.delivery_id,
                               issue_key=event.issue_key, event_json=event.to_json(),
                               received_at=self.clock(),
                               body_sha256=hashlib.sha256(body).hexdigest(),
                               kind=_KINDS[type(decision)])
        try:
            is_new = await self.committer.submit(delivery)
        except StoreError as exc:
            _count(tracker, "rejected", "storage")
            log.error("webhook_not_stored", error=str(exc))
            return _json(503, {"retry-after": str(RETRY_AFTER_SECONDS)},
                         error="storage_unavailable",
                         message="the delivery could not be stored; retry later")
        outcome = "accepted" if is_new else "duplicate"
        _count(tracker, outcome, "")
        log.info("webhook_" + outcome, issue=event.issue_key)
        return _json(200, status=outcome, delivery_id=event.delivery_id)

    def _reject(self, tracker: str, exc: WebhookError) -> Response:
        _count(tracker, "rejected", exc.reason)
        if isinstance(exc, SignatureError):
            metrics.SIGNATURE_FAILURES.labels(tracker).inc()
        log.warning("webhook_rejected", reason=exc.reason, status=exc.status, error=str(exc))
        headers = {}
        if isinstance(exc, ServerBusy | PayloadTooLarge):
            headers["connection"] = "close"  # the rest of its body is not read
        if isinstance(exc, ServerBusy):
            headers["retry-after"] = str(RETRY_AFTER_SECONDS)
        return _json(exc.status, headers, error=exc.reason, message=str(exc))


def _json(status: int, headers: Mapping[str, str] | None = None, /, **body: object) -> Response:
    # orjson: an answer per delivery; Starlette's JSONResponse renders with json.dumps.
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


@functools.cache
def _counter(tracker: str, outcome: str, reason: str) -> Counter:
    return metrics.DELIVERIES.labels(tracker, outcome, reason)


def _count(tracker: str, outcome: str, reason: str) -> None:
    _counter(tracker, outcome, reason).inc()


class _NoAnswer(Response):
    """What a client that already left gets: nothing."""

    def __init__(self) -> None:
        super().__init__(status_code=400)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        return None


__all__ = ["BodyBudget", "Intake", "WebhookEndpoint", "read_body"]
