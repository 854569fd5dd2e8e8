"""Consent: whose Coder account runs the agent, and whether they agreed (§4.4, I6; pure).

The bridge runs an agent with a person's Coder token only on that person's request
or with their consent. The acting user's own request needs nothing more: they
added the label themselves, created the issue with it, or run it with their own
account as the labeler. When the acting user is the issue's author and someone else
added the label, the author must allow it: for good (``allow_others``), or for
this issue (``/agent approve``).
"""

from __future__ import annotations

from service.core.events import IssueEvent

CREATION_ACTIONS = frozenset({"opened", "create"})


def needs_consent(event: IssueEvent, *, acting_role: str, allow_others: bool) -> bool:
    """Whether running as the acting user (``acting_role`` ``author`` or ``labeler``)
    waits for the author's approval."""
    if acting_role != "author" or allow_others:
        return False
    if event.extra.get("action") in CREATION_ACTIONS:
        return False  # creating the issue with the label is the author's own request
    author, labeler = event.author, event.labeler
    return author is not None and labeler is not None and labeler.id != author.id
