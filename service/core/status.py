"""What the issue shows about running work: Coder's task and chat states, mapped (pure).

A status check observes a task (``TaskSnapshot``) or a chat (``ChatSnapshot``) and
``observe_task`` / ``observe_chat`` turn it, with what the delegation remembers
(``Progress``), into the state the issue shows and the new ``Progress``. The tables
(interface §4.2; reference coder-tasks.md §13, coder-chats.md §6, §12-§13):

Tasks (``status`` by ``current_state.state``)::

    pending, initializing            → starting
    active + no state                → working (the agent has not reported yet)
    active + working                 → working
    active + idle | complete         → done, once it has worked (idle before that: working)
    active + failed | failure        → failed, with the agent's message
    paused, or gone (404)            → stopped
    error                            → failed (the workspace build failed or its apps did)
    unknown                          → what it showed before

Chats (``status``, ``archived``, ``last_error``)::

    pending, running, interrupting   → working
    paused                           → needs input (its queued message is being edited)
    requires_action                  → needs input
    waiting | completed              → done, once it has run (or shows a result); else working
    error                            → failed, with Coder's short ``last_error`` message
    archived, or gone (404)          → stopped

"Once it has worked": a task or chat seen idle right after it was created, or right
after a follow-up, has not started its turn yet. It has worked when a working state
was seen since the last message the bridge sent it (``Progress.sent_at``; remembered
in ``Progress.worked``), or when it changed later than ``SETTLE_SECONDS`` after that
message (a task's reported state, a chat's ``updated_at``): a turn too quick for any
check to see it working. Failing both, work still idle ``QUIET_SECONDS`` after the
message has had its turn (``is_settling`` says until when status rounds look at it
again without a change). Work shown done stays done while it stays idle (a pull
request or a message may still arrive).
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

import msgspec

Shown = Literal["starting", "working", "needs_input", "done", "failed", "stopped"]

MAX_MESSAGE_CHARS = 500
MAX_FAILURE_CHARS = 300
SETTLE_SECONDS = 10.0
QUIET_SECONDS = 60.0


class Progress(msgspec.Struct, frozen=True):
    """What a delegation's comment shows besides its state, kept between checks.

    ``started_at``: when the work started (UNIX seconds); ``pr_url``: the pull
    request the agent opened; ``message``: the agent's last message or summary;
    ``failure``: why it failed, in plain words; ``stopped_by``: who or what stopped
    it, as the comment continues "**Stopped** ..." (``by @alice``, ``in Coder
    (paused)``); ``ended_at``: when it reached done, failed or
    stopped (the grace period for a late pull request link counts from here);
    ``sent_at``: when the bridge last gave it a message (the prompt, a follow-up);
    ``worked``: a working state was seen since then; ``held``: follow-up messages the
    bridge holds until a task can take them (the Tasks API has no queue);
    ``approved_in``: the comment in which the author approved (consent, §4.4);
    ``notice``: something people must know that is not the agent's state (the bridge
    can no longer follow it).
    """

    started_at: float | None = None
    pr_url: str = ""
    message: str = ""
    failure: str = ""
    stopped_by: str = ""
    ended_at: float | None = None
    sent_at: float | None = None
    worked: bool = False
    held: int = 0
    approved_in: str = ""
    notice: str = ""

    def to_json(self) -> str:
        return _ENCODER.encode(self).decode()

    @classmethod
    def from_json(cls, text: str | None) -> Progress:
        return _DECODER.decode(text) if text else cls()


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(Progress)


class TaskSnapshot(msgspec.Struct, frozen=True):
    """A task as Coder answers about it; ``exists`` False after a 404. ``state_at``:
    when ``current_state`` was reported (UNIX seconds)."""

    exists: bool
    status: str = "unknown"
    state: str | None = None
    message: str = ""
    uri: str = ""
    state_at: float | None = None


class ChatSnapshot(msgspec.Struct, frozen=True):
    """A chat as Coder answers about it; ``exists`` False after a 404.

    ``summary``: ``last_turn_summary``/``summary`` or the newest assistant message;
    ``pr_url``: ``diff_status.url``; ``error``: ``last_error.message``; ``updated_at``
    in UNIX seconds.
    """

    exists: bool
    status: str = "unknown"
    archived: bool = False
    error: str = ""
    summary: str = ""
    pr_url: str = ""
    updated_at: float | None = None


class Observed(msgspec.Struct, frozen=True):
    """What a check decided: the state to show and what the comment keeps."""

    shown: Shown
    progress: Progress


_TASK_STARTING = frozenset({"pending", "initializing"})
_TASK_FINISHED = frozenset({"idle", "complete"})
_TASK_FAILED = frozenset({"failed", "failure"})
_CHAT_WORKING = frozenset({"pending", "running", "interrupting"})
_CHAT_NEEDS_INPUT = frozenset({"requires_action", "paused"})
_CHAT_IDLE = frozenset({"waiting", "completed"})


def observe_task(task: TaskSnapshot, before: Shown, progress: Progress, *, now: float) -> Observed:
    """The state a task shows, from the table in the module docstring."""
    progress = _keep_pr(progress, task.uri)
    if task.exists and task.message and task.status == "active":
        progress = msgspec.structs.replace(progress,
                                           message=plain(task.message, MAX_MESSAGE_CHARS))
    if not task.exists:
        return _ended("stopped", progress, now,
                      stopped_by=progress.stopped_by or "in Coder (deleted)")
    if task.status == "paused":
        return _ended("stopped", progress, now,
                      stopped_by=progress.stopped_by or "in Coder (paused)")
    if task.status == "error":
        return _ended("failed", progress, now,
                      failure="the task's workspace failed to build, or its apps are unhealthy")
    if task.status in _TASK_STARTING:
        return Observed("starting", progress)
    if task.status != "active":
        return Observed(before, progress)  # unknown: keep what was shown
    if task.state in _TASK_FAILED:
        return _ended("failed", progress, now, failure=(
            plain(task.message, MAX_FAILURE_CHARS) or "the agent reported a failure"))
    finished = before == "done" or _has_worked(progress, task.state_at, now)
    if task.state in _TASK_FINISHED and finished:
        return _ended("done", progress, now)
    worked = progress.worked or task.state == "working"
    return Observed("working", _active(progress, now, worked=worked))


def observe_chat(chat: ChatSnapshot, before: Shown, progress: Progress, *, now: float) -> Observed:
    """The state a chat shows, from the table in the module docstring."""
    progress = _keep_pr(progress, chat.pr_url)
    if chat.summary:
        progress = msgspec.structs.replace(progress,
                                           message=plain(chat.summary, MAX_MESSAGE_CHARS))
    if not chat.exists or chat.archived:
        how = "in Coder (deleted)" if not chat.exists else "in Coder (archived)"
        return _ended("stopped", progress, now, stopped_by=progress.stopped_by or how)
    if chat.status == "error":
        return _ended("failed", progress, now,
                      failure=plain(chat.error, MAX_FAILURE_CHARS) or "Coder reported an error")
    if chat.status in _CHAT_NEEDS_INPUT:
        return Observed("needs_input", _active(progress, now, worked=True))
    if chat.status in _CHAT_IDLE:
        if before == "done" or _has_worked(progress, chat.updated_at, now):
            return _ended("done", progress, now)
        return Observed("working", _active(progress, now, worked=False))
    return Observed("working", _active(progress, now, worked=True))  # running, and unknown ones


def _has_worked(progress: Progress, changed_at: float | None, now: float) -> bool:
    """Whether the turn started by the bridge's last message has run (module docstring)."""
    if progress.worked or progress.sent_at is None:
        return progress.worked
    return ((changed_at is not None and changed_at >= progress.sent_at + SETTLE_SECONDS)
            or now >= progress.sent_at + QUIET_SECONDS)


def is_settling(progress: Progress, *, now: float) -> bool:
    """Whether the bridge's last message may still be waiting for its turn to be seen:
    not seen working yet, and sent less than ``QUIET_SECONDS`` ago (plus a margin for
    the check that decides it)."""
    return (not progress.worked and progress.sent_at is not None
            and now <= progress.sent_at + QUIET_SECONDS + 2 * SETTLE_SECONDS)


def _active(progress: Progress, now: float, *, worked: bool) -> Progress:
    return msgspec.structs.replace(progress, worked=worked, ended_at=None, failure="",
                                   started_at=progress.started_at or now)


def _ended(shown: Shown, progress: Progress, now: float, *, failure: str = "",
           stopped_by: str = "") -> Observed:
    ended = progress.ended_at if progress.ended_at is not None else now
    return Observed(shown, msgspec.structs.replace(progress, ended_at=ended, failure=failure,
                                                   stopped_by=stopped_by, worked=False))


def _keep_pr(progress: Progress, url: str) -> Progress:
    """A pull request link, once known, stays (a later check may not repeat it)."""
    if url and is_web_link(url) and url != progress.pr_url:
        return msgspec.structs.replace(progress, pr_url=url)
    return progress


def is_web_link(url: str) -> bool:
    """An ``https://`` URL with a host and no spaces or markup: safe to show as a link."""
    parts = urlsplit(url)
    return (parts.scheme == "https" and bool(parts.hostname) and not any(
        ch in url for ch in " <>\"'()[]`\n"))


def plain(text: str, limit: int) -> str:
    """One line of ``text``, at most ``limit`` characters (cut with an ellipsis)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def fingerprint(snapshot: TaskSnapshot | ChatSnapshot) -> str:
    """What a status check compares between checks: a snapshot's visible fields, without
    timestamps (a chat's ``updated_at`` moves with every message it streams)."""
    fields: tuple[object, ...]
    if isinstance(snapshot, TaskSnapshot):
        fields = ("task", snapshot.exists, snapshot.status, snapshot.state, snapshot.message,
                  snapshot.uri)
    else:
        fields = ("chat", snapshot.exists, snapshot.status, snapshot.archived, snapshot.error,
                  snapshot.summary, snapshot.pr_url)
    return "|".join(str(field) for field in fields)
