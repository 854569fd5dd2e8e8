"""What every job handler shares: its dependencies, and the bridge's side of an issue.

The bridge shows one comment per delegation (found again by its marker, edited only
when what it shows changes) and, with ``github.status_labels``, one label
``agent: <state>``. ``show`` renders the status comment of a delegation from its
state and ``Progress``, and decides how long status checks follow it:

* starting, working, needs input: for as long as it runs (``FOLLOW_WHILE_ACTIVE``);
* done: ``DONE_GRACE_SECONDS`` more, so a pull request Coder learns of late still shows;
* failed, stopped, and everything before the work exists: not at all.
"""

from __future__ import annotations

import hashlib
import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

import msgspec

from service import metrics
from service.accounts import CoderTokens
from service.coder.base import CoderBackend, CreatedWork
from service.config import Config
from service.core import comments
from service.core.delegation import delegation_key
from service.core.events import IssueAddress, IssueEvent, Person
from service.core.retry import RetryIn, decide_retry
from service.core.status import Progress, Shown
from service.core.work import Delegation, DelegationState
from service.errors import PermanentError, RemoteError, TokenRejected, TransientError, VaultError
from service.logging import get_logger
from service.store.base import Account, Store
from service.trackers.base import IssueTracker
from service.vault import Vault
from service.worker.results import RetryLater

log = get_logger("service.worker")

CoderBackendFactory = Callable[[str], CoderBackend]
"""Builds the backend for one user's decrypted Coder token."""

#: ``follow_until`` of running work: followed until it ends.
FOLLOW_WHILE_ACTIVE = 1e18
#: How long a finished turn stays followed, for a pull request link Coder learns late.
DONE_GRACE_SECONDS = 600.0
MARKER_PURPOSE = "comment-markers"
SERVICE_NAMES = {"coder": "Coder", "github": "GitHub", "linear": "Linear"}

SHOWN_STATES: frozenset[str] = frozenset(comments.SHOWN_WORDS)
STATUS_LABELS: dict[str, str] = {
    **{state: f"agent: {words.lower()}" for state, words in comments.SHOWN_WORDS.items()},
    "gave_up": "agent: failed",
}
STATUS_LABEL_NAMES: frozenset[str] = frozenset(STATUS_LABELS.values())


def own_words(text: str) -> PermanentError:
    """A failure the bridge describes in its own words (safe for a public comment)."""
    return PermanentError("coder", text, public=text)


def shown_state(state: DelegationState, *, first: Shown = "starting") -> Shown:
    """The state a delegation's status comment shows: its own, ``failed`` after giving
    up, and ``first`` while it has none yet (pending, waiting for a link or consent)."""
    if state == "gave_up":
        return "failed"
    return state if state in SHOWN_STATES else first  # type: ignore[return-value]


def work_of(d: Delegation, owner_name: str) -> CreatedWork | None:
    """The stored task or chat of a delegation (None before it exists)."""
    if d.task_id is None:
        return None
    kind: Literal["task", "chat"] = "chat" if d.task_kind == "chat" else "task"
    return CreatedWork(kind=kind, id=d.task_id, url=d.task_url or "", owner_name=owner_name,
                       status="unknown")


def acting_person(d: Delegation, trigger: IssueEvent) -> Person | None:
    """The tracker account whose Coder account runs the delegation (None while unknown)."""
    return next((p for p in (trigger.author, trigger.labeler)
                 if p is not None and p.id == d.acting_id), None)


def trigger_of(d: Delegation) -> IssueEvent | None:
    """The trigger a delegation started from (None for delegations made before the
    bridge kept it)."""
    return IssueEvent.from_json(d.trigger_json) if d.trigger_json else None


@dataclass
class WorkerContext:
    """Dependencies of the job handlers, and what they do on an issue."""

    config: Config
    store: Store
    vault: Vault
    coder_backend: CoderBackendFactory
    trackers: Mapping[str, IssueTracker]
    clock: Callable[[], float] = time.time
    jitter: Callable[[], float] = random.random
    tokens: CoderTokens = None  # type: ignore[assignment]  # set in __post_init__ if None
    marker_key: bytes = field(init=False, repr=False)
    link_help: comments.LinkHelp = field(init=False)

    def __post_init__(self) -> None:
        if self.tokens is None:
            self.tokens = CoderTokens(self.store, self.vault, None, clock=self.clock)
        self.marker_key = self.vault.derive(MARKER_PURPOSE)
        self.link_help = comments.LinkHelp(self.config.server.public_url,
                                           self.config.coder.url)

    # -- names and accounts ----------------------------------------------------------
    def marker(self, d: Delegation) -> str:
        """The hidden marker of the delegation's comment."""
        return comments.render_marker(self.marker_key, delegation_key(d.issue_key, d.generation))

    async def account_of(self, d: Delegation) -> Account | None:
        return await self.store.get_account(d.account_id) if d.account_id is not None else None

    async def backend_for(self, account: Account) -> CoderBackend:
        """The Coder backend acting with ``account``'s token (``VaultError`` when no
        configured key opens it; an OAuth token about to expire is refreshed first)."""
        return self.coder_backend(await self.tokens.token_for(account))

    async def rejected(self, account: Account) -> bool:
        """Coder answered 401 for ``account``'s token. An OAuth pair is refreshed once:
        True when that worked (try again); otherwise the token is marked invalid."""
        if account.token_kind == "oauth":
            try:
                await self.tokens.refresh(account)
                return True
            except (TokenRejected, VaultError):
                pass
            except TransientError:
                return True  # Coder could not say: try again later, keep the token
        await self.store.mark_token_invalid(account.id, ciphertext=account.ciphertext)
        metrics.TOKENS_INVALID.inc()
        return False

    def public_reason(self, exc: RemoteError) -> str:
        """What a public comment may say about ``exc``: its public words when it has
        them, else a category and a reference that the log line with the details carries
        (never Coder's ``detail``, a build log, a host or a URL)."""
        if exc.public:
            return exc.public.rstrip(".") + "."
        reference = uuid.uuid4().hex[:10]
        log.warning("failure_reference", reference=reference, service=exc.service,
                    status=exc.status, error=str(exc))
        service = SERVICE_NAMES.get(exc.service, exc.service)
        if isinstance(exc, TransientError):
            what = f"{service} did not answer properly"
        elif exc.status is not None:
            what = f"{service} refused the request (HTTP {exc.status})"
        else:
            what = f"{service} gave an answer coder-bridge could not use"
        return f"{what}. Its operators find the details in coder-bridge's log under {reference}."

    def retry_later(self, attempt: int, exc: TransientError) -> RetryLater | None:
        """When to run a job again after ``exc``; None once the attempts are used up."""
        decision = decide_retry(attempt=attempt, max_attempts=self.config.worker.max_attempts,
                                retry_after=exc.retry_after, jitter=self.jitter())
        if isinstance(decision, RetryIn):
            return RetryLater(decision.seconds, str(exc))
        return None

    # -- the issue -------------------------------------------------------------------
    async def post(
        self, address: IssueAddress, d: Delegation, body: str, *, state: DelegationState
    ) -> Delegation:
        """Make the delegation's comment show ``body`` (no request when it already does),
        then record the state, the comment and what it shows, and move the status label."""
        digest = hashlib.sha256(body.encode()).hexdigest()
        unchanged = d.comment_id is not None and d.comment_sha256 == digest
        if unchanged:
            log.debug("comment_unchanged", state=state, comment_id=d.comment_id)
        else:
            comment_id = await self.trackers[address.tracker].upsert_comment(
                address, marker=self.marker(d), body=body, comment_id=d.comment_id)
            metrics.COMMENT_EDITS.labels("edited" if d.comment_id else "created").inc()
            log.info("comment_posted", state=state, comment_id=comment_id)
            d = replace(d, comment_id=comment_id, comment_sha256=digest)
        previous = d.state
        if not unchanged or state != previous:
            d = replace(d, state=state, updated_at=self.clock())
        await self.store.save_delegation(d)
        await self._move_status_label(address, previous, state)
        return d

    async def show(
        self, address: IssueAddress, d: Delegation, shown: Shown, progress: Progress, *,
        checked: str | None = None, follow: bool = True,
    ) -> Delegation:
        """Show the delegation's status comment in state ``shown`` with ``progress``, and
        follow it with status checks as the module docstring says. ``checked`` is what
        the status check that decided this saw; anything else (a command, a trigger)
        leaves it empty, so that the next status round looks at the work again.
        ``follow=False``: status checks stop following it, whatever its state."""
        account = await self.account_of(d)
        runs_as = account.coder_username if account is not None else ""
        view = comments.StatusView(shown=shown, work=work_of(d, runs_as), runs_as=runs_as,
                                   progress=progress, command=self.config.delegation.command)
        body = comments.render_status_comment(view, marker=self.marker(d))
        d = replace(d, progress_json=progress.to_json(), checked=checked,
                    follow_until=self._follow_until(d, shown, progress) if follow else None)
        return await self.post(address, d, body, state=shown)

    async def stop(self, address: IssueAddress, d: Delegation, *, stopped_by: str,
                   cause: str) -> Delegation:
        """Stop the delegation's agent in Coder (when its work exists), drop the messages
        held for it, and show **Stopped** ``stopped_by``. Raises ``PermanentError`` when
        the agent cannot be stopped with the stored token (the issue is then told by the
        caller), ``RemoteError`` as Coder answers."""
        account = await self.account_of(d)
        work = work_of(d, account.coder_username if account else "")
        if work is not None:
            if account is None or account.token_status != "valid":
                raise own_words("the Coder token that runs this agent was rejected or removed, "
                                "so the bridge cannot stop it: stop it in Coder")
            try:
                await (await self.backend_for(account)).stop(work)
            except VaultError:
                raise own_words("the stored Coder token cannot be decrypted, so the bridge "
                                "cannot stop the agent: stop it in Coder") from None
            except TokenRejected as exc:
                if await self.rejected(account):
                    raise TransientError("coder", "the Coder token was renewed") from exc
                raise
        for held in await self.store.queued_followups(d.id):
            await self.store.settle_followup(held.id, sent=False, now=self.clock())
        progress = msgspec.structs.replace(
            Progress.from_json(d.progress_json), stopped_by=stopped_by, held=0, worked=False,
            ended_at=self.clock())
        metrics.STOPS.labels(cause).inc()
        log.info("agent_stopped", cause=cause, task_url=d.task_url)
        return await self.show(address, d, "stopped", progress)

    async def reply(self, address: IssueAddress, name: str, text: str) -> None:
        """Post a short answer (to a command) once: ``name`` identifies it, so a retry
        finds the answer it posted instead of posting another."""
        marker = comments.render_marker(self.marker_key, name)
        await self.trackers[address.tracker].upsert_comment(
            address, marker=marker, body=comments.render_reply(text, marker=marker),
            comment_id=None)
        metrics.COMMENT_EDITS.labels("created").inc()

    def _follow_until(self, d: Delegation, shown: Shown, progress: Progress) -> float | None:
        if not self.config.sync.enabled or d.task_id is None or d.trigger_json is None:
            return None
        if shown in ("starting", "working", "needs_input"):
            return FOLLOW_WHILE_ACTIVE
        if shown == "done":
            return (progress.ended_at or self.clock()) + DONE_GRACE_SECONDS
        return None

    async def _move_status_label(
        self, address: IssueAddress, previous: DelegationState, state: DelegationState
    ) -> None:
        """``agent: <state>`` on a GitHub issue, with ``github.status_labels``. A label
        that cannot be set is logged: the comment, which says the same, is what counts."""
        github = self.config.github
        label = STATUS_LABELS.get(state)
        old = STATUS_LABELS.get(previous)
        if (address.tracker != "github" or github is None or not github.status_labels
                or label is None or label == old):
            return
        try:
            await self.trackers["github"].set_status_label(address, label,
                                                           replaces=STATUS_LABEL_NAMES)
        except RemoteError as exc:
            log.warning("status_label_not_set", label=label, error=str(exc))
