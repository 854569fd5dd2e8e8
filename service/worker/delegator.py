"""Carry out one job: turn a triggering delivery into a task and a comment.

Every step is safe to repeat, because a job may be retried or re-claimed after
a crash at any point: the delegation row remembers what already exists, the
task name is deterministic (the backend finds an existing task instead of
making a second), and the comment is found by its marker before posting.

``Delegator.run`` never raises for an expected failure: it returns a
``JobResult`` that the loop applies to the queue. Errors are handled per class
(``service.errors``), never by message text.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Literal, NoReturn

from service import metrics
from service.coder.base import CoderBackend, CreatedWork, WorkSpec
from service.config import Config
from service.core import comments
from service.core.delegation import (
    Candidate,
    CheckActive,
    Continue,
    SameRequest,
    StartNew,
    acting_candidates,
    delegation_key,
    describe_role,
    part_of_creation,
    plan_delegation,
    task_name,
)
from service.core.events import IssueEvent
from service.core.prompt import issue_reference, render_prompt
from service.core.retry import GiveUp, decide_retry
from service.errors import (
    PacingDeferred,
    PermanentError,
    RemoteError,
    TokenRejected,
    TransientError,
    VaultError,
)
from service.logging import get_logger
from service.store.base import Account, Delegation, DelegationState, Job, Store
from service.trackers.base import IssueCommenter
from service.vault import Vault

log = get_logger("service.worker")

CoderBackendFactory = Callable[[str], CoderBackend]
"""Builds the backend for one user's decrypted Coder token."""


@dataclass(frozen=True)
class Done:
    """The job is finished; ``outcome`` is the delegation outcome for metrics and logs."""

    outcome: str


@dataclass(frozen=True)
class RetryLater:
    """Run the job again in ``seconds``; ``error`` is remembered on the job."""

    seconds: float
    error: str


@dataclass(frozen=True)
class Failed:
    """The job ends without success (the issue says why, when it could be told)."""

    error: str
    outcome: str


@dataclass(frozen=True)
class Deferred:
    """Run the job again in ``seconds`` without counting this attempt: our own pacing
    of GitHub's content limits had no room (``PacingDeferred``). Whatever the job did
    before (a task created) is recorded; the next run continues from there."""

    seconds: float


JobResult = Done | RetryLater | Failed | Deferred


class _Permanent(Exception):
    """Internal: stop this job with ``result`` after the issue has been told."""

    def __init__(self, result: JobResult) -> None:
        super().__init__(str(result))
        self.result = result


class Delegator:
    """Runs jobs. One instance serves every job of the process."""

    def __init__(
        self,
        *,
        config: Config,
        store: Store,
        vault: Vault,
        coder_backend: CoderBackendFactory,
        commenters: Mapping[str, IssueCommenter],
        clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.store = store
        self.vault = vault
        self.coder_backend = coder_backend
        self.commenters = commenters
        self.clock = clock
        self.jitter = jitter
        self.link_help = comments.LinkHelp(config.server.public_url, config.coder.url)

    async def run(self, job: Job) -> JobResult:
        """Do (or finish) the delegation a job asks for; classify any failure."""
        try:
            return await self._run(job)
        except PacingDeferred as exc:  # from any comment, the give-up comment included
            log.info("job_deferred_by_pacing", seconds=round(exc.seconds, 1))
            return Deferred(exc.seconds)

    async def _run(self, job: Job) -> JobResult:
        event = IssueEvent.from_json(job.event_json)
        delegation: Delegation | None = None
        try:
            delegation = await self._delegation_for(event)
            if delegation is None:
                return Done("same_request")
            result = await self._advance(job, event, delegation)
        except _Permanent as stop:
            result = stop.result
        except TransientError as exc:
            result = await self._transient(job, event, delegation, exc)
        except PermanentError as exc:
            # Only a tracker can raise this here: Coder's permanent errors are handled
            # inside _advance. We cannot comment, so the log line is the outcome.
            log.error("job_failed_tracker_error", error=str(exc), service=exc.service)
            result = Failed(str(exc), "failed")
        if delegation is not None and isinstance(result, Done | Failed):
            metrics.DELEGATIONS.labels(result.outcome).inc()
        return result

    # -- the steps -------------------------------------------------------------------
    async def _delegation_for(self, event: IssueEvent) -> Delegation | None:
        """Pick the delegation this delivery works on (I2: one active per issue); None
        when the delivery is another trigger of the request it already answers."""
        current = await self.store.current_delegation(event.issue_key)
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
        return await self.store.create_delegation(
            issue_key=event.issue_key, tracker=event.tracker, delivery_id=event.delivery_id,
            generation=generation, now=self.clock(),
        )

    async def _still_active(self, delegation: Delegation) -> bool:
        """Ask Coder whether the delegation's task is still running (unknown → active)."""
        account = (await self.store.get_account(delegation.account_id)
                   if delegation.account_id is not None else None)
        if account is None or account.token_status != "valid" or delegation.task_id is None:
            return False
        try:
            backend = self.coder_backend(self._decrypt(account))
            return await backend.is_active(_work_of(delegation, account.coder_username))
        except TokenRejected:
            return False
        except (VaultError, PermanentError):
            return False

    async def _advance(self, job: Job, event: IssueEvent, d: Delegation) -> JobResult:
        key = delegation_key(d.issue_key, d.generation)
        d = replace(d, attempts=d.attempts + 1, updated_at=self.clock())
        existing = d.task_id is not None and d.delivery_id != event.delivery_id
        if d.task_id is None:
            d = await self._create_task(job, event, d, key)
        account = await self.store.get_account(d.account_id) if d.account_id else None
        work = _work_of(d, account.coder_username if account else "")
        body = comments.render_task_comment(work, delegation_key=key, existing=existing)
        d = await self._comment(event, d, key, body, state="active")
        outcome = "existing" if existing else "created"
        log.info("delegation_done", outcome=outcome, task_url=work.url, issue=d.issue_key)
        return Done(outcome)

    async def _create_task(
        self, job: Job, event: IssueEvent, d: Delegation, key: str
    ) -> Delegation:
        chosen = await self._acting_account(event, d, key)
        account, candidate = chosen
        try:
            backend = self.coder_backend(self._decrypt(account))
        except VaultError as exc:
            reason = ("the stored Coder token cannot be decrypted (the encryption key that "
                      "protects it is not configured); the account must be linked again")
            log.error("token_undecryptable", error=str(exc), coder_user=account.coder_username)
            await self._fail(event, d, key, reason, outcome="failed")
        template, preset = self.config.route_for(event.tracker, event.scope)
        spec = WorkSpec(
            delegation_key=key,
            name=task_name(key),
            prompt=render_prompt(event, requested_by=_prompt_name(candidate),
                                 acting_as=describe_role(candidate.role)),
            display_name=f"{issue_reference(event)}: {event.title}"[:64],
            template=template,
            preset=preset,
            organization=self.config.coder.organization,
        )
        may_exist = job.attempts > 1 or d.attempts > 1 or d.state == "task_created"
        try:
            work = await backend.ensure(spec, may_exist=may_exist)
        except TokenRejected as exc:
            await self.store.mark_token_invalid(account.id, ciphertext=account.ciphertext)
            metrics.TOKENS_INVALID.inc()
            log.warning("token_rejected", coder_user=account.coder_username, error=str(exc))
            body = comments.render_token_rejected_comment(
                event, delegation_key=key, person=candidate.person, help=self.link_help)
            d = replace(d, account_id=account.id, last_error=str(exc))
            await self._comment(event, d, key, body, state="failed")
            raise _Permanent(Failed(str(exc), "token_invalid")) from exc
        except TransientError:
            raise
        except PermanentError as exc:
            log.warning("task_create_refused", error=str(exc))
            await self._fail(event, replace(d, account_id=account.id), key, exc.message,
                             outcome="failed")
        await self.store.mark_token_used(account.id, now=self.clock())
        d = replace(d, account_id=account.id, task_kind=work.kind, task_id=work.id,
                    task_name=spec.name, task_url=work.url, state="task_created",
                    last_error=None, updated_at=self.clock())
        await self.store.save_delegation(d)
        log.info("task_created", task_url=work.url, kind=work.kind, coder_user=work.owner_name)
        return d

    async def _acting_account(
        self, event: IssueEvent, d: Delegation, key: str
    ) -> tuple[Account, Candidate]:
        """The first candidate with a valid linked token; otherwise tell the issue and stop."""
        candidates = acting_candidates(event, self.config.delegation.acting_user)
        invalid: tuple[Account, Candidate] | None = None
        for candidate in candidates:
            account = await self.store.find_account(event.tracker, candidate.person.id)
            if account is None:
                continue
            if account.token_status == "valid":
                return account, candidate
            invalid = invalid or (account, candidate)
        if invalid is not None:
            account, candidate = invalid
            body = comments.render_token_rejected_comment(
                event, delegation_key=key, person=candidate.person, help=self.link_help)
            await self._comment(event, replace(d, account_id=account.id), key, body,
                                state="failed")
            raise _Permanent(Failed("the linked Coder token is invalid", "token_invalid"))
        first = candidates[0] if candidates else None
        body = comments.render_needs_link_comment(
            event, delegation_key=key, person=first.person if first else None,
            help=self.link_help)
        await self._comment(event, d, key, body, state="needs_link")
        log.info("delegation_needs_link", people=[c.person.login for c in candidates])
        raise _Permanent(Done("needs_link"))

    # -- outcomes ----------------------------------------------------------------------
    async def _comment(
        self, event: IssueEvent, d: Delegation, key: str, body: str, *, state: DelegationState
    ) -> Delegation:
        """Make the delegation's comment show ``body`` (no request when it already does),
        then record the new state, the comment id and what it shows."""
        digest = hashlib.sha256(body.encode()).hexdigest()
        if d.comment_id is not None and d.comment_sha256 == digest:
            log.info("comment_unchanged", state=state, comment_id=d.comment_id)
        else:
            commenter = self.commenters[event.tracker]
            comment_id = await commenter.upsert_comment(
                event, marker=comments.render_marker(key), body=body, comment_id=d.comment_id)
            d = replace(d, comment_id=comment_id, comment_sha256=digest)
            log.info("comment_posted", state=state, comment_id=comment_id)
        d = replace(d, state=state, updated_at=self.clock())
        await self.store.save_delegation(d)
        return d

    async def _fail(self, event: IssueEvent, d: Delegation, key: str, reason: str, *,
                    outcome: str) -> NoReturn:
        body = comments.render_failed_comment(delegation_key=key, reason=reason)
        await self._comment(event, replace(d, last_error=reason), key, body, state="failed")
        raise _Permanent(Failed(reason, outcome))

    async def _transient(
        self, job: Job, event: IssueEvent, d: Delegation | None, exc: TransientError
    ) -> JobResult:
        decision = decide_retry(attempt=job.attempts, max_attempts=self.config.worker.max_attempts,
                                retry_after=exc.retry_after, jitter=self.jitter())
        if d is not None:
            d = replace(d, last_error=str(exc), updated_at=self.clock())
            await self.store.save_delegation(d)
        if not isinstance(decision, GiveUp):
            log.warning("job_retry_scheduled", error=str(exc), delay=round(decision.seconds, 2))
            return RetryLater(decision.seconds, str(exc))
        log.error("job_gave_up", error=str(exc), attempts=job.attempts)
        if d is None:
            return Failed(str(exc), "gave_up")
        key = delegation_key(d.issue_key, d.generation)
        body = comments.render_gave_up_comment(delegation_key=key, attempts=job.attempts,
                                               reason=_plain(exc))
        try:
            await self._comment(event, d, key, body, state="gave_up")
        except RemoteError as comment_exc:
            log.error("gave_up_comment_failed", error=str(comment_exc))
        return Failed(str(exc), "gave_up")

    def _decrypt(self, account: Account) -> str:
        return self.vault.decrypt(account.key_id, account.ciphertext, owner=account.coder_user_id)


def _work_of(d: Delegation, owner_name: str) -> CreatedWork:
    """The stored task of a delegation (its owner is the account that created it)."""
    kind: Literal["task", "chat"] = "chat" if d.task_kind == "chat" else "task"
    return CreatedWork(kind=kind, id=d.task_id or "", url=d.task_url or "",
                       owner_name=owner_name, status="unknown")


def _prompt_name(candidate: Candidate) -> str:
    person = candidate.person
    return f"@{person.login}" if person.login else f"user {person.id}"


def _plain(exc: RemoteError) -> str:
    service = {"coder": "Coder", "github": "GitHub", "linear": "Linear"}.get(exc.service,
                                                                              exc.service)
    return f"{service}: {exc.message}"
