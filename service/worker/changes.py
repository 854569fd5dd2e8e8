"""Change jobs: the trigger label was removed, or the issue closed (interface §4.3).

With ``sync.stop_on_unlabel`` / ``sync.stop_on_close`` the agent of the issue's
delegation is stopped and the status comment says **Stopped** and why. A Linear
``update`` names removed labels by id only: it stops the agent only when the id of
the label that started the delegation (kept with its trigger) is among them.
"""

from __future__ import annotations

from service.core import comments
from service.core.commands import RUNNING_STATES, WAITING_STATES
from service.core.events import ChangeEvent
from service.errors import PermanentError, TransientError
from service.logging import get_logger
from service.store.base import Job
from service.worker.context import WorkerContext, trigger_of
from service.worker.results import Done, Failed, JobResult

log = get_logger("service.worker")


class ChangeRunner:
    """Runs change jobs."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx

    async def run(self, job: Job) -> JobResult:
        event = ChangeEvent.from_json(job.event_json)
        sync = self.ctx.config.sync
        wanted = sync.stop_on_unlabel if event.change == "unlabeled" else sync.stop_on_close
        if not wanted:
            return Done(f"{event.change}_ignored")
        d = await self.ctx.store.current_delegation(event.issue_key)
        trigger = trigger_of(d) if d is not None else None
        if d is None or trigger is None or not (
                (d.task_id is not None and d.state in RUNNING_STATES)
                or d.state in WAITING_STATES):
            return Done("nothing_to_stop")
        if event.change == "unlabeled" and event.tracker == "linear":
            removed = event.extra.get("removed_label_ids", "").split(",")
            if trigger.extra.get("label_id") not in removed:
                return Done("other_label_removed")
        who = f" by {comments.person_name(event.tracker, event.actor)}" if event.actor else ""
        why = ("because the trigger label was removed" if event.change == "unlabeled"
               else "because the issue was closed")
        try:
            await self.ctx.stop(event, d, stopped_by=f"{why}{who}", cause=event.change)
        except TransientError as exc:
            retry = self.ctx.retry_later(job.attempts, exc)
            if retry is not None:
                return retry
            await self._tell(event, "The agent could not be stopped: "
                             f"{self.ctx.public_reason(exc)} Stop it in Coder, or comment "
                             f"`{self.ctx.config.delegation.command} stop` to try again.")
            return Failed(str(exc), "gave_up")
        except PermanentError as exc:
            if exc.service != "coder":
                raise
            await self._tell(event, "The agent could not be stopped: "
                             f"{self.ctx.public_reason(exc)}")
            return Failed(str(exc), "failed")
        return Done(f"stopped_{event.change}")

    async def _tell(self, event: ChangeEvent, text: str) -> None:
        log.warning("stop_failed", change=event.change, text=text)
        await self.ctx.reply(event, f"change:{event.delivery_id}", text)
