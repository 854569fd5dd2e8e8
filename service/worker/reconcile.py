"""Reconciliation: labelled issues whose webhook never arrived (interface §4.6).

GitHub does not redeliver a delivery that failed, and nothing is delivered while the
bridge is down. A sweep asks each tracker for open issues carrying the trigger label,
updated within ``reconcile.lookback`` (``GitHubSweep``, ``LinearSweep``), and stores
each one that has no delegation as the ``labeled`` delivery it missed: delivery id
``reconcile:<issue key>``, so that two sweeps (or two replicas) finding the same issue
store it once, and its job then runs like any trigger. An issue that has a
delegation, running or ended, is never triggered again by a sweep.

With a GitHub App, a sweep first has the App webhook's failed deliveries that the search
cannot find (comments, unlabels, closes) sent again (``redeliver_failed``).

Sweeps run every ``reconcile.interval`` seconds on one replica at a time (a lease in
the store; the interval counts from the last sweep any replica finished), and on
demand (``coder-bridge reconcile``, ``POST /admin/reconcile``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

import msgspec

from service import metrics
from service.core.events import IssueEvent
from service.core.prompt import issue_reference
from service.errors import PacingDeferred, RemoteError
from service.logging import get_logger
from service.store.base import NewDelivery, Store

log = get_logger("service.worker")

SWEEP = "reconcile"
#: How long a sweep may run before another replica may take over.
LEASE_SECONDS = 900.0
#: How often a replica looks whether a sweep is due.
POLL_SECONDS = 60.0


class Source(Protocol):
    """Where a tracker's labelled open issues come from (``GitHubSweep``, ``LinearSweep``)."""

    async def labelled_issues(self, *, since: float) -> list[IssueEvent]: ...

    async def redeliver_failed(self, *, since: float) -> int: ...


@dataclass(frozen=True)
class Finding:
    """One labelled issue a sweep found, and what it did about it."""

    tracker: str
    issue: str
    outcome: Literal["queued", "delegated", "already_queued"]


class Reconciler:
    """Runs sweeps: on demand (``sweep``) and every ``interval`` seconds (``start``)."""

    def __init__(self, store: Store, sources: Mapping[str, Source], *, lookback: float,
                 owner: str, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.sources = sources
        self.lookback = lookback
        self.owner = owner
        self.clock = clock
        self._task: asyncio.Task[None] | None = None

    async def sweep(self) -> list[Finding] | None:
        """One sweep now; None when another process is sweeping."""
        now = self.clock()
        if not await self.store.claim_sweep(SWEEP, self.owner, now=now, lease=LEASE_SECONDS):
            metrics.RECONCILE_SWEEPS.labels("busy").inc()
            log.info("reconcile_busy", note="another process is sweeping")
            return None
        findings: list[Finding] = []
        try:
            for tracker, source in self.sources.items():
                findings += await self._sweep_tracker(tracker, source, since=now - self.lookback)
        finally:
            await self.store.finish_sweep(SWEEP, self.owner, now=self.clock())
        queued = sum(1 for f in findings if f.outcome == "queued")
        metrics.RECONCILE_SWEEPS.labels("done").inc()
        log.info("reconcile_done", found=len(findings), queued=queued,
                 seconds=round(self.clock() - now, 2))
        return findings

    async def _sweep_tracker(self, tracker: str, source: Source, *,
                             since: float) -> list[Finding]:
        try:
            redelivered = await source.redeliver_failed(since=since)
        except (RemoteError, PacingDeferred) as exc:
            log.warning("reconcile_redelivery_failed", tracker=tracker, error=str(exc),
                        note="the next sweep tries again; the search goes on")
        else:
            if redelivered:
                metrics.RECONCILE_REDELIVERED.labels(tracker).inc(redelivered)
                log.info("reconcile_redelivered", tracker=tracker, deliveries=redelivered)
        try:
            events = await source.labelled_issues(since=since)
        except (RemoteError, PacingDeferred) as exc:
            metrics.RECONCILE_SWEEPS.labels("failed").inc()
            log.warning("reconcile_failed", tracker=tracker, error=str(exc),
                        note="the next sweep tries again")
            return []
        findings = []
        for event in events:
            outcome = await self._handle(event)
            metrics.RECONCILE_FOUND.labels(tracker, outcome).inc()
            log.info("reconcile_found", tracker=tracker, issue=event.issue_key, outcome=outcome)
            findings.append(Finding(tracker, issue_reference(event), outcome))
        return findings

    async def _handle(self, event: IssueEvent) -> Literal["queued", "delegated",
                                                          "already_queued"]:
        if await self.store.current_delegation(event.issue_key) is not None:
            return "delegated"
        delivery_id = f"reconcile:{event.issue_key}"
        missed = msgspec.structs.replace(event, delivery_id=delivery_id)
        [new] = await self.store.accept([NewDelivery(
            tracker=event.tracker, delivery_id=delivery_id, issue_key=event.issue_key,
            event_json=missed.to_json(), received_at=self.clock(),
            body_sha256=hashlib.sha256(delivery_id.encode()).hexdigest())])
        return "queued" if new else "already_queued"

    # -- the periodic sweep ----------------------------------------------------------
    def start(self, interval: float) -> None:
        """Sweep every ``interval`` seconds in the background (0: never)."""
        if interval > 0 and self.sources:
            self._task = asyncio.create_task(self._run(interval), name="reconcile")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self, interval: float) -> None:
        while True:
            try:
                last = await self.store.last_sweep(SWEEP)
                if last is None or self.clock() - last >= interval:
                    await self.sweep()
            except Exception:
                log.exception("reconcile_round_failed")
            await asyncio.sleep(min(POLL_SECONDS, interval))
