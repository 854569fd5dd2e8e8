"""Liveness, readiness and metrics endpoints.

Liveness stays trivial. Readiness checks only what this process needs to do
its job: the database answers, its schema is current, the worker loop (when
this process runs one) is cycling, and the configured encryption keys open the
stored tokens (``vault``: fails only when tokens are stored and none of them is
under a configured key; one account's unreadable token shows in ``users list``
and the metrics instead). An outage of Coder, GitHub or Linear never fails
readiness, or Kubernetes would pull every replica; it shows in metrics.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service import metrics
from service.core.work import DELEGATION_STATES
from service.errors import StoreError
from service.logging import get_logger
from service.store.base import Store

log = get_logger("service.web")

Check = Callable[[], Awaitable[str | None]]
"""A readiness check: None when it passes, else what is wrong."""


async def healthz(_: Request) -> Response:
    """200 while the process serves."""
    return JSONResponse({"status": "ok"})


@dataclass
class Readiness:
    """``GET /readyz``: one entry per check; 200 if all pass, else 503 naming the failures."""

    store: Store
    worker_heartbeat: Callable[[], float] | None
    heartbeat_max_age: float
    #: ids of the configured encryption keys (``Vault.key_ids``)
    key_ids: Sequence[str] = ()
    clock: Callable[[], float] = time.time
    timeout: float = 2.0

    async def handle(self, _: Request) -> Response:
        checks: dict[str, Check] = {"storage": self._storage, "schema": self._schema,
                                    "vault": self._vault}
        if self.worker_heartbeat is not None:
            checks["worker"] = self._worker
        results: dict[str, dict[str, str]] = {}
        for name, check in checks.items():
            try:
                problem = await asyncio.wait_for(check(), self.timeout)
            except TimeoutError:
                log.warning("readiness_check_timeout", check=name, seconds=self.timeout)
                problem = f"no answer within {self.timeout:g} s"
            except Exception as exc:  # the answer names the check; the log has the error
                log.warning("readiness_check_failed", check=name,
                            error=f"{type(exc).__name__}: {exc}")
                problem = "the check failed; the log says why"
            results[name] = ({"status": "ok"} if problem is None
                             else {"status": "failing", "error": problem})
        failing = [name for name, result in results.items() if result["status"] != "ok"]
        body = {"status": "ok" if not failing else "failing", "failing": failing,
                "checks": results}
        return JSONResponse(body, 503 if failing else 200)

    async def _storage(self) -> str | None:
        await self.store.ping()
        return None

    async def _schema(self) -> str | None:
        current, latest = await self.store.schema_status()
        if current != latest:
            return f"schema version {current}, expected {latest}: run coder-bridge migrate"
        return None

    async def _vault(self) -> str | None:
        stored = await self.store.token_keys()
        if stored and not set(stored) & set(self.key_ids):
            return (f"no configured encryption key opens the {sum(stored.values())} stored "
                    f"token(s): they are under key(s) {', '.join(sorted(stored))}")
        return None

    async def _worker(self) -> str | None:
        assert self.worker_heartbeat is not None
        age = self.clock() - self.worker_heartbeat()
        if age > self.heartbeat_max_age:
            return f"worker loop last cycled {age:.0f}s ago"
        return None


@dataclass
class MetricsEndpoint:
    """``GET /metrics``: Prometheus text exposition of ``service.metrics.REGISTRY``.

    Queue depth, the oldest job's age and the delegations by state are read from the
    store at scrape time, so every replica reports the shared state as it is now. If
    the store does not answer (or not in time), the gauges keep their last values and
    the scrape still succeeds; any other error is a bug and fails the scrape.
    """

    store: Store
    #: ids of the configured encryption keys (``Vault.key_ids``)
    key_ids: Sequence[str] = ()
    clock: Callable[[], float] = time.time
    timeout: float = 2.0

    async def handle(self, _: Request) -> Response:
        try:
            depth, oldest = await asyncio.wait_for(
                self.store.queue_stats(now=self.clock()), self.timeout)
            by_state = await asyncio.wait_for(self.store.count_delegations(), self.timeout)
            token_keys = await asyncio.wait_for(self.store.token_keys(), self.timeout)
        except (StoreError, TimeoutError) as exc:
            log.warning("queue_stats_unavailable", error=str(exc))
        else:
            metrics.QUEUE_DEPTH.set(depth)
            metrics.QUEUE_OLDEST_AGE.set(oldest)
            for state in DELEGATION_STATES:
                metrics.DELEGATIONS_BY_STATE.labels(state).set(by_state.get(state, 0))
            metrics.TOKENS_UNDECRYPTABLE.set(sum(
                count for key_id, count in token_keys.items() if key_id not in self.key_ids))
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)
