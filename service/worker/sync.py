"""Status rounds: find out cheaply which running work changed (interface §4.2).

Every ``sync.interval`` seconds each Coder account with followed work gets one round:
one list call of that user's tasks or chats (``CoderBackend.list_snapshots``), each
listed task or chat reduced to a fingerprint (``service.core.status.fingerprint``)
and compared with what its delegation last showed (``Delegation.checked``). Only a
difference queues a check job, which reads that one task or chat and edits the
comment (so do held follow-ups, the runtime limit, and a message whose turn has not
been seen yet: ``service.core.status.is_settling``). So the cost grows with the people
who have work running, not with their tasks: one list call per person and interval,
plus one read per change.

Rounds are claimed per account in the store under a short lease, so replicas share
them and never check one account twice at once. An account's requests stay under
Coder's per-user rate limit: one list call, and at most ``MAX_READS_PER_ROUND``
check jobs, per round. A 429 or an outage delays the account's next round
(doubling, at most ``MAX_BACKOFF_SECONDS``, never sooner than ``Retry-After``); it
never changes what an issue shows. A rejected token marks the account invalid.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from service import metrics
from service.coder.base import Snapshot
from service.core.status import Progress, fingerprint, is_settling
from service.errors import RateLimited, RemoteError, TokenRejected, VaultError
from service.http import CALL_PURPOSE
from service.logging import get_logger
from service.store.base import CheckTarget, Store
from service.worker.checks import ACTIVE_SHOWN, over_runtime
from service.worker.context import WorkerContext, shown_state, work_of

log = get_logger("service.worker")

#: Check jobs one account's round may queue; the rest wait for the next round.
MAX_READS_PER_ROUND = 20
MAX_BACKOFF_SECONDS = 600.0
#: Accounts claimed at once, and how many of their rounds run concurrently.
CLAIM_BATCH = 50
CONCURRENT_ROUNDS = 8
#: How long a claimed round may take before another process may claim it again.
ROUND_LEASE_SECONDS = 60.0
#: The fingerprint of work the list call did not show (deleted, archived).
ABSENT = "absent"


class StatusRounds:
    """Runs status rounds until stopped. ``on_queued`` is called when checks were
    queued (to wake the job loop)."""

    def __init__(self, ctx: WorkerContext, *, owner: str,
                 on_queued: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.ctx = ctx
        self.store: Store = ctx.store
        self.owner = owner
        self.interval = ctx.config.sync.interval
        self.on_queued = on_queued
        self.clock = clock
        self._task: asyncio.Task[None] | None = None
        self._slots = asyncio.Semaphore(CONCURRENT_ROUNDS)

    def start(self) -> None:
        """Run rounds in the background (nothing when ``sync.interval`` is 0)."""
        if self.interval > 0:
            self._task = asyncio.create_task(self._run(), name="status-rounds")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        CALL_PURPOSE.set("sync")
        poll = min(1.0, self.interval)
        while True:
            try:
                queued = await self.round()
                if queued and self.on_queued is not None:
                    self.on_queued()
            except Exception:
                log.exception("status_round_failed")
            await asyncio.sleep(poll)

    async def round(self) -> int:
        """Claim the accounts whose round is due and run them; returns the checks queued."""
        targets = await self.store.claim_checks(self.owner, now=self.clock(),
                                                lease_seconds=ROUND_LEASE_SECONDS,
                                                limit=CLAIM_BATCH)
        counts = await asyncio.gather(*(self._guarded(target) for target in targets))
        return sum(counts)

    async def _guarded(self, target: CheckTarget) -> int:
        async with self._slots:
            try:
                return await self.check_account(target)
            except Exception:
                log.exception("status_round_of_account_failed", account_id=target.account.id)
                await self.store.finish_checks(target.account.id, self.owner,
                                               next_at=self.clock() + self.interval,
                                               failures=0)
                return 0

    async def check_account(self, target: CheckTarget) -> int:
        """One round for one account: list, compare, queue checks; schedule the next."""
        account = target.account
        works = [w for w in (work_of(d, account.coder_username) for d in target.delegations)
                 if w is not None]
        failures = 0
        delay = self.interval
        queued = 0
        try:
            backend = await self.ctx.backend_for(account)
            snapshots = await backend.list_snapshots(works)
        except TokenRejected:
            if not await self.ctx.rejected(account):  # an OAuth pair renewed: next round
                metrics.STATUS_CHECKS.labels("token_rejected").inc()
                log.warning("status_round_token_rejected", coder_user=account.coder_username)
                for d in target.delegations:  # each issue is told once, by its check job
                    queued += await self.store.request_check(d, seen="", now=self.clock(),
                                                             reason="token_rejected")
        except VaultError:
            metrics.STATUS_CHECKS.labels("token_undecryptable").inc()
            delay = MAX_BACKOFF_SECONDS
        except RemoteError as exc:
            failures = target.failures + 1
            delay = min(MAX_BACKOFF_SECONDS, self.interval * 2 ** min(failures, 10))
            if isinstance(exc, RateLimited):
                delay = max(delay, exc.retry_after or 0.0)
            outcome = "rate_limited" if isinstance(exc, RateLimited) else "outage"
            metrics.STATUS_CHECKS.labels(outcome).inc()
            log.warning("status_round_failed", outcome=outcome, error=str(exc),
                        retry_in=round(delay, 1), note="issues keep their last state")
        else:
            metrics.STATUS_CHECKS.labels("listed").inc()
            queued = await self._queue_checks(target, snapshots)
        await self.store.finish_checks(account.id, self.owner, next_at=self.clock() + delay,
                                       failures=failures)
        return queued

    async def _queue_checks(self, target: CheckTarget, snapshots: dict[str, Snapshot]) -> int:
        now = self.clock()
        limit = self.ctx.config.sync.max_runtime
        queued = 0
        for d in target.delegations:
            if queued >= MAX_READS_PER_ROUND or d.task_id is None:
                continue
            snapshot = snapshots.get(d.task_id)
            seen = fingerprint(snapshot) if snapshot is not None else ABSENT
            progress = Progress.from_json(d.progress_json)
            if seen != d.checked:
                reason = "changed"
            elif progress.held:
                reason = "held"
            elif shown_state(d.state) in ACTIVE_SHOWN and over_runtime(progress, now=now,
                                                                       limit=limit):
                reason = "max_runtime"
            elif shown_state(d.state) in ACTIVE_SHOWN and is_settling(progress, now=now):
                reason = "settling"  # a quick turn may have ended unseen: look again
            else:
                continue
            if await self.store.request_check(d, seen=seen, now=now, reason=reason):
                queued += 1
        return queued
