"""What the worker asks of a Coder deployment, whichever API it speaks.

A backend (``tasks.TasksBackend``, later ``chats.ChatsBackend``) turns a
``WorkSpec`` into a ``CreatedWork`` idempotently: calling ``ensure`` twice for
the same spec, or after a failure whose outcome is unknown, yields the same
task or chat, never a second one (invariant I1).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from service.core.status import ChatSnapshot, TaskSnapshot
from service.core.work import CreatedWork

__all__ = ["CoderBackend", "CoderUser", "CreatedWork", "OnWait", "SendOutcome", "Snapshot",
           "WorkSpec"]

OnWait = Callable[[], Awaitable[None]]
"""Called once when creating work must wait (a workspace builds) before it exists."""

Snapshot = TaskSnapshot | ChatSnapshot
SendOutcome = Literal["sent", "busy", "not_ready", "gone"]
"""What became of a follow-up message: ``sent`` (a chat may have queued it), ``busy``
(the agent cannot take input now: hold it and try again when it is ready),
``not_ready`` (the task is starting or paused), ``gone`` (deleted or archived)."""


@dataclass(frozen=True)
class WorkSpec:
    """One delegation's request to Coder.

    ``name`` is deterministic per delegation (``cb-`` + 16 hex, valid as a Coder
    task/workspace name) and is the idempotency key for the Tasks API;
    ``delegation_key`` is the same identity for APIs that key on labels.
    ``template``/``preset`` come from the matched route or ``[coder]``; an empty
    preset means "the template's default preset, if any".
    """

    delegation_key: str
    name: str
    prompt: str
    display_name: str
    template: str
    preset: str
    organization: str


@dataclass(frozen=True)
class CoderUser:
    """The owner of a token, from ``GET /api/v2/users/me``."""

    id: str
    username: str
    organization_ids: tuple[str, ...] = ()


class CoderBackend(Protocol):
    """One Coder API (Tasks or Chats) on one deployment, with one user's token."""

    async def ensure(self, spec: WorkSpec, *, may_exist: bool,
                     on_wait: OnWait | None = None) -> CreatedWork:
        """Return the task/chat for ``spec``, creating it only if it does not exist.

        ``on_wait`` is awaited before a long wait for something the work needs first
        (a chat's workspace building), so that the issue can say **Starting** at once.

        ``may_exist`` says an earlier attempt may have created it (a retry after an
        ambiguous failure): the backend then looks it up before creating. A name
        conflict on create is always resolved by looking the existing one up.
        Raises ``RemoteError`` subclasses (see ``service.errors``).
        """
        ...

    async def is_active(self, work: CreatedWork) -> bool:
        """True while the task/chat is still working (or its state is unknown).

        False when it has ended (complete, failed, paused, stopped) or no longer
        exists; a new trigger on the issue then starts a new delegation (I2).
        """
        ...

    async def list_snapshots(self, works: list[CreatedWork]) -> dict[str, Snapshot]:
        """Snapshots of every one of ``works`` that one list call of the user's tasks or
        chats shows, by id (one request per API; the rest are left out)."""
        ...

    async def snapshot(self, work: CreatedWork) -> Snapshot:
        """A fresh snapshot of one task or chat (``exists`` False when it is gone)."""
        ...

    async def send(self, work: CreatedWork, text: str) -> SendOutcome:
        """Give the agent a follow-up message."""
        ...

    async def stop(self, work: CreatedWork) -> None:
        """Stop the agent: a task is paused (deleted where pausing is not served), a chat
        interrupted and archived. Work that is gone already is left alone."""
        ...
