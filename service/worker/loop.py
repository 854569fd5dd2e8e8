"""The worker loop: claim jobs under a lease, run them concurrently, apply their results.

A claimed job's lease is renewed while it runs, so a slow Coder call does not
let another replica take it. The worker also registers itself in the store and
beats every ``HEARTBEAT_SECONDS``; each beat takes back the jobs of workers that
stopped beating ``STALE_AFTER_SECONDS`` ago (killed, or their host gone), so
their jobs run again within seconds rather than after their lease. With SQLite
(one process per database) a starting worker takes back at once every job the
process before it held. ``stop()`` stops claiming, gives running jobs ``grace``
seconds, then cancels and releases the rest, so nothing acknowledged is lost.
The worker also runs the status rounds (``service.worker.sync``), which queue check
jobs for running work that changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import time
from collections.abc import Callable

import structlog

from service import metrics
from service.config import WorkerConfig
from service.core.retry import RetryIn, decide_retry
from service.logging import get_logger
from service.store.base import Job, Store
from service.worker.delegator import Delegator
from service.worker.results import Deferred, Done, Failed, JobResult, RetryLater
from service.worker.sync import StatusRounds

log = get_logger("service.worker")

HEARTBEAT_SECONDS = 2.0
#: A worker silent this long is taken for dead: its running jobs are queued again.
STALE_AFTER_SECONDS = 10.0


def worker_id() -> str:
    """A name unique to this process, recorded as the lease owner."""
    return f"{socket.gethostname()}:{os.getpid()}:{random.getrandbits(32):08x}"


class Worker:
    """Claims and runs jobs until stopped. ``heartbeat`` is the time of the last loop cycle."""

    def __init__(
        self,
        *,
        store: Store,
        delegator: Delegator,
        config: WorkerConfig,
        owner: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.delegator = delegator
        self.config = config
        self.owner = owner or worker_id()
        self.clock = clock
        self.heartbeat = 0.0
        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        self._running: dict[int, asyncio.Task[None]] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._beat_task: asyncio.Task[None] | None = None
        self.rounds = StatusRounds(delegator.ctx, owner=self.owner, on_queued=self.wake,
                                   clock=clock)

    def wake(self) -> None:
        """New work was enqueued: look for it now instead of at the next poll."""
        self._wakeup.set()

    async def start(self) -> None:
        """Register in the store (taking back what a dead predecessor held, where the
        store says so), then run the loop and the heartbeat in the background."""
        self._stopping.clear()
        taken = await self.store.register_worker(self.owner, now=self.clock())
        if taken:
            log.warning("jobs_taken_back", jobs=taken,
                        note="held by the process before this one, which did not stop cleanly")
        self._loop_task = asyncio.create_task(self.run(), name="worker-loop")
        self._beat_task = asyncio.create_task(self._beat(), name="worker-heartbeat")
        self.rounds.start()

    @property
    def alive(self) -> bool:
        """True while the loop task runs."""
        return self._loop_task is not None and not self._loop_task.done()

    async def run(self) -> None:
        """Claim and dispatch until ``stop()``; a failing cycle is logged and retried."""
        log.info("worker_started", owner=self.owner, concurrency=self.config.concurrency)
        while not self._stopping.is_set():
            try:
                await self._cycle()
            except Exception:
                log.exception("worker_cycle_failed")
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self.config.poll_interval)

    async def _cycle(self) -> None:
        now = self.clock()
        self.heartbeat = now
        metrics.WORKER_HEARTBEAT.set(now)
        free = self.config.concurrency - len(self._running)
        if free <= 0:
            return
        jobs = await self.store.claim(self.owner, now=now,
                                      lease_seconds=self.config.lease_seconds, limit=free)
        for job in jobs:
            task = asyncio.create_task(self._run_job(job), name=f"job-{job.id}")
            self._running[job.id] = task
        if len(jobs) == free:
            self._wakeup.set()  # there may be more: claim again as soon as a slot frees

    async def _run_job(self, job: Job) -> None:
        structlog.contextvars.bind_contextvars(
            job_id=job.id, attempt=job.attempts, delivery_id=job.delivery_id,
            tracker=job.tracker)
        metrics.JOB_ATTEMPTS.inc()
        log.info("job_claimed")
        renewer = asyncio.create_task(self._renew(job))
        try:
            result = await self._result_of(job)
            await self._apply(job, result)
        except asyncio.CancelledError:
            await self._release(job)
            raise
        except Exception:
            log.exception("job_result_not_recorded")
        finally:
            renewer.cancel()
            self._running.pop(job.id, None)
            self._wakeup.set()

    async def _result_of(self, job: Job) -> JobResult:
        """The delegator's verdict; an unexpected exception is a transient failure."""
        try:
            return await self.delegator.run(job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("job_crashed")
            decision = decide_retry(attempt=job.attempts, max_attempts=self.config.max_attempts,
                                    retry_after=None, jitter=random.random())  # noqa: S311
            error = f"internal error: {type(exc).__name__}"
            if isinstance(decision, RetryIn):
                return RetryLater(decision.seconds, error)
            return Failed(error, "gave_up")

    async def _apply(self, job: Job, result: JobResult) -> None:
        if isinstance(result, Done):
            await self.store.finish_job(job.id, self.owner, outcome=result.outcome)
            metrics.JOBS.labels("done").inc()
            log.info("job_finished", outcome=result.outcome)
        elif isinstance(result, RetryLater):
            await self.store.retry_job(job.id, self.owner, run_at=self.clock() + result.seconds,
                                       error=result.error)
            metrics.JOBS.labels("retry").inc()
        elif isinstance(result, Deferred):
            await self.store.release_job(job.id, self.owner, run_at=self.clock() + result.seconds)
            metrics.JOBS.labels("deferred").inc()
        else:
            await self.store.fail_job(job.id, self.owner, error=result.error,
                                      outcome=result.outcome)
            metrics.JOBS.labels("failed").inc()
            log.warning("job_failed", outcome=result.outcome, error=result.error)

    async def _beat(self) -> None:
        """Beat until stopped; wake the loop when jobs of a dead worker came back."""
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                taken = await self.store.heartbeat(self.owner, now=self.clock(),
                                                   stale_after=STALE_AFTER_SECONDS)
            except Exception:
                log.exception("worker_heartbeat_failed")
                continue
            if taken:
                log.warning("jobs_taken_back", jobs=taken,
                            note=f"their worker stopped beating {STALE_AFTER_SECONDS:.0f} s ago")
                self._wakeup.set()

    async def _renew(self, job: Job) -> None:
        interval = self.config.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            held = await self.store.renew_lease(
                job.id, self.owner, until=self.clock() + self.config.lease_seconds)
            if not held:
                log.error("job_lease_lost")
                return

    async def _release(self, job: Job) -> None:
        with contextlib.suppress(Exception):
            await asyncio.shield(self.store.release_job(job.id, self.owner))
            metrics.JOBS.labels("released").inc()
            log.info("job_released")

    async def stop(self, grace: float) -> None:
        """Stop claiming; wait up to ``grace`` seconds for running jobs; release the rest."""
        await self.rounds.stop()
        self._stopping.set()
        self._wakeup.set()
        if self._loop_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        running = list(self._running.values())
        if running:
            log.info("worker_draining", jobs=len(running), grace=grace)
            _, pending = await asyncio.wait(running, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        if self._beat_task is not None:
            self._beat_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beat_task
        with contextlib.suppress(Exception):
            await self.store.unregister_worker(self.owner)
        log.info("worker_stopped")
