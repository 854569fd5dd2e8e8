"""Pure decisions of a delegation: which generation to work on, who acts, what names to use.

Invariant I2 (one active delegation per issue) is decided here: a trigger on an
issue whose current delegation already has a task either continues that
delegation (same delivery, or the task's comment is still to be posted) or asks
the shell to check whether the task is still active (``CheckActive``); only an
ended task lets a new generation start.

An issue created with the trigger label sends two triggers, ``opened`` and one
``labeled`` per label, in no fixed order: they are one request (``SameRequest``),
so whichever comes second changes nothing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from service.core.events import IssueEvent, Person
from service.core.work import Delegation

#: A label added this soon after the issue was created was chosen at its creation.
CREATION_WINDOW_SECONDS = 10.0


def delegation_key(issue_key: str, generation: int) -> str:
    """The identity of one delegation: issue key and generation (used in markers and labels)."""
    return f"{issue_key}#{generation}"


def task_name(key: str) -> str:
    """Deterministic Coder task/workspace name for a delegation: ``cb-`` + 16 hex (19 chars).

    Valid under Coder's name rules (1-32 chars, alphanumerics and single hyphens),
    and the same on every attempt, so a retry finds the task instead of making a second.
    """
    return "cb-" + hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class StartNew:
    """Create delegation ``generation`` for the issue and work on it."""

    generation: int


@dataclass(frozen=True)
class Continue:
    """Work on this existing delegation (idempotently: create what is missing)."""

    delegation: Delegation


@dataclass(frozen=True)
class CheckActive:
    """Another trigger for an issue whose delegation has a task: ask Coder whether it is
    still active. Active → point to it; ended → ``StartNew(generation + 1)``."""

    delegation: Delegation


@dataclass(frozen=True)
class SameRequest:
    """The delivery is another trigger of the request the issue's delegation already
    answers (the issue's creation): nothing to do."""

    delegation: Delegation


Plan = StartNew | Continue | CheckActive | SameRequest


def part_of_creation(event: IssueEvent) -> bool:
    """Whether the trigger is the issue's creation with the label: an ``opened``
    (GitHub) or ``create`` (Linear) delivery, or a ``labeled`` one whose issue was
    updated within ``CREATION_WINDOW_SECONDS`` of its creation."""
    action = event.extra.get("action")
    if action in ("opened", "create"):
        return True
    if action != "labeled":
        return False
    try:
        created = datetime.fromisoformat(event.extra["created_at"])
        updated = datetime.fromisoformat(event.extra["updated_at"])
    except (KeyError, ValueError):
        return False
    return abs((updated - created).total_seconds()) <= CREATION_WINDOW_SECONDS


def plan_delegation(
    current: Delegation | None, *, delivery_id: str, at_creation: bool = False
) -> Plan:
    """Decide which delegation a triggering delivery works on; ``at_creation`` says the
    delivery is ``part_of_creation``."""
    if current is None:
        return StartNew(1)
    if at_creation and current.delivery_id != delivery_id:
        return SameRequest(current)
    if current.task_id is None:
        # No task yet (in progress, waiting for a link, or failed before creating one):
        # reuse it, so the same comment is edited and the same task name is used.
        return Continue(current)
    if current.delivery_id == delivery_id or current.comment_id is None:
        # The same delivery again, or a task whose comment is still to be posted.
        return Continue(current)
    return CheckActive(current)


@dataclass(frozen=True)
class Candidate:
    """A person who may run the task, and in which role (``author`` or ``labeler``)."""

    person: Person
    role: str


def acting_candidates(event: IssueEvent, order: tuple[str, ...]) -> list[Candidate]:
    """The people to try, in ``delegation.acting_user`` order, without repeats."""
    seen: set[str] = set()
    candidates: list[Candidate] = []
    for role in order:
        person = event.author if role == "author" else event.labeler
        if person is None or person.id in seen:
            continue
        seen.add(person.id)
        candidates.append(Candidate(person, role))
    return candidates


def prompt_name(person: Person | None) -> str:
    """How the prompt names a person: ``@login``, else their id."""
    if person is None:
        return "unknown"
    return f"@{person.login}" if person.login else f"user {person.id}"
