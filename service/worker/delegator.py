"""Carry out one job: hand it to the runner of its kind.

A job is a stored delivery: a ``trigger`` (a labelled issue: ``trigger.Starter``), a
``comment`` (a command: ``commands.CommandRunner``), a ``change`` (label removed,
issue closed: ``changes.ChangeRunner``), or a ``check`` the status rounds asked for
(``checks.CheckRunner``). ``Delegator.run`` never raises for an expected failure: it
returns a ``JobResult`` that the loop applies to the queue. Errors are handled per
class (``service.errors``), never by message text.
"""

from __future__ import annotations

from typing import Protocol

from service.errors import PacingDeferred
from service.http import CALL_PURPOSE
from service.logging import get_logger
from service.store.base import Job
from service.worker.changes import ChangeRunner
from service.worker.checks import CheckRunner
from service.worker.commands import CommandRunner
from service.worker.context import WorkerContext
from service.worker.results import Deferred, Failed, JobResult
from service.worker.trigger import Starter

log = get_logger("service.worker")


class Runner(Protocol):
    async def run(self, job: Job) -> JobResult: ...


#: Why each kind of job calls Coder (``coder_bridge_coder_calls_total{purpose}``).
PURPOSES = {"trigger": "create", "comment": "command", "change": "command", "check": "sync"}


class Delegator:
    """Runs jobs. One instance serves every job of the process."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        starter = Starter(ctx)
        self.runners: dict[str, Runner] = {
            "trigger": starter,
            "comment": CommandRunner(ctx, starter),
            "change": ChangeRunner(ctx),
            "check": CheckRunner(ctx),
        }

    async def run(self, job: Job) -> JobResult:
        """Run ``job`` by its kind; classify any failure."""
        runner = self.runners.get(job.kind)
        if runner is None:
            log.error("job_kind_unknown", kind=job.kind)
            return Failed(f"unknown job kind {job.kind!r}", "failed")
        purpose = CALL_PURPOSE.set(PURPOSES.get(job.kind, "other"))
        try:
            return await runner.run(job)
        except PacingDeferred as exc:  # from any comment, the give-up comment included
            log.info("job_deferred_by_pacing", seconds=round(exc.seconds, 1))
            return Deferred(exc.seconds)
        finally:
            CALL_PURPOSE.reset(purpose)
