"""What the core decides on: a delegation of one issue, and the work it made on Coder.

Plain values, shared by the store (which persists them), the Coder backends (which
create the work) and the worker; they live here so that the core needs nothing
from those layers.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal

DelegationState = Literal[
    "pending",           # being worked on; no task yet
    "needs_link",        # nobody who may act has connected Coder; the issue says how
    "awaiting_consent",  # the author has not approved yet; the issue says how
    "starting",          # the task or chat is being prepared (or exists, not yet running)
    "working",           # the agent works on it
    "needs_input",       # the agent waits for an answer in Coder
    "done",              # the agent's turn ended; a follow-up starts it again
    "failed",            # a permanent error, before or after the work existed
    "gave_up",           # transient errors until worker.max_attempts
    "stopped",           # stopped: by a command, unlabel, close, runtime limit, or in Coder
]

DELEGATION_STATES: tuple[DelegationState, ...] = typing.get_args(DelegationState)

#: States of work that runs (or may run again at once): status checks follow it.
ACTIVE_STATES: frozenset[DelegationState] = frozenset({"starting", "working", "needs_input"})
#: ``delegations list --state`` and ``/admin/delegations?state=``: the states each
#: choice selects (None: every state).
STATE_FILTERS: dict[str, frozenset[DelegationState] | None] = {
    "active": ACTIVE_STATES,
    "needs_link": frozenset({"needs_link"}),
    "awaiting_consent": frozenset({"awaiting_consent"}),
    "done": frozenset({"done"}),
    "failed": frozenset({"failed", "gave_up"}),
    "stopped": frozenset({"stopped"}),
    "all": None,
}
#: States a new trigger of the issue may not replace (I2): the current work goes on.
LIVE_STATES: frozenset[DelegationState] = ACTIVE_STATES | {"pending", "done"}


@dataclass(frozen=True)
class Delegation:
    """What the bridge did about one trigger on one issue (one row per generation).

    A new generation starts only when the issue is triggered again after its
    previous task has ended (invariant I2). ``task_*`` are set once the task or
    chat exists; ``comment_id`` once the comment is posted, and ``comment_sha256``
    is the SHA-256 of the body it shows. ``trigger_json`` is the ``IssueEvent`` that
    started it (the issue, its author, who added the label); ``acting_id`` the
    tracker account whose Coder account runs it; ``progress_json`` what the comment
    shows besides the state (``service.core.status.Progress``); status checks follow
    it while ``follow_until`` lies ahead; ``checked`` is what the last status check
    saw and showed (see ``service.worker.sync``).
    """

    id: int
    issue_key: str
    generation: int
    tracker: str
    delivery_id: str
    state: DelegationState
    account_id: int | None
    task_kind: str | None
    task_id: str | None
    task_name: str | None
    task_url: str | None
    comment_id: str | None
    attempts: int
    last_error: str | None
    created_at: float
    updated_at: float
    comment_sha256: str | None = None
    trigger_json: str | None = None
    acting_id: str | None = None
    progress_json: str | None = None
    follow_until: float | None = None
    checked: str | None = None


@dataclass(frozen=True)
class CreatedWork:
    """A task or chat that exists on the Coder server; ``url`` is the link for people."""

    kind: Literal["task", "chat"]
    id: str
    url: str
    owner_name: str
    status: str
