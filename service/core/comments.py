"""Bodies of the bridge's issue comments (pure).

Every body ends with a hidden marker naming the delegation, so the comment is
found again and edited in place, never duplicated. Nothing here ever receives
a token: error texts come from ``RemoteError.message``, which is written to be
shown to people. Names that come from outside (a Linear display name, a Coder
username) are shown as inert code, so they cannot inject a link, a mention or
markup into a comment everyone on the issue reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from service.core.events import IssueEvent, Person
from service.core.work import CreatedWork

MARKER_PREFIX = "<!-- coder-bridge:delegation="
MAX_REASON_CHARS = 1500
MAX_NAME_CHARS = 80
# GitHub logins: alphanumerics and single hyphens (bots end in "[bot]"): no markup.
_GITHUB_LOGIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})(?:\[bot\])?")


def inert(text: str) -> str:
    """``text`` as a one-line code span: rendered as typed, never as a link, a mention
    or markup."""
    flat = " ".join(text.replace("`", "'").split())[:MAX_NAME_CHARS]
    return f"`{flat}`" if flat else "`?`"


def person_name(tracker: str, person: Person) -> str:
    """How a comment names a person: a GitHub login as an @-mention (logins cannot
    carry markup), anything else (a Linear display name, an id) as inert text."""
    if tracker == "github" and _GITHUB_LOGIN.fullmatch(person.login):
        return f"@{person.login}"
    return inert(person.login or f"user {person.id}")


def render_marker(delegation_key: str) -> str:
    """The hidden HTML comment naming a delegation (identical on every edit)."""
    return f"{MARKER_PREFIX}{delegation_key} -->"


@dataclass(frozen=True)
class LinkHelp:
    """What a person needs to link their account: where the bridge and Coder live."""

    public_url: str
    coder_url: str


def _link_command(event: IssueEvent, user_id: str) -> str:
    flag = "--github-id" if event.tracker == "github" else "--linear-id"
    return f"coder-bridge users link {flag} {user_id} --coder-token-stdin"


def _with_marker(text: str, delegation_key: str) -> str:
    return f"{text.rstrip()}\n\n{render_marker(delegation_key)}"


def _clip(reason: str) -> str:
    reason = " ".join(reason.split())
    return reason if len(reason) <= MAX_REASON_CHARS else reason[: MAX_REASON_CHARS - 1] + "…"


def render_task_comment(
    work: CreatedWork, *, delegation_key: str, existing: bool = False
) -> str:
    """The success comment: the link to the task or chat on Coder."""
    what = "Coder task" if work.kind == "task" else "Coder Agents chat"
    lead = ("This issue already has an AI coding agent working on it"
            if existing else "An AI coding agent is working on this issue")
    text = f"🤖 {lead}: **[open the {what}]({work.url})**"
    if work.owner_name:
        text += f"\n\nIt runs as Coder user {inert(work.owner_name)}."
    return _with_marker(text, delegation_key)


def render_needs_link_comment(
    event: IssueEvent, *, delegation_key: str, person: Person | None, help: LinkHelp
) -> str:
    """Nobody who may run the task has linked a Coder account; ``person`` is the first
    who may (None: nobody is known)."""
    who = person_name(event.tracker, person) if person else "the issue's author"
    person_id = person.id if person else "<id>"
    text = (
        f"⚠️ coder-bridge could not start an agent: {who} has not linked a Coder "
        "account yet.\n\n"
        "To link one:\n"
        f"1. Create a Coder API token at {help.coder_url}/settings/tokens "
        "(or run `coder tokens create --name coder-bridge`).\n"
        "2. Ask a coder-bridge administrator to link it (the token is read from standard "
        f"input and stored encrypted):\n   `{_link_command(event, person_id)}`\n"
        "3. Remove and re-add the label to try again.\n\n"
        f"coder-bridge: {help.public_url}"
    )
    return _with_marker(text, delegation_key)


def render_token_rejected_comment(
    event: IssueEvent, *, delegation_key: str, person: Person, help: LinkHelp
) -> str:
    """Coder rejected the token stored for ``person`` (401): it must be linked again."""
    text = (
        f"⚠️ coder-bridge could not start an agent: Coder rejected the token linked for "
        f"{person_name(event.tracker, person)} (it has expired or was revoked).\n\n"
        f"Create a new token at {help.coder_url}/settings/tokens and ask a coder-bridge "
        f"administrator to re-link it:\n`{_link_command(event, person.id)}`\n\n"
        "Then remove and re-add the label to try again.\n\n"
        f"coder-bridge: {help.public_url}"
    )
    return _with_marker(text, delegation_key)


def render_failed_comment(*, delegation_key: str, reason: str) -> str:
    """A permanent error: what went wrong, in plain words."""
    text = (
        "❌ coder-bridge could not start an agent for this issue.\n\n"
        f"Reason: {_clip(reason)}\n\n"
        "Fix the cause, then remove and re-add the label to try again."
    )
    return _with_marker(text, delegation_key)


def render_gave_up_comment(*, delegation_key: str, attempts: int, reason: str) -> str:
    """Transient errors until the retry budget ran out."""
    text = (
        f"❌ coder-bridge gave up starting an agent for this issue after {attempts} attempts.\n\n"
        f"Last error: {_clip(reason)}\n\n"
        "Remove and re-add the label to try again once the problem is fixed."
    )
    return _with_marker(text, delegation_key)
