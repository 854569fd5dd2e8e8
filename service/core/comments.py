"""Bodies of the bridge's issue comments (pure).

Every body ends with a hidden marker naming the delegation (an HMAC of its key,
so nobody can guess it and plant it in a comment of their own), so the comment is
found again and edited in place, never duplicated. The first visible line names
the state in bold (interface §4.2). Nothing here ever receives a token; names
that come from outside (a Linear display name, a Coder username) are shown as
inert code, and the agent's own words are quoted with mentions, links and markup
made inert, so they cannot ping people or plant a link in a comment everyone on
the issue reads.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from dataclasses import dataclass

from service.core.events import IssueEvent, Person
from service.core.status import Progress, Shown
from service.core.work import CreatedWork

MARKER_PREFIX = "<!-- coder-bridge:"
MAX_REASON_CHARS = 1500
MAX_NAME_CHARS = 80
# GitHub logins: alphanumerics and single hyphens (bots end in "[bot]"): no markup.
_GITHUB_LOGIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})(?:\[bot\])?")

SHOWN_WORDS: dict[Shown, str] = {
    "starting": "Starting",
    "working": "Working",
    "needs_input": "Needs input",
    "done": "Done",
    "failed": "Failed",
    "stopped": "Stopped",
}


def render_marker(key: bytes, name: str) -> str:
    """The hidden HTML comment naming ``name`` (a delegation key, or a reply's), keyed
    with ``key`` so that only the bridge can write it (identical on every edit)."""
    digest = hmac.new(key, name.encode(), hashlib.sha256).hexdigest()[:32]
    return f"{MARKER_PREFIX}{digest} -->"


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


def quote(text: str) -> str:
    """The agent's words as a block quote that pings nobody and links nothing."""
    safe = text.replace("\\", "\\\\").replace("<", "&lt;").replace(">", "&gt;")
    safe = re.sub(r"([\[\]*_#|!])", r"\\\1", safe)
    safe = safe.replace("@", "@\u200b").replace("://", ":\u200b//")
    return "\n".join(f"> {line}" if line else ">" for line in safe.splitlines() or [""])


def when(timestamp: float) -> str:
    """A moment as people read it: ``2026-12-06 14:03 UTC``."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(timestamp))


def duration(seconds: float) -> str:
    """A span of time as people say it: ``45 seconds``, ``20 minutes``, ``3 hours``."""
    for unit, size in (("hour", 3600), ("minute", 60)):
        if seconds >= size * 2 or (seconds >= size and seconds % size == 0):
            count = round(seconds / size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    count = round(seconds)
    return f"{count} second{'s' if count != 1 else ''}"


@dataclass(frozen=True)
class LinkHelp:
    """Where a person connects their Coder account: the bridge's page and Coder."""

    public_url: str
    coder_url: str

    @property
    def connect_url(self) -> str:
        return f"{self.public_url}/connect"


def _link_command(event: IssueEvent, user_id: str) -> str:
    flag = "--github-id" if event.tracker == "github" else "--linear-id"
    return f"coder-bridge users link {flag} {user_id} --coder-token-stdin"


def _with_marker(text: str, marker: str) -> str:
    return f"{text.rstrip()}\n\n{marker}"


def _clip(reason: str) -> str:
    reason = " ".join(reason.split())
    return reason if len(reason) <= MAX_REASON_CHARS else reason[: MAX_REASON_CHARS - 1] + "…"


def _work_link(work: CreatedWork) -> str:
    what = "Coder task" if work.kind == "task" else "Coder Agents chat"
    return f"[open the {what}]({work.url})"


@dataclass(frozen=True)
class StatusView:
    """Everything the status comment of running (or ended) work shows.

    ``work`` is None while the task or chat does not exist yet (a chat's workspace is
    still building); ``runs_as`` is the Coder username; ``command`` the comment
    command word (``/agent``).
    """

    shown: Shown
    work: CreatedWork | None
    runs_as: str
    progress: Progress
    command: str


def render_status_comment(view: StatusView, *, marker: str) -> str:
    """The status comment: the state in bold first, then the link, who it runs as and
    since when, the pull request, the agent's last words, and what people can do."""
    progress = view.progress
    head = f"**{SHOWN_WORDS[view.shown]}**"
    if view.shown == "stopped" and progress.stopped_by:
        head += f" {progress.stopped_by}"
    if view.work is not None:
        head += f" · {_work_link(view.work)}"
    lines = [head, "", _what_happens(view)]
    if view.shown == "failed" and progress.failure:
        lines += ["", f"Why: {progress.failure}"]
    if progress.pr_url:
        lines += ["", f"Pull request: {progress.pr_url}"]
    if progress.message and view.shown not in ("starting", "failed"):
        lines += ["", "The agent's last words:", "", quote(progress.message)]
    if progress.held and view.shown not in ("failed", "stopped"):
        messages = "1 message waits" if progress.held == 1 else f"{progress.held} messages wait"
        lines += ["", f"{messages} for the agent to finish its turn; it is sent then."]
    if progress.notice:
        lines += ["", f"Note: {progress.notice}"]
    hint = _what_people_can_do(view)
    if hint:
        lines += ["", hint]
    return _with_marker("\n".join(lines), marker)


def _what_happens(view: StatusView) -> str:
    who = f"Coder user {inert(view.runs_as)}" if view.runs_as else "its Coder account"
    since = (f", since {when(view.progress.started_at)}"
             if view.progress.started_at is not None else "")
    if view.shown == "starting":
        if view.work is None:
            return (f"An AI coding agent is being prepared for this issue, to run as {who}. "
                    "The link to follow it appears here as soon as it exists.")
        return f"An AI coding agent is being prepared for this issue, as {who}."
    if view.shown == "working":
        return f"An AI coding agent is working on this issue as {who}{since}."
    if view.shown == "needs_input":
        return f"The agent (running as {who}) is waiting for an answer: open it in Coder."
    ended = (f" at {when(view.progress.ended_at)}" if view.progress.ended_at is not None
             else "")
    if view.work is None and view.shown == "stopped":
        return f"No agent was started{ended}."
    if view.shown == "done":
        return f"The agent (running as {who}{since}) finished its turn{ended}."
    if view.shown == "failed":
        return f"The agent (running as {who}{since}) failed{ended}."
    return f"The agent ran as {who}{since}; it was stopped{ended}."


def _what_people_can_do(view: StatusView) -> str:
    command = view.command
    if view.shown == "stopped":
        return ""
    if view.work is None or view.shown == "starting":
        return f"Comment `{command} stop` to stop it."
    if view.shown in ("working", "needs_input"):
        return (f"Comment `{command} <message>` to tell it more, or `{command} stop` to "
                "stop it.")
    if view.shown in ("done", "failed"):
        return f"Comment `{command} <message>` to give it more to do."
    return ""


def render_needs_link_comment(
    event: IssueEvent, *, marker: str, person: Person | None, help: LinkHelp
) -> str:
    """Nobody who may run the task has connected a Coder account; ``person`` is the
    first who may (None: nobody is known)."""
    who = person_name(event.tracker, person) if person else "the issue's author"
    person_id = person.id if person else "<id>"
    text = (
        f"**Waiting** · {who} has not connected a Coder account to coder-bridge yet.\n\n"
        f"To let an AI coding agent work on this issue as you, connect your account at "
        f"{help.connect_url} (sign in, then connect Coder). As soon as you have, the "
        "agent starts here by itself: there is no need to label the issue again.\n\n"
        f"Or an administrator can link a Coder token for you "
        f"(from {help.coder_url}/settings/tokens): `{_link_command(event, person_id)}`"
    )
    return _with_marker(text, marker)


def render_token_rejected_comment(
    event: IssueEvent, *, marker: str, person: Person, help: LinkHelp
) -> str:
    """Coder rejected the token connected for ``person`` (401): connect again."""
    text = (
        f"**Waiting** · Coder rejected the token connected for "
        f"{person_name(event.tracker, person)} (it has expired or was revoked).\n\n"
        f"Connect your Coder account again at {help.connect_url}; the agent then starts "
        "here by itself.\n\n"
        f"Or an administrator can link a new token (from {help.coder_url}/settings/tokens): "
        f"`{_link_command(event, person.id)}`"
    )
    return _with_marker(text, marker)


def render_awaiting_consent_comment(
    event: IssueEvent, *, marker: str, author: Person, labeler: Person, command: str,
    help: LinkHelp,
) -> str:
    """Someone else asked for an agent to run with the author's Coder account."""
    text = (
        f"**Waiting for approval** · {person_name(event.tracker, labeler)} asked for an AI "
        f"coding agent to work on this issue with the Coder account of its author, "
        f"{person_name(event.tracker, author)}.\n\n"
        f"{person_name(event.tracker, author)}: comment `{command} approve` to let it start, "
        f"or allow this for good on {help.connect_url} (\"Others may delegate my issues to "
        "my Coder account\"). Nothing runs until you do."
    )
    return _with_marker(text, marker)


def render_failed_comment(*, marker: str, reason: str) -> str:
    """A permanent error before any work started: what went wrong, in plain words."""
    text = (
        "**Failed** · coder-bridge could not start an agent for this issue.\n\n"
        f"Reason: {_clip(reason)}\n\n"
        "Fix the cause, then remove and re-add the label to try again."
    )
    return _with_marker(text, marker)


def render_misconfigured_comment(*, marker: str, reason: str) -> str:
    """A failure the bridge's own configuration caused: nothing the reader did wrong, and
    nothing they can fix; the operators were alerted (a metric and an alert rule)."""
    text = (
        "**Failed** · coder-bridge could not start an agent for this issue because of a "
        "problem in its own configuration, not in this issue.\n\n"
        f"Reason: {_clip(reason)}\n\n"
        "The bridge's operators have been alerted. Once they have fixed it, remove and "
        "re-add the label to try again."
    )
    return _with_marker(text, marker)


def render_gave_up_comment(*, marker: str, attempts: int, reason: str) -> str:
    """Transient errors until the retry budget ran out."""
    text = (
        "**Failed** · coder-bridge gave up starting an agent for this issue after "
        f"{attempts} attempts.\n\n"
        f"Last error: {_clip(reason)}\n\n"
        "Remove and re-add the label to try again once the problem is fixed."
    )
    return _with_marker(text, marker)


def render_reply(text: str, *, marker: str) -> str:
    """A short answer to a command comment."""
    return _with_marker(text, marker)


@dataclass(frozen=True)
class People:
    """Who is who on a delegation, to name in a reply (None: unknown)."""

    author: Person | None
    labeler: Person | None
    acting: Person | None


#: How a reply names the state of a delegation whose agent does not run.
STATE_WORDS: dict[str, str] = {
    **{str(state): words for state, words in SHOWN_WORDS.items()},
    "pending": "being prepared",
    "needs_link": "waiting for a Coder account to be connected",
    "awaiting_consent": "waiting for approval",
    "gave_up": "Failed",
}


def render_refusal(reason: str, *, tracker: str, people: People | None, command: str,
                   state: str | None, trigger_label: str) -> str:
    """The one short reply to a command that is not carried out, saying who may give it
    or why it cannot be done (``reason`` from ``service.core.commands.Refused``;
    ``state`` the delegation's)."""

    def name(person: Person | None, fallback: str) -> str:
        return person_name(tracker, person) if person is not None else fallback

    acting = name(people.acting if people else None, "the person whose Coder account runs it")
    labeler = name(people.labeler if people else None, "whoever added the label")
    author = name(people.author if people else None, "the issue's author")
    label = inert(trigger_label)
    texts = {
        "not_acting_user": f"Only {acting}, whose Coder account runs the agent, can send it "
                           "messages.",
        "not_acting_or_labeler": f"Only {acting} or {labeler} can stop the agent.",
        "not_author": f"Only {author}, the issue's author, can approve this request.",
        "no_delegation": f"No agent works on this issue. Add the label {label} to start one.",
        "nothing_to_approve": "Nothing on this issue is waiting for approval.",
        "not_running": (f"The agent on this issue is not running"
                        f"{f' ({STATE_WORDS[state]})' if state in STATE_WORDS else ''}. "
                        f"Remove and add the label {label} again to start a new one."),
        "help": (f"Commands: `{command} <message>` sends the agent a message, "
                 f"`{command} stop` stops it, `{command} approve` lets the author approve "
                 "a request to run it with their Coder account."),
    }
    return texts.get(reason, "That command cannot be carried out here.")
