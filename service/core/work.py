"""What the core decides on: a delegation of one issue, and the work it made on Coder.

Plain values, shared by the store (which persists them), the Coder backends (which
create the work) and the worker; they live here so that the core needs nothing
from those layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DelegationState = Literal[
    "pending",       # being worked on; no task yet
    "task_created",  # the task/chat exists; the comment may not be posted yet
    "active",        # task exists and the issue carries its link: done, from our side
    "needs_link",    # nobody linked; the issue says how to link
    "failed",        # a permanent error; the issue says why
    "gave_up",       # transient errors until worker.max_attempts; the issue says so
]


@dataclass(frozen=True)
class Delegation:
    """What the bridge did about one trigger on one issue (one row per generation).

    A new generation starts only when the issue is triggered again after its
    previous task has ended (invariant I2). ``task_*`` are set once the task or
    chat exists; ``comment_id`` once the comment is posted, and ``comment_sha256``
    is the SHA-256 of the body it shows.
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


@dataclass(frozen=True)
class CreatedWork:
    """A task or chat that exists on the Coder server; ``url`` is the link for people."""

    kind: Literal["task", "chat"]
    id: str
    url: str
    owner_name: str
    status: str
