"""Webhook endpoints: read raw bytes → verify → parse → store durably → answer.

Nothing remote happens here: the response waits only for the local commit
(group commit, ``ingest.GroupCommitter``). Bad input gets a clear status and
JSON body (401 signature, 400 malformed, 413 too large); a storage failure
gets 503 so the tracker records a failed delivery instead of a false success.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import orjson
import structlog
from prometheus_client import Counter
from starlette.requests import Request
from starlette.responses import Response

from service import metrics
from service.core.events import Decision, Ignored, Ping
from service.errors import PayloadTooLarge, SignatureError, StoreError, WebhookError
from service.logging import get_logger
from service.store.base import NewDelivery
from service.web.ingest import GroupCommitter

log = get_logger("service.web")

Parser = Callable[[Mapping[str, str], bytes], Decision]
"""Verifies and parses one tracker's delivery (headers, raw body) → decision."""


def json_response(body: dict[str, object], status: int = 200) -> Response:
    """A JSON response serialised with orjson (this is on every delivery's path)."""
    return Response(orjson.dumps(body), status, media_type="application/json")


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing more than ``limit`` bytes (by header, and while reading)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class WebhookEndpoint:
    """One tracker's ``POST /webhooks/{tracker}``."""

    def __init__(
        self, tracker: str, parse: Parser | None, committer: GroupCommitter, *,
        max_body_bytes: int, clock: Callable[[], float] = time.time,
    ) -> None:
        self.tracker = tracker
        self.parse = parse
        self.committer = committer
        self.max_body_bytes = max_body_bytes
        self.clock = clock
        self._counters: dict[tuple[str, str], Counter] = {}

    async def handle(self, request: Request) -> Response:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(tracker=self.tracker)
        if self.parse is None:
            return json_response({"error": "not_configured",
                                 "message": f"{self.tracker} is not configured"}, 404)
        try:
            body = await read_body(request, self.max_body_bytes)
            decision = self.parse(request.headers, body)
        except WebhookError as exc:
            return self._reject(exc)
        if isinstance(decision, Ping):
            self._count("ignored", "ping")
            log.info("webhook_ping")
            return json_response({"status": "pong"})
        if isinstance(decision, Ignored):
            self._count("ignored", "")
            log.info("webhook_ignored", reason=decision.reason)
            return json_response({"status": "ignored", "reason": decision.reason})
        event = decision.event
        structlog.contextvars.bind_contextvars(delivery_id=event.delivery_id)
        delivery = NewDelivery(tracker=self.tracker, delivery_id=event.delivery_id,
                               issue_key=event.issue_key, event_json=event.to_json(),
                               received_at=self.clock())
        try:
            is_new = await self.committer.submit(delivery)
        except StoreError as exc:
            self._count("rejected", "storage")
            log.error("webhook_not_stored", error=str(exc))
            return json_response({"error": "storage_unavailable",
                                 "message": "the delivery could not be stored; retry later"}, 503)
        outcome = "accepted" if is_new else "duplicate"
        self._count(outcome, "")
        log.info("webhook_" + outcome, issue=event.issue_key)
        return json_response({"status": outcome, "delivery_id": event.delivery_id})

    def _reject(self, exc: WebhookError) -> Response:
        self._count("rejected", exc.reason)
        if isinstance(exc, SignatureError):
            metrics.SIGNATURE_FAILURES.labels(self.tracker).inc()
        log.warning("webhook_rejected", reason=exc.reason, status=exc.status, error=str(exc))
        return json_response({"error": exc.reason, "message": str(exc)}, exc.status)

    def _count(self, outcome: str, reason: str) -> None:
        counter = self._counters.get((outcome, reason))
        if counter is None:
            counter = metrics.DELIVERIES.labels(self.tracker, outcome, reason)
            self._counters[(outcome, reason)] = counter
        counter.inc()
