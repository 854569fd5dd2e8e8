"""Tracker-neutral view of an inbound delivery, and what a webhook parser returns.

Parsers in ``service.trackers.*.webhook`` turn a verified delivery into one of
``Trigger`` (delegate this issue), ``Ignored`` (answer 200, do nothing, with the
reason) or ``Ping``. ``IssueEvent`` is what the job queue stores and the
worker reads back: everything the worker needs, so that it never has to look
at the raw payload again.
"""

from __future__ import annotations

from typing import Literal

import msgspec

Tracker = Literal["github", "linear"]


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


class Trigger(msgspec.Struct, frozen=True):
    """The delivery asks for a delegation."""

    event: IssueEvent


class Ignored(msgspec.Struct, frozen=True):
    """The delivery is valid but asks for nothing; ``reason`` says why (logged and answered)."""

    reason: str


class Ping(msgspec.Struct, frozen=True):
    """A tracker's connectivity check; answered 200."""


Decision = Trigger | Ignored | Ping
