"""Comment jobs: commands in issue comments (interface §4.3).

A comment job reads the command again (``parse_command``), asks the core who may
give it (``decide_command``) and then carries it out:

* a follow-up is recorded, sent (or held for a busy task), 👀 goes on the comment and
  the status comment shows **Working**;
* ``stop`` stops the agent (or withdraws a request still waiting) and shows
  **Stopped** by whom;
* ``approve`` starts the work the author allowed, exactly once;
* anything else gets one short reply saying why (found again on a retry by its
  marker, never posted twice).
"""

from __future__ import annotations

from dataclasses import replace

import msgspec

from service import metrics
from service.core import comments
from service.core.commands import Allowed, Command, Parties, decide_command, parse_command
from service.core.events import CommentEvent, IssueEvent, Person
from service.core.status import Progress
from service.errors import PermanentError, TokenRejected, TransientError, VaultError
from service.logging import get_logger
from service.store.base import Delegation, Job
from service.worker.context import (
    WorkerContext,
    acting_person,
    own_words,
    shown_state,
    trigger_of,
    work_of,
)
from service.worker.followups import send_held
from service.worker.results import Done, Failed, Finish, JobResult
from service.worker.trigger import Starter

log = get_logger("service.worker")


class CommandRunner:
    """Runs comment jobs."""

    def __init__(self, ctx: WorkerContext, starter: Starter) -> None:
        self.ctx = ctx
        self.starter = starter

    async def run(self, job: Job) -> JobResult:
        event = CommentEvent.from_json(job.event_json)
        command = parse_command(event.text, self.ctx.config.delegation.command)
        if command is None:
            return Done("not_a_command")
        try:
            outcome = await self._carry_out(event, command, attempt=job.attempts)
        except Finish as finish:
            return finish.result
        except TransientError as exc:
            retry = self.ctx.retry_later(job.attempts, exc)
            if retry is not None:
                log.warning("command_retry_scheduled", error=str(exc), delay=retry.seconds)
                return retry
            metrics.COMMANDS.labels(command.name, "failed").inc()
            await self._reply(event, "Your command could not be carried out: "
                              f"{self.ctx.public_reason(exc)} Try again later.")
            return Failed(str(exc), "gave_up")
        except PermanentError as exc:
            metrics.COMMANDS.labels(command.name, "failed").inc()
            log.warning("command_failed", error=str(exc), service=exc.service)
            if exc.service == "coder":
                await self._reply(event, "Your command could not be carried out: "
                                  f"{self.ctx.public_reason(exc)}")
            return Failed(str(exc), "failed")
        metrics.COMMANDS.labels(command.name, outcome).inc()
        log.info("command_handled", command=command.name, outcome=outcome)
        return Done(f"command_{outcome}")

    async def _carry_out(self, event: CommentEvent, command: Command, *, attempt: int) -> str:
        """Decide and act; returns the outcome for metrics (done, held, refused)."""
        d = await self.ctx.store.current_delegation(event.issue_key)
        trigger = trigger_of(d) if d is not None else None
        progress = Progress.from_json(d.progress_json) if d is not None else Progress()
        people = _people(d, trigger)
        parties = (Parties(_id(people.author), _id(people.labeler), _id(people.acting))
                   if d is not None and trigger is not None else None)
        decision = decide_command(
            command, event.author.id, parties, state=d.state if d else None,
            has_work=d is not None and d.task_id is not None,
            approved_here=progress.approved_in == event.comment_id)
        if not isinstance(decision, Allowed):
            await self._reply(event, comments.render_refusal(
                decision.reason, tracker=event.tracker, people=people,
                command=self.ctx.config.delegation.command,
                state=d.state if d is not None else None,
                trigger_label=self._trigger_label(event.tracker)))
            return "refused"
        assert d is not None and trigger is not None  # decide_command allows nothing else
        if command.name == "stop":
            who = comments.person_name(event.tracker, event.author)
            await self.ctx.stop(event, d, stopped_by=f"by {who}", cause="command")
            return "done"
        if command.name == "approve":
            await self._approve(event, trigger, d, progress, attempt=attempt)
            return "done"
        return await self._follow_up(event, d, progress, command.text)

    async def _approve(self, event: CommentEvent, trigger: IssueEvent, d: Delegation,
                       progress: Progress, *, attempt: int) -> None:
        """Record the approval on the delegation (a retry of this job sees it), then start
        the work it allows."""
        if progress.approved_in != event.comment_id:
            progress = msgspec.structs.replace(progress, approved_in=event.comment_id)
            d = replace(d, progress_json=progress.to_json(), state="pending")
            await self.ctx.store.save_delegation(d)
        await self.ctx.trackers[event.tracker].react(event, event.comment_id)
        log.info("consent_given", delegation_id=d.id)
        await self.starter.start(trigger, d, attempt=attempt, consented=True)

    async def _follow_up(self, event: CommentEvent, d: Delegation, progress: Progress,
                         text: str) -> str:
        account = await self.ctx.account_of(d)
        work = work_of(d, account.coder_username if account else "")
        if account is None or work is None or account.token_status != "valid":
            raise own_words("the Coder token that runs this agent was rejected or removed; "
                             "its owner must connect their Coder account again")
        try:
            backend = await self.ctx.backend_for(account)
        except VaultError:
            raise own_words("the stored Coder token cannot be decrypted; its owner must "
                             "connect their Coder account again") from None
        except TokenRejected:
            raise own_words("the Coder connection that runs this agent has expired; its "
                            "owner must connect their Coder account again") from None
        now = self.ctx.clock()
        await self.ctx.store.add_followup(d.id, source=event.comment_id, text=text, now=now)
        try:
            result = await send_held(self.ctx.store, backend, work, delegation_id=d.id, now=now)
        except TokenRejected as exc:
            if await self.ctx.rejected(account):
                raise TransientError("coder", "the Coder connection was renewed") from exc
            raise
        await self.ctx.trackers[event.tracker].react(event, event.comment_id)
        if result.gone:
            progress = msgspec.structs.replace(progress, held=0)
            await self.ctx.show(event, d, "stopped", msgspec.structs.replace(
                progress, stopped_by=progress.stopped_by or "in Coder (deleted)",
                ended_at=progress.ended_at or now))
            await self._reply(event, "The agent's work no longer exists in Coder, so your "
                              "message could not be delivered.")
            return "refused"
        progress = msgspec.structs.replace(progress, held=result.left)
        if result.sent:
            progress = msgspec.structs.replace(progress, sent_at=now, worked=False,
                                               ended_at=None, failure="")
        await self.ctx.show(event, d, "working" if result.sent else shown_state(d.state),
                            progress)
        return "held" if result.left else "done"

    async def _reply(self, event: CommentEvent, text: str) -> None:
        await self.ctx.reply(event, f"reply:{event.comment_id}", text)

    def _trigger_label(self, tracker: str) -> str:
        section = self.ctx.config.github if tracker == "github" else self.ctx.config.linear
        return section.trigger_label if section is not None else "delegate-to-agent"


def _people(d: Delegation | None, trigger: IssueEvent | None) -> comments.People:
    """The author, the labeler and the acting user of a delegation, as far as known."""
    if d is None or trigger is None:
        return comments.People(None, None, None)
    acting = acting_person(d, trigger)
    if acting is None and d.acting_id is None and d.state in ("pending", "needs_link"):
        acting = trigger.author  # who would run it, once connected
    return comments.People(trigger.author, trigger.labeler, acting)


def _id(person: Person | None) -> str | None:
    return person.id if person is not None else None
