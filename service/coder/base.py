"""What the worker asks of a Coder deployment, whichever API it speaks.

A backend (``tasks.TasksBackend``, later ``chats.ChatsBackend``) turns a
``WorkSpec`` into a ``CreatedWork`` idempotently: calling ``ensure`` twice for
the same spec, or after a failure whose outcome is unknown, yields the same
task or chat, never a second one (invariant I1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from service.core.work import CreatedWork

__all__ = ["CoderBackend", "CoderUser", "CreatedWork", "WorkSpec"]


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

    async def ensure(self, spec: WorkSpec, *, may_exist: bool) -> CreatedWork:
        """Return the task/chat for ``spec``, creating it only if it does not exist.

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
