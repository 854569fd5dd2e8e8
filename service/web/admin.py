"""The admin API (interface §3, §7): what dashboards and runbooks read and steer.

``GET /admin/delegations`` and ``GET /admin/deliveries`` (newest first),
``POST /admin/deliveries/{id}/retry`` and ``POST /admin/reconcile``. Every request
carries ``Authorization: Bearer <security.admin_token>``, compared in constant time;
without it, or with a wrong one, 401 (counted). More than ``REQUESTS_PER_MINUTE`` a
minute from one client address is answered 429 with ``Retry-After``, before the token
is even looked at. Answers are JSON and never hold a token or a decrypted secret.
With ``security.admin_token`` empty the routes are not mounted: every ``/admin`` path
answers 404.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service import metrics
from service.config import Secret
from service.core.events import IssueEvent
from service.core.prompt import issue_reference
from service.core.work import STATE_FILTERS, Delegation
from service.logging import get_logger
from service.store.base import DeliveryRecord, Store
from service.web.limits import SlidingWindow
from service.worker.reconcile import Reconciler

log = get_logger("service.web.admin")

REQUESTS_PER_MINUTE = 60
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

Handler = Callable[[Request], Awaitable[Response]]


@dataclass
class AdminApi:
    """The admin endpoints; ``reconciler`` runs the sweeps ``POST /admin/reconcile`` starts."""

    store: Store
    token: Secret
    reconciler: Reconciler | None = None
    clock: Callable[[], float] = time.time
    window: SlidingWindow = field(default_factory=lambda: SlidingWindow(REQUESTS_PER_MINUTE))
    sweeping: asyncio.Task[Any] | None = None

    def routes(self) -> list[Route]:
        return [
            Route("/admin/delegations", self._guarded(self.delegations), methods=["GET"]),
            Route("/admin/deliveries", self._guarded(self.deliveries), methods=["GET"]),
            Route("/admin/deliveries/{delivery_id}/retry", self._guarded(self.retry),
                  methods=["POST"]),
            Route("/admin/reconcile", self._guarded(self.reconcile), methods=["POST"]),
        ]

    # -- endpoints ---------------------------------------------------------------------
    async def delegations(self, request: Request) -> Response:
        state = request.query_params.get("state", "all")
        if state not in STATE_FILTERS:
            return _error(400, "bad_request",
                          f"state must be one of {', '.join(STATE_FILTERS)}")
        limit = _limit(request)
        if limit is None:
            return _error(400, "bad_request", f"limit must be a number from 1 to {MAX_LIMIT}")
        chosen = STATE_FILTERS[state]
        rows = await self.store.list_delegations(
            states=sorted(chosen) if chosen is not None else None, limit=limit)
        return JSONResponse({"delegations": [_delegation(d, user) for d, user in rows]})

    async def deliveries(self, request: Request) -> Response:
        limit = _limit(request)
        if limit is None:
            return _error(400, "bad_request", f"limit must be a number from 1 to {MAX_LIMIT}")
        records = await self.store.list_deliveries(limit=limit)
        return JSONResponse({"deliveries": [delivery_json(r) for r in records]})

    async def retry(self, request: Request) -> Response:
        delivery_id = request.path_params["delivery_id"]
        if not await self.store.delivery_exists(delivery_id):
            return _error(404, "not_found", "no delivery has this id")
        if not await self.store.requeue_delivery(delivery_id, now=self.clock()):
            return _error(409, "busy", "the delivery's job is already queued or running")
        log.info("admin_retry", delivery_id=delivery_id)
        return JSONResponse({"status": "queued", "delivery_id": delivery_id}, status_code=202)

    async def reconcile(self, _: Request) -> Response:
        if self.reconciler is None or not self.reconciler.sources:
            return _error(409, "not_configured", "no tracker is configured to sweep")
        if self.sweeping is not None and not self.sweeping.done():
            return _error(409, "running", "a sweep started here is still running")
        self.sweeping = asyncio.create_task(self.reconciler.sweep(), name="admin-reconcile")
        log.info("admin_reconcile")
        return JSONResponse({"status": "started"}, status_code=202)

    # -- the guard ---------------------------------------------------------------------
    def _guarded(self, handler: Handler) -> Handler:
        async def guarded(request: Request) -> Response:
            now = self.clock()
            client = request.client.host if request.client else "unknown"
            if not self.window.allow(client, now):
                metrics.ADMIN_REQUESTS.labels("rate_limited").inc()
                wait = math.ceil(self.window.retry_after(client, now)) or 1
                return _error(429, "rate_limited",
                              f"more than {REQUESTS_PER_MINUTE} requests a minute",
                              headers={"Retry-After": str(wait)})
            if not self._authorized(request.headers.get("authorization", "")):
                metrics.ADMIN_REQUESTS.labels("unauthorized").inc()
                log.warning("admin_unauthorized", client=client)
                return _error(401, "unauthorized", "a valid admin bearer token is required",
                              headers={"WWW-Authenticate": 'Bearer realm="coder-bridge"'})
            metrics.ADMIN_REQUESTS.labels("ok").inc()
            response = await handler(request)
            response.headers["Cache-Control"] = "no-store"
            return response

        return guarded

    def _authorized(self, header: str) -> bool:
        scheme, _, given = header.partition(" ")
        expected = self.token.reveal().encode()
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                                  expected)


def _limit(request: Request) -> int | None:
    raw = request.query_params.get("limit", str(DEFAULT_LIMIT))
    return int(raw) if raw.isdigit() and 1 <= int(raw) <= MAX_LIMIT else None


def _error(status: int, error: str, message: str, *,
           headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": error, "message": message}, status_code=status,
                        headers=headers)


def _iso(timestamp: float | None) -> str | None:
    return (datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")
            .replace("+00:00", "Z") if timestamp is not None else None)


def _delegation(d: Delegation, coder_user: str | None) -> dict[str, Any]:
    trigger = IssueEvent.from_json(d.trigger_json) if d.trigger_json else None
    return {
        "issue": issue_reference(trigger) if trigger is not None else d.issue_key,
        "issue_key": d.issue_key, "issue_url": trigger.url if trigger is not None else None,
        "tracker": d.tracker, "generation": d.generation, "state": d.state,
        "coder_user": coder_user, "kind": d.task_kind, "url": d.task_url,
        "created_at": _iso(d.created_at), "updated_at": _iso(d.updated_at),
    }


def delivery_json(record: DeliveryRecord) -> dict[str, Any]:
    """A delivery as ``GET /admin/deliveries`` and ``deliveries list --json`` show it."""
    return {
        "tracker": record.tracker, "delivery_id": record.delivery_id,
        "issue": record.issue or None, "issue_key": record.issue_key, "kind": record.kind,
        "received_at": _iso(record.received_at), "job_status": record.job_status,
        "outcome": record.outcome, "attempts": record.attempts,
        "last_error": record.last_error, "delegation_state": record.delegation_state,
        "task_url": record.task_url,
    }
