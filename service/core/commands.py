"""Commands in issue comments (interface §4.3), and who may give them (pure).

A comment whose first line starts with the command word (``delegation.command``,
``/agent``) talks to the issue's delegation:

* ``/agent stop``: stop the agent (the acting user, or whoever added the label);
* ``/agent approve``: give the consent a pending request waits for (the author);
* ``/agent <text>``: a follow-up message for the agent (the acting user); the text
  is the rest of the first line and every line after it.

``decide_command`` says what to do, or which short reply explains why not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

CommandName = Literal["follow_up", "stop", "approve", "help"]


@dataclass(frozen=True)
class Command:
    """A parsed command; ``text`` is the follow-up message (empty for the others)."""

    name: CommandName
    text: str = ""


def parse_command(body: str, word: str) -> Command | None:
    """The command in ``body``, or None when its first line does not start with
    ``word`` (followed by a space, or alone)."""
    stripped = body.lstrip()
    first, _, rest = stripped.partition("\n")
    first = first.strip()
    if first != word and not first.startswith(word + " ") and not first.startswith(word + "\t"):
        return None
    argument = first[len(word):].strip()
    if not argument and not rest.strip():
        return Command("help")
    if not rest.strip() and argument.lower() in ("stop", "approve"):
        return Command("stop" if argument.lower() == "stop" else "approve")
    text = "\n".join(part for part in (argument, rest.strip()) if part)
    return Command("follow_up", text)


@dataclass(frozen=True)
class Parties:
    """Who is who on a delegation, by tracker account id: the issue's author, who
    added the label, and whose Coder account runs the agent."""

    author: str | None
    labeler: str | None
    acting: str | None


@dataclass(frozen=True)
class Allowed:
    """Carry the command out."""

    command: Command


@dataclass(frozen=True)
class Refused:
    """Do nothing but answer: ``reason`` names who may, or why it cannot be done."""

    reason: Literal["not_acting_user", "not_acting_or_labeler", "not_author", "no_delegation",
                    "nothing_to_approve", "not_running", "help"]


CommandDecision = Allowed | Refused


#: States whose work exists and may take a follow-up or a stop (a finished or failed
#: turn starts again with a follow-up).
RUNNING_STATES = frozenset({"starting", "working", "needs_input", "done", "failed"})
#: States of a request that waits for something before any work exists.
WAITING_STATES = frozenset({"pending", "needs_link", "awaiting_consent"})


def decide_command(
    command: Command, commenter: str, parties: Parties | None, *, state: str | None,
    has_work: bool, approved_here: bool = False,
) -> CommandDecision:
    """Whether ``commenter`` may give ``command`` to a delegation in ``state``.

    ``parties`` is None when the issue has no delegation; ``has_work`` says its task or
    chat exists; ``approved_here`` says this very comment approved it already (a
    retried job carries the approval through).

    * ``approve``: the author, while the delegation awaits consent;
    * ``stop``: the acting user or the labeler, while the work runs or the request waits;
    * a follow-up: the acting user, while the work exists and was not stopped.
    """
    if command.name == "help":
        return Refused("help")
    if parties is None:
        return Refused("no_delegation")
    running = has_work and state in RUNNING_STATES
    if command.name == "approve":
        if commenter != parties.author:
            return Refused("not_author")
        return (Allowed(command) if state == "awaiting_consent" or approved_here
                else Refused("nothing_to_approve"))
    if command.name == "stop":
        if commenter not in (parties.acting, parties.labeler):
            return Refused("not_acting_or_labeler")
        return Allowed(command) if running or state in WAITING_STATES else Refused("not_running")
    if commenter != parties.acting:
        return Refused("not_acting_user")
    return Allowed(command) if running else Refused("not_running")
