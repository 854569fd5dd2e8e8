"""Tracker-neutral view of an inbound delivery, and what a webhook parser returns.

Parsers in ``service.trackers.*.webhook`` turn a verified delivery into one of
``Trigger`` (delegate this issue), ``Comment`` (a comment that may talk to the
agent), ``Change`` (the trigger label removed, the issue closed), ``Ignored``
(answer 200, do nothing, with the reason) or ``Ping``. The events they carry
(``IssueEvent``, ``CommentEvent``, ``ChangeEvent``) are what the job queue stores
and the worker reads back: everything the worker needs, so that it never has to
look at the raw payload again. Each names its issue the same way (``IssueAddress``),
which is all a tracker client needs to comment on it.
"""

from __future__ import annotations

from typing import Literal, Protocol

import msgspec

Tracker = Literal["github", "linear"]
EventKind = Literal["trigger", "comment", "change"]


class IssueAddress(Protocol):
    """How every event (and a delegation's trigger) names its issue."""

    @property
    def tracker(self) -> Tracker: ...
    @property
    def issue_key(self) -> str: ...
    @property
    def issue_id(self) -> str: ...
    @property
    def number(self) -> str: ...
    @property
    def url(self) -> str: ...
    @property
    def scope(self) -> str: ...
    @property
    def installation_id(self) -> int | None: ...


class Person(msgspec.Struct, frozen=True):
    """A tracker account: ``id`` is the stable id (GitHub numeric id as text, Linear uuid)."""

    id: str
    login: str = ""


class IssueEvent(msgspec.Struct, frozen=True):
    """A triggering delivery, reduced to what delegation needs.

    ``issue_key`` identifies the issue across deliveries and trackers (e.g.
    ``github:186853002:1`` = repository id and issue number; ``linear:<issue uuid>``);
    it is the lock that keeps one issue's jobs from running at once.
    ``number`` is how people name the issue (``1`` on GitHub, ``ENG-123`` on Linear).
    ``scope`` is what routes match on: ``owner/repo`` on GitHub, the team key on Linear.
    """

    tracker: Tracker
    delivery_id: str
    issue_key: str
    issue_id: str
    number: str
    title: str
    body: str
    url: str
    scope: str
    author: Person | None
    labeler: Person | None
    installation_id: int | None = None
    extra: dict[str, str] = msgspec.field(default_factory=dict)

    def to_json(self) -> str:
        """Serialise for the job queue (``from_json`` reverses it exactly): the fields
        in order, each ``Person`` as an object."""
        return _ENCODER.encode(self).decode()

    @classmethod
    def from_json(cls, text: str) -> IssueEvent:
        """Rebuild an event stored with ``to_json``."""
        return _DECODER.decode(text)


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(IssueEvent)


class CommentEvent(msgspec.Struct, frozen=True):
    """A new comment whose first line starts with the command word (GitHub
    ``issue_comment`` ``created``, Linear ``Comment`` ``create``).

    ``comment_id`` is the comment's id (to react to it); ``author`` who wrote it;
    ``text`` its body. The issue is named as in ``IssueEvent``; Linear's comment
    deliveries carry no issue number or title (``number`` is then the identifier
    when known, else empty).
    """

    tracker: Tracker
    delivery_id: str
    issue_key: str
    issue_id: str
    number: str
    url: str
    scope: str
    comment_id: str
    author: Person
    text: str
    installation_id: int | None = None
    extra: dict[str, str] = msgspec.field(default_factory=dict)

    def to_json(self) -> str:
        return _ENCODER.encode(self).decode()

    @classmethod
    def from_json(cls, text: str) -> CommentEvent:
        return _COMMENT_DECODER.decode(text)


class ChangeEvent(msgspec.Struct, frozen=True):
    """The trigger label was removed from the issue (``unlabeled``), or the issue was
    closed (``closed``; on Linear: moved to a completed, canceled or duplicate state).
    ``actor`` is who did it, when known."""

    tracker: Tracker
    delivery_id: str
    issue_key: str
    issue_id: str
    number: str
    url: str
    scope: str
    change: Literal["unlabeled", "closed"]
    actor: Person | None = None
    installation_id: int | None = None
    extra: dict[str, str] = msgspec.field(default_factory=dict)

    def to_json(self) -> str:
        return _ENCODER.encode(self).decode()

    @classmethod
    def from_json(cls, text: str) -> ChangeEvent:
        return _CHANGE_DECODER.decode(text)


class IssueName(msgspec.Struct, frozen=True):
    """What names the issue in any stored event (trigger, comment, change)."""

    tracker: str = ""
    scope: str = ""
    number: str = ""


def issue_name(event_json: str) -> IssueName:
    """The issue a stored event is about (empty fields when it cannot be read)."""
    try:
        return _NAME_DECODER.decode(event_json)
    except msgspec.DecodeError:
        return IssueName()


_NAME_DECODER = msgspec.json.Decoder(IssueName)
_COMMENT_DECODER = msgspec.json.Decoder(CommentEvent)
_CHANGE_DECODER = msgspec.json.Decoder(ChangeEvent)


class Trigger(msgspec.Struct, frozen=True):
    """The delivery asks for a delegation."""

    event: IssueEvent


class Comment(msgspec.Struct, frozen=True):
    """The delivery is a comment that may be a command to the issue's agent."""

    event: CommentEvent


class Change(msgspec.Struct, frozen=True):
    """The delivery may end the issue's delegation (label removed, issue closed)."""

    event: ChangeEvent


class Ignored(msgspec.Struct, frozen=True):
    """The delivery is valid but asks for nothing; ``reason`` says why (logged and
    answered); ``code`` names the reason in the metrics when it is worth counting
    apart (a small fixed set, e.g. ``outsider``)."""

    reason: str
    code: str = ""


class Ping(msgspec.Struct, frozen=True):
    """A tracker's connectivity check; answered 200."""


Decision = Trigger | Comment | Change | Ignored | Ping
