"""Trigger jobs: turn a labelled issue into a task or chat and its status comment.

Every step is safe to repeat, because a job may be retried or re-claimed after a
crash at any point: the delegation row remembers what already exists, the task
name is deterministic (the backend finds an existing task instead of making a
second), and the comment is found by its marker before posting.

In order: pick the delegation (I2, ``plan_delegation``); find whose Coder account
runs it (nobody linked → ``needs_link``, a rejected token → reconnect); check
consent (§4.4: the author's account on someone else's request waits in
``awaiting_consent`` for ``/agent approve``); create the work (a chat whose
workspace must build first shows **Starting** at once); show the status comment,
which status checks then keep current.
"""

from __future__ import annotations

from dataclasses import replace
from typing import NoReturn

from service import metrics
from service.coder.base import WorkSpec
from service.core import comments
from service.core.consent import needs_consent
from service.core.delegation import (
    Candidate,
    CheckActive,
    Continue,
    SameRequest,
    StartNew,
    acting_candidates,
    delegation_key,
    part_of_creation,
    plan_delegation,
    prompt_name,
    task_name,
)
from service.core.events import IssueEvent
from service.core.prompt import issue_reference, render_prompt
from service.core.status import Progress, Shown
from service.core.work import ACTIVE_STATES
from service.errors import PermanentError, RemoteError, TokenRejected, TransientError, VaultError
from service.logging import get_logger
from service.store.base import Account, Delegation, Job
from service.worker.context import WorkerContext, shown_state, work_of
from service.worker.results import Done, Failed, Finish, JobResult

log = get_logger("service.worker")


class Starter:
    """Runs trigger jobs; ``start`` is also how an approval (``/agent approve``) starts
    the work it allowed."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx

    async def run(self, job: Job) -> JobResult:
        """Do (or finish) the delegation a triggering delivery asks for."""
        event = IssueEvent.from_json(job.event_json)
        delegation: Delegation | None = None
        result: JobResult
        try:
            delegation = await self._delegation_for(event)
            if delegation is None:
                return Done("same_request")
            result = await self.start(event, delegation, attempt=job.attempts)
        except Finish as finish:
            result = finish.result
        except TransientError as exc:
            result = await self._transient(job, event, delegation, exc)
        except PermanentError as exc:
            # Only a tracker can raise this here: Coder's permanent errors are handled
            # in _create. We cannot comment, so the log line is the outcome.
            log.error("job_failed_tracker_error", error=str(exc), service=exc.service)
            result = Failed(str(exc), "failed")
        if delegation is not None and isinstance(result, Done | Failed):
            metrics.DELEGATIONS.labels(result.outcome).inc()
        return result

    async def start(self, event: IssueEvent, d: Delegation, *, attempt: int,
                    consented: bool = False) -> Done:
        """Create the delegation's work unless it exists, then show its status comment.
        ``consented``: the author approved (§4.4). Raises ``Finish`` when the issue was
        told why nothing runs; ``RemoteError`` for the caller to classify."""
        existing = d.task_id is not None and d.delivery_id != event.delivery_id
        d = replace(d, attempts=d.attempts + 1, updated_at=self.ctx.clock(),
                    trigger_json=d.trigger_json or event.to_json())
        if d.task_id is None:
            d = await self._create(event, d, attempt=attempt, consented=consented)
        progress = Progress.from_json(d.progress_json)
        # Work that shows no state yet starts out Starting (Working without status checks,
        # which would never tell it has started).
        first: Shown = "starting" if self.ctx.config.sync.enabled else "working"
        d = await self.ctx.show(event, d, shown_state(d.state, first=first), progress)
        outcome = "existing" if existing else "created"
        log.info("delegation_shown", outcome=outcome, task_url=d.task_url, state=d.state)
        return Done(outcome)

    # -- which delegation ----------------------------------------------------------
    async def _delegation_for(self, event: IssueEvent) -> Delegation | None:
        """Pick the delegation this delivery works on (I2: one active per issue); None
        when the delivery is another trigger of the request it already answers."""
        store = self.ctx.store
        current = await store.current_delegation(event.issue_key)
        plan = plan_delegation(current, delivery_id=event.delivery_id,
                               at_creation=part_of_creation(event))
        if isinstance(plan, SameRequest):
            log.info("trigger_joined", note="another trigger of the issue's creation",
                     delegation_delivery=plan.delegation.delivery_id)
            return None
        if isinstance(plan, Continue):
            return plan.delegation
        generation = plan.generation if isinstance(plan, StartNew) else 0
        if isinstance(plan, CheckActive):
            if await self._still_active(plan.delegation):
                return plan.delegation
            generation = plan.delegation.generation + 1
        return await store.create_delegation(
            issue_key=event.issue_key, tracker=event.tracker, delivery_id=event.delivery_id,
            generation=generation, now=self.ctx.clock(),
        )

    async def _still_active(self, d: Delegation) -> bool:
        """Ask Coder whether the delegation's work still runs. When Coder cannot be asked
        with its owner's token (unlinked since, rejected, undecryptable), what the
        delegation last showed decides: running work is not replaced (I2)."""
        account = await self.ctx.account_of(d)
        work = work_of(d, account.coder_username if account else "")
        if work is None:
            return False
        if account is None or account.token_status != "valid":
            return d.state in ACTIVE_STATES
        try:
            return await (await self.ctx.backend_for(account)).is_active(work)
        except (TokenRejected, VaultError):
            return d.state in ACTIVE_STATES
        except PermanentError:
            return False

    # -- creating the work -----------------------------------------------------------
    async def _create(self, event: IssueEvent, d: Delegation, *, attempt: int,
                      consented: bool) -> Delegation:
        account, candidate = await self._acting_account(event, d)
        d = replace(d, account_id=account.id, acting_id=candidate.person.id)
        if not consented and needs_consent(event, acting_role=candidate.role,
                                           allow_others=account.allow_others):
            await self._ask_consent(event, d)
        try:
            backend = await self.ctx.backend_for(account)
        except VaultError as exc:
            log.error("token_undecryptable", error=str(exc), coder_user=account.coder_username)
            await self._misconfigured(event, d, "encryption_key",
                                      "it cannot read the stored Coder token of the account "
                                      "that would run the agent")
        except TokenRejected as exc:  # an OAuth connection that could not be renewed
            await self._token_rejected(event, d, account, candidate, exc)
        key = delegation_key(d.issue_key, d.generation)
        template, preset = self.ctx.config.route_for(event.tracker, event.scope)
        spec = WorkSpec(
            delegation_key=key,
            name=task_name(key),
            prompt=render_prompt(event, author=prompt_name(event.author),
                                 requested_by=prompt_name(event.labeler or event.author)),
            display_name=f"{issue_reference(event)}: {event.title}"[:64],
            template=template,
            preset=preset,
            organization=self.ctx.config.coder.organization,
        )
        started = self.ctx.clock()
        shown = d

        async def show_starting() -> None:
            """The work must wait (a workspace builds): say **Starting** at once."""
            nonlocal shown
            shown = await self.ctx.show(event, shown, "starting", Progress(started_at=started))

        try:
            work = await backend.ensure(spec, may_exist=attempt > 1 or d.attempts > 1,
                                        on_wait=show_starting)
        except TokenRejected as exc:
            await self._token_rejected(event, shown, account, candidate, exc)
        except PermanentError as exc:
            if exc.misconfigured:
                log.error("task_create_misconfigured", error=str(exc),
                          setting=exc.misconfigured)
                await self._misconfigured(event, shown, exc.misconfigured,
                                          self.ctx.public_reason(exc))
            log.warning("task_create_refused", error=str(exc))
            await self._fail(event, shown, self.ctx.public_reason(exc))
        d = shown
        await self.ctx.store.mark_token_used(account.id, now=self.ctx.clock())
        d = replace(d, task_kind=work.kind, task_id=work.id, task_name=spec.name,
                    task_url=work.url, last_error=None, updated_at=self.ctx.clock(),
                    progress_json=Progress(started_at=started, sent_at=started).to_json())
        await self.ctx.store.save_delegation(d)
        log.info("task_created", task_url=work.url, kind=work.kind, coder_user=work.owner_name)
        return d

    async def _acting_account(
        self, event: IssueEvent, d: Delegation
    ) -> tuple[Account, Candidate]:
        """The first candidate with a valid linked token; otherwise tell the issue and stop."""
        candidates = acting_candidates(event, self.ctx.config.delegation.acting_user)
        invalid: tuple[Account, Candidate] | None = None
        for candidate in candidates:
            account = await self.ctx.store.find_account(event.tracker, candidate.person.id)
            if account is None:
                continue
            if account.token_status == "valid":
                return account, candidate
            invalid = invalid or (account, candidate)
        if invalid is not None:
            account, candidate = invalid
            body = comments.render_token_rejected_comment(
                event, marker=self.ctx.marker(d), person=candidate.person,
                help=self.ctx.link_help)
            await self.ctx.post(event, replace(d, account_id=account.id,
                                               acting_id=candidate.person.id),
                                body, state="needs_link")
            raise Finish(Done("token_invalid"))
        first = candidates[0] if candidates else None
        body = comments.render_needs_link_comment(
            event, marker=self.ctx.marker(d), person=first.person if first else None,
            help=self.ctx.link_help)
        await self.ctx.post(event, d, body, state="needs_link")
        log.info("delegation_needs_link", people=[c.person.login for c in candidates])
        raise Finish(Done("needs_link"))

    async def _ask_consent(self, event: IssueEvent, d: Delegation) -> NoReturn:
        """The author's account, someone else's request: ask the author (§4.4)."""
        assert event.author is not None and event.labeler is not None  # needs_consent said so
        body = comments.render_awaiting_consent_comment(
            event, marker=self.ctx.marker(d), author=event.author, labeler=event.labeler,
            command=self.ctx.config.delegation.command, help=self.ctx.link_help)
        await self.ctx.post(event, d, body, state="awaiting_consent")
        log.info("delegation_awaits_consent")
        raise Finish(Done("awaiting_consent"))

    async def _token_rejected(self, event: IssueEvent, d: Delegation, account: Account,
                              candidate: Candidate, exc: TokenRejected) -> NoReturn:
        if await self.ctx.rejected(account):
            raise TransientError("coder", "the Coder connection was renewed; trying again")
        log.warning("token_rejected", coder_user=account.coder_username, error=str(exc))
        body = comments.render_token_rejected_comment(
            event, marker=self.ctx.marker(d), person=candidate.person, help=self.ctx.link_help)
        await self.ctx.post(event, replace(d, last_error=str(exc)), body, state="needs_link")
        raise Finish(Failed(str(exc), "token_invalid"))

    async def _misconfigured(self, event: IssueEvent, d: Delegation, what: str,
                             reason: str) -> NoReturn:
        """Fail because of the bridge's own configuration (``what``: the metric's reason):
        the operators are alerted, the issue says it is not the reader's doing."""
        metrics.MISCONFIGURED.labels(what).inc()
        body = comments.render_misconfigured_comment(marker=self.ctx.marker(d), reason=reason)
        await self.ctx.post(event, replace(d, last_error=reason), body, state="failed")
        raise Finish(Failed(reason, "failed"))

    async def _fail(self, event: IssueEvent, d: Delegation, reason: str) -> NoReturn:
        body = comments.render_failed_comment(marker=self.ctx.marker(d), reason=reason)
        await self.ctx.post(event, replace(d, last_error=reason), body, state="failed")
        raise Finish(Failed(reason, "failed"))

    # -- transient failures ------------------------------------------------------------
    async def _transient(
        self, job: Job, event: IssueEvent, d: Delegation | None, exc: TransientError
    ) -> JobResult:
        retry = self.ctx.retry_later(job.attempts, exc)
        if d is not None:
            # Re-read: the job may have shown **Starting** since it picked the delegation.
            d = await self.ctx.store.get_delegation(d.id) or d
            d = replace(d, last_error=str(exc), updated_at=self.ctx.clock())
            await self.ctx.store.save_delegation(d)
        if retry is not None:
            log.warning("job_retry_scheduled", error=str(exc), delay=round(retry.seconds, 2))
            return retry
        log.error("job_gave_up", error=str(exc), attempts=job.attempts)
        if d is None:
            return Failed(str(exc), "gave_up")
        body = comments.render_gave_up_comment(marker=self.ctx.marker(d), attempts=job.attempts,
                                               reason=self.ctx.public_reason(exc))
        try:
            await self.ctx.post(event, d, body, state="gave_up")
        except RemoteError as comment_exc:
            log.error("gave_up_comment_failed", error=str(comment_exc))
        return Failed(str(exc), "gave_up")

