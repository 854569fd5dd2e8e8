"""GitHub webhook deliveries: verify, then parse into a ``Decision`` (pure, sans-I/O).

Nothing here reads a clock, the network or the environment: the web layer hands
over the headers, the raw body bytes and the configured secrets, and gets back a
``Trigger``, an ``Ignored`` or a ``Ping``, or a ``WebhookError`` subclass
(``SignatureError`` → 401, ``MalformedPayload`` → 400).

Policy decisions:

- The signature is checked first, on the raw bytes, against every configured
  secret (rotation); ``X-Hub-Signature`` (sha1) is never accepted.
- Only ``issues`` ``labeled`` (``label.name`` equals the trigger label,
  case-insensitively) and ``issues`` ``opened`` (trigger label already in
  ``issue.labels``) trigger. Both fire for an issue created with the label; the
  worker sees them as one request (``service.core.delegation``).
- An ``opened`` delivery whose ``issue.author_association`` is not ``OWNER``,
  ``MEMBER`` or ``COLLABORATOR`` is ignored (code ``outsider``): an issue template
  can apply the label for anyone, and the bridge must not answer strangers with its
  links. A ``labeled`` delivery needs no such check: only people with triage access
  can add a label.
- A ``labeled`` delivery sent by a ``Bot`` sender still triggers: a label applied
  by automation (a triage bot, a workflow) is a legitimate request.
- ``issues`` ``unlabeled`` (the trigger label) and ``closed`` are ``Change``s: they
  may stop the issue's agent.
- ``issue_comment`` ``created`` whose first line starts with the command word is a
  ``Comment``, unless a bot wrote it (the bridge's own comments included): bots
  never run commands, so no loop can form.
- An issue carrying ``pull_request`` is ignored ("pull requests are not
  delegated"), and so are comments on one.
- Other actions and events are answered with ``Ignored`` and a specific reason;
  known-but-unused ones say "is not handled", unknown ones "is not supported".

The body is decoded once, by msgspec, into structs that declare only the fields
read here (the rest is skipped unread). A body that does not fit is refused with
a ``MalformedPayload`` naming the field (``issue.number is a JSON string,
expected int``). The objects a decision needs (``issue``, ``repository``,
``sender``) are optional in the structs and required where they are used, so an
ignored action does not need them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TypeVar
from urllib.parse import parse_qs

import msgspec

from service.core.events import (
    Change,
    ChangeEvent,
    Comment,
    CommentEvent,
    Decision,
    Ignored,
    IssueEvent,
    Person,
    Ping,
    Trigger,
)
from service.errors import MalformedPayload, SignatureError
from service.trackers.payload import decode_struct, header
from service.trackers.signing import signature_matches

SIGNATURE_HEADER = "x-hub-signature-256"
DELIVERY_HEADER = "x-github-delivery"
EVENT_HEADER = "x-github-event"
HOOK_ID_HEADER = "x-github-hook-id"

T = TypeVar("T")

_SIGNATURE_RE = re.compile(r"sha256=([0-9a-fA-F]{64})")
_MAX_DELIVERY_ID = 128

# Events GitHub may send to a hook subscribed to more than ``issues``; answered 200, no work.
IGNORED_EVENTS = frozenset(
    {
        "push",
        "create",
        "delete",
        "label",
        "pull_request",
        "pull_request_review",
        "pull_request_review_comment",
        "installation",
        "installation_repositories",
        "installation_target",
        "github_app_authorization",
        "meta",
        "repository",
        "star",
        "watch",
        "fork",
        "sub_issues",
    }
)

# ``issues`` actions the bridge knows about and deliberately does nothing for.
IGNORED_ISSUE_ACTIONS = frozenset(
    {
        "edited",
        "reopened",
        "deleted",
        "transferred",
        "assigned",
        "unassigned",
        "milestoned",
        "demilestoned",
        "pinned",
        "unpinned",
        "locked",
        "unlocked",
        "typed",
        "untyped",
    }
)


# ---------------------------------------------------------------------------
# Signature


def signature_header(headers: Mapping[str, str]) -> str:
    """The hex digest of ``X-Hub-Signature-256``; ``SignatureError`` when the header is
    missing or not ``sha256=`` + 64 hex digits. Needs no body: the web layer calls it
    before reading one."""
    value = header(headers, SIGNATURE_HEADER)
    if value is None:
        raise SignatureError("missing X-Hub-Signature-256 header")
    match = _SIGNATURE_RE.fullmatch(value.strip())
    if match is None:
        raise SignatureError("malformed X-Hub-Signature-256 header (expected sha256=<hex>)")
    return match.group(1)


def verify_github_signature(
    headers: Mapping[str, str], body: bytes, secrets: Sequence[str]
) -> None:
    """Check ``X-Hub-Signature-256`` over the raw ``body`` against every secret.

    ``headers`` may use any casing (a plain dict or Starlette ``Headers``). Every
    configured (non-empty) secret is tried in constant time, so a secret rotation
    works by listing both secrets. Raises ``SignatureError`` when no secret is
    configured, the header is missing or malformed, or no secret matches.
    """
    usable = [secret for secret in secrets if secret]
    if not usable:
        raise SignatureError("no GitHub webhook secret is configured")
    if not signature_matches(body, signature_header(headers), usable):
        raise SignatureError("X-Hub-Signature-256 matches no configured secret")


# ---------------------------------------------------------------------------
# The fields read, as typed structs (msgspec skips everything else)


class _Label(msgspec.Struct):
    name: str


class _User(msgspec.Struct):
    id: int
    login: str
    type: str | None = None

    def person(self) -> Person:
        return Person(id=str(self.id), login=self.login)


class _Issue(msgspec.Struct):
    id: int
    number: int
    title: str
    html_url: str
    user: _User
    body: str | None = None
    labels: list[_Label] | None = None
    author_association: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    # Presence only, never decoded: Raw() when absent, Raw(b"null") when null.
    pull_request: msgspec.Raw = msgspec.Raw()

    def is_pull_request(self) -> bool:
        return bytes(self.pull_request) not in (b"", b"null")


class _Repository(msgspec.Struct):
    id: int
    full_name: str
    html_url: str | None = None


class _Installation(msgspec.Struct):
    id: int


class _IssuesDelivery(msgspec.Struct):
    """An ``issues`` body. The objects are optional here and required where used."""

    action: str
    label: _Label | None = None
    issue: _Issue | None = None
    repository: _Repository | None = None
    sender: _User | None = None
    installation: _Installation | None = None


class _Comment(msgspec.Struct):
    id: int
    body: str
    user: _User


class _IssueCommentDelivery(msgspec.Struct):
    """An ``issue_comment`` body. The objects are optional here and required where used."""

    action: str
    comment: _Comment | None = None
    issue: _Issue | None = None
    repository: _Repository | None = None
    sender: _User | None = None
    installation: _Installation | None = None


class _AnyObject(msgspec.Struct):
    """Any other event's body: a JSON object, whatever it holds."""


# ---------------------------------------------------------------------------
# Parsing


class _Delivery:
    """A verified delivery's header values, read in the order their errors are reported."""

    __slots__ = ("command", "delivery_id", "event", "hook_id", "trigger_label")

    def __init__(self, headers: Mapping[str, str], trigger_label: str, command: str) -> None:
        self.delivery_id = _delivery_id(headers)
        self.event = _required_header(headers, EVENT_HEADER, "X-GitHub-Event")
        self.hook_id = header(headers, HOOK_ID_HEADER)
        self.trigger_label = trigger_label
        self.command = command


def parse_github_delivery(
    headers: Mapping[str, str],
    body: bytes,
    *,
    secrets: Sequence[str],
    trigger_label: str,
    command: str = "/agent",
) -> Decision:
    """Verify and parse one GitHub delivery into a ``Decision``.

    The signature is verified before anything else is looked at. Then
    ``X-GitHub-Delivery`` and ``X-GitHub-Event`` must be present, and the body
    must be a JSON object (``application/json``, or
    ``application/x-www-form-urlencoded`` with the JSON in a ``payload`` field).
    Raises ``SignatureError`` or ``MalformedPayload``; never anything else.
    """
    verify_github_signature(headers, body, secrets)
    delivery = _Delivery(headers, trigger_label, command)
    document = _form_payload(body) if _is_form_encoded(headers) else body
    if delivery.event == "issues":
        return _on_issues(delivery, decode_struct(document, _IssuesDelivery))
    if delivery.event == "issue_comment":
        return _on_comment(delivery, decode_struct(document, _IssueCommentDelivery))
    decode_struct(document, _AnyObject)
    if delivery.event == "ping":
        return Ping()
    verb = "is not handled" if delivery.event in IGNORED_EVENTS else "is not supported"
    return Ignored(f"event '{delivery.event}' {verb}")


def _form_payload(body: bytes) -> bytes:
    """The ``payload`` field of a form-encoded body (GitHub's ``form`` content type)."""
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedPayload("form-encoded body cannot be decoded") from exc
    values = fields.get("payload")
    if not values:
        raise MalformedPayload("form-encoded body has no 'payload' field")
    return values[0].encode("utf-8")


#: Who may open an issue that carries the trigger label and have it delegated.
MEMBER_ASSOCIATIONS = frozenset({"OWNER", "MEMBER", "COLLABORATOR"})


def _on_issues(delivery: _Delivery, payload: _IssuesDelivery) -> Decision:
    """An ``issues`` delivery: a ``Trigger``, a ``Change``, or ``Ignored`` naming why not."""
    action = payload.action
    if action in ("labeled", "unlabeled"):
        if payload.label is None:
            return Ignored(f"{action} delivery names no label")
        if not _same_label(payload.label.name, delivery.trigger_label):
            return Ignored(f"label '{payload.label.name}' is not the trigger label")
    elif action == "opened":
        issue = _required(payload.issue, "issue")
        if not any(_same_label(label.name, delivery.trigger_label) for label in issue.labels or ()):
            return Ignored("issue was opened without the trigger label")
        if issue.author_association not in MEMBER_ASSOCIATIONS:
            return Ignored("issue was opened with the trigger label by someone outside the "
                           "repository", code="outsider")
    elif action != "closed":
        verb = "is not handled" if action in IGNORED_ISSUE_ACTIONS else "is not supported"
        return Ignored(f"action '{action}' {verb}")
    if _required(payload.issue, "issue").is_pull_request():
        return Ignored("pull requests are not delegated")
    if action in ("unlabeled", "closed"):
        return Change(_change_event(delivery, payload, action))
    return Trigger(_issue_event(delivery, payload))


def _on_comment(delivery: _Delivery, payload: _IssueCommentDelivery) -> Decision:
    """An ``issue_comment`` delivery: a ``Comment`` when a person wrote a command."""
    if payload.action != "created":
        return Ignored(f"comment action '{payload.action}' is not handled")
    comment = _required(payload.comment, "comment")
    if not _starts_with_command(comment.body, delivery.command):
        return Ignored("comment is not a command")
    sender = _required(payload.sender, "sender")
    if sender.type == "Bot" or comment.user.type == "Bot":
        return Ignored("comments by bots never run commands")
    issue = _required(payload.issue, "issue")
    if issue.is_pull_request():
        return Ignored("comments on pull requests are not commands")
    repository = _required(payload.repository, "repository")
    return Comment(CommentEvent(
        tracker="github",
        delivery_id=delivery.delivery_id,
        issue_key=f"github:{repository.id}:{issue.number}",
        issue_id=str(issue.id),
        number=str(issue.number),
        url=issue.html_url,
        scope=repository.full_name,
        comment_id=str(comment.id),
        author=comment.user.person(),
        text=comment.body,
        installation_id=payload.installation.id if payload.installation else None,
    ))


def _starts_with_command(body: str, command: str) -> bool:
    first = body.lstrip().partition("\n")[0].strip()
    return first == command or first.startswith((command + " ", command + "\t"))


def _change_event(delivery: _Delivery, payload: _IssuesDelivery, action: str) -> ChangeEvent:
    issue = _required(payload.issue, "issue")
    repository = _required(payload.repository, "repository")
    sender = _required(payload.sender, "sender")
    return ChangeEvent(
        tracker="github",
        delivery_id=delivery.delivery_id,
        issue_key=f"github:{repository.id}:{issue.number}",
        issue_id=str(issue.id),
        number=str(issue.number),
        url=issue.html_url,
        scope=repository.full_name,
        change="unlabeled" if action == "unlabeled" else "closed",
        actor=sender.person(),
        installation_id=payload.installation.id if payload.installation else None,
        extra={"sender_type": sender.type} if sender.type else {},
    )


def _same_label(name: str, trigger_label: str) -> bool:
    return name.casefold() == trigger_label.casefold()


def _issue_event(delivery: _Delivery, payload: _IssuesDelivery) -> IssueEvent:
    """The ``IssueEvent`` of a triggering delivery.

    ``extra`` holds a few strings that are useful later (logs, comments, telling the
    labels applied at the issue's creation from later ones).
    """
    issue = _required(payload.issue, "issue")
    repository = _required(payload.repository, "repository")
    sender = _required(payload.sender, "sender")
    extra = {"action": payload.action}
    optional = {"repository_url": repository.html_url, "sender_type": sender.type,
                "hook_id": delivery.hook_id, "created_at": issue.created_at,
                "updated_at": issue.updated_at}
    extra.update({key: value for key, value in optional.items() if value})
    return IssueEvent(
        tracker="github",
        delivery_id=delivery.delivery_id,
        issue_key=f"github:{repository.id}:{issue.number}",
        issue_id=str(issue.id),
        number=str(issue.number),
        title=issue.title,
        body=issue.body or "",
        url=issue.html_url,
        scope=repository.full_name,
        author=issue.user.person(),
        labeler=sender.person(),
        installation_id=payload.installation.id if payload.installation else None,
        extra=extra,
    )


def _required(value: T | None, where: str) -> T:
    if value is None:
        raise MalformedPayload(f"{where} is missing")
    return value


# ---------------------------------------------------------------------------
# Headers


def _required_header(headers: Mapping[str, str], name: str, label: str) -> str:
    value = (header(headers, name) or "").strip()
    if not value:
        raise MalformedPayload(f"missing {label} header")
    return value


def _delivery_id(headers: Mapping[str, str]) -> str:
    value = _required_header(headers, DELIVERY_HEADER, "X-GitHub-Delivery")
    if len(value) > _MAX_DELIVERY_ID or not value.isprintable():
        raise MalformedPayload("X-GitHub-Delivery header is not a delivery id")
    return value


def _is_form_encoded(headers: Mapping[str, str]) -> bool:
    """GitHub's ``form`` content type; anything else is decoded as JSON."""
    content_type = (header(headers, "content-type") or "").split(";")[0].strip().lower()
    return content_type == "application/x-www-form-urlencoded"
