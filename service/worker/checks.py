"""Check jobs: read one task or chat afresh and show what it does (interface §4.2).

A status round (``service.worker.sync``) queues a check job when a list call shows a
task or chat changed (or when held messages or the runtime limit need a look). The
job runs in the issue's turn among its other jobs, so two replicas never edit one
comment at once. It reads the work (``CoderBackend.snapshot``), maps what it sees to
the state the issue shows (``service.core.status``), sends held follow-ups once the
agent's turn is over, stops an agent past ``sync.max_runtime``, and shows the result:
the comment is edited only when what it shows changed.

An outage never marks work failed: the job then changes nothing (the comment keeps
its last state), counts it, and the next round asks again.
"""

from __future__ import annotations

from dataclasses import replace

import msgspec

from service import metrics
from service.core import comments
from service.core.events import IssueEvent
from service.core.status import (
    ChatSnapshot,
    Observed,
    Progress,
    TaskSnapshot,
    observe_chat,
    observe_task,
)
from service.errors import PermanentError, TokenRejected, TransientError, VaultError
from service.logging import get_logger
from service.store.base import Delegation, Job
from service.worker.context import (
    WorkerContext,
    acting_person,
    shown_state,
    trigger_of,
    work_of,
)
from service.worker.followups import send_held
from service.worker.results import Done, JobResult

log = get_logger("service.worker")

#: States in which the agent's turn is over: held follow-ups can be sent.
READY_FOR_MESSAGES = frozenset({"done", "failed", "needs_input"})
ACTIVE_SHOWN = frozenset({"starting", "working", "needs_input"})


class CheckRequest(msgspec.Struct, frozen=True):
    """The event of a check job (``Store.request_check``)."""

    delegation_id: int
    reason: str
    seen: str = ""


def over_runtime(progress: Progress, *, now: float, limit: float) -> bool:
    """Whether the current run (since the prompt or the latest follow-up) has gone on
    longer than ``limit`` seconds (0: no limit)."""
    began = progress.sent_at or progress.started_at
    return limit > 0 and began is not None and now - began >= limit


class CheckRunner:
    """Runs check jobs."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx

    async def run(self, job: Job) -> JobResult:
        request = msgspec.json.decode(job.event_json, type=CheckRequest)
        store = self.ctx.store
        d = await store.get_delegation(request.delegation_id)
        trigger = trigger_of(d) if d is not None else None
        if d is None or trigger is None or d.follow_until is None:
            return Done("not_followed")
        current = await store.current_delegation(d.issue_key)
        if current is not None and current.id != d.id:
            await store.save_delegation(replace(d, follow_until=None))
            return Done("superseded")
        account = await self.ctx.account_of(d)
        work = work_of(d, account.coder_username if account else "")
        if account is None or work is None or account.token_status != "valid":
            await self._cannot_follow(trigger, d)
            return Done("token_invalid")
        try:
            backend = await self.ctx.backend_for(account)
            snapshot = await backend.snapshot(work)
        except VaultError:
            return Done("token_undecryptable")
        except TokenRejected:
            if await self.ctx.rejected(account):
                return Done("token_renewed")  # the next round looks again
            metrics.STATUS_CHECKS.labels("token_rejected").inc()
            await self._cannot_follow(trigger, d)
            return Done("token_rejected")
        except (TransientError, PermanentError) as exc:
            metrics.STATUS_CHECKS.labels("outage").inc()
            log.warning("status_check_failed", error=str(exc), note="the comment keeps its state")
            return Done("outage")
        now = self.ctx.clock()
        observed = _observe(snapshot, d, now=now)
        shown, progress = observed.shown, observed.progress
        seen: str | None = request.seen or None
        if progress.held and shown in READY_FOR_MESSAGES:
            result = await send_held(store, backend, work, delegation_id=d.id, now=now)
            progress = msgspec.structs.replace(progress, held=result.left)
            if result.sent:
                shown, seen = "working", None  # what was seen is over: look again next round
                progress = msgspec.structs.replace(progress, sent_at=now, worked=False,
                                                   ended_at=None, failure="")
        limit = self.ctx.config.sync.max_runtime
        if shown in ACTIVE_SHOWN and over_runtime(progress, now=now, limit=limit):
            d = replace(d, progress_json=progress.to_json())
            await self.ctx.stop(trigger, d, cause="max_runtime", stopped_by=(
                f"after running for more than {comments.duration(limit)} (the limit set "
                "for this bridge)"))
            return Done("stopped_max_runtime")
        if shown == "stopped" and progress.held:
            for held in await store.queued_followups(d.id):
                await store.settle_followup(held.id, sent=False, now=now)
            progress = msgspec.structs.replace(progress, held=0)
        before = d.comment_sha256
        d = await self.ctx.show(trigger, d, shown, progress, checked=seen)
        changed = d.comment_sha256 != before
        metrics.STATUS_CHECKS.labels("changed" if changed else "unchanged").inc()
        return Done("changed" if changed else "unchanged")


    async def _cannot_follow(self, trigger: IssueEvent, d: Delegation) -> None:
        """Coder rejected the token the work runs with: say so once on the issue (its
        state stays as last seen) and stop following it."""
        acting = acting_person(d, trigger)
        who = comments.person_name(trigger.tracker, acting) if acting else "its owner"
        notice = (f"coder-bridge can no longer follow this agent: Coder rejected the token "
                  f"connected for {who}. The agent itself goes on in Coder; connect again at "
                  f"{self.ctx.link_help.connect_url} for later requests.")
        progress = msgspec.structs.replace(Progress.from_json(d.progress_json), notice=notice)
        await self.ctx.show(trigger, d, shown_state(d.state), progress, follow=False)
        log.warning("status_no_longer_followed", reason="token rejected")


def _observe(snapshot: TaskSnapshot | ChatSnapshot, d: Delegation, *, now: float) -> Observed:
    before = shown_state(d.state)
    progress = Progress.from_json(d.progress_json)
    if isinstance(snapshot, TaskSnapshot):
        return observe_task(snapshot, before, progress, now=now)
    return observe_chat(snapshot, before, progress, now=now)
