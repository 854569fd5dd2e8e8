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
  ``issue.labels``) trigger. Both may fire for one issue; the caller collapses
  them on ``IssueEvent.issue_key``.
- A ``labeled`` delivery sent by a ``Bot`` sender still triggers: a label applied
  by automation (a triage bot, a workflow) is a legitimate request.
- An issue carrying ``pull_request`` is ignored ("pull requests are not
  delegated"). ``issues`` events never carry pull requests today; the check
  only guards against a future change of the shared issue schema.
- Other actions and events are answered with ``Ignored`` and a specific reason;
  known-but-unused ones say "is not handled", unknown ones "is not supported".
- Fields are only required where they are used: an ignored action does not
  need a well-formed ``issue``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar
from urllib.parse import parse_qs

from service.core.events import Decision, Ignored, IssueEvent, Person, Ping, Trigger
from service.errors import MalformedPayload, SignatureError
from service.trackers.payload import (
    Payload,
    as_object as _as_object,
    decode_object,
    field as _field,
    header as _header,
    optional as _optional,
    required_object as _object,
)
from service.trackers.signing import signature_matches

SIGNATURE_HEADER = "x-hub-signature-256"
DELIVERY_HEADER = "x-github-delivery"
EVENT_HEADER = "x-github-event"
HOOK_ID_HEADER = "x-github-hook-id"

_SIGNATURE_RE = re.compile(r"sha256=([0-9a-fA-F]{64})")
_MAX_DELIVERY_ID = 128

T = TypeVar("T")
Handler = Callable[["_Delivery"], Decision]

# Events GitHub may send to a hook subscribed to more than ``issues``; answered 200, no work.
IGNORED_EVENTS = frozenset(
    {
        "push",
        "create",
        "delete",
        "issue_comment",
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
        "unlabeled",
        "edited",
        "closed",
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


def verify_github_signature(
    headers: Mapping[str, str], body: bytes, secrets: Sequence[str]
) -> None:
    """Check ``X-Hub-Signature-256`` over the raw ``body`` against every secret.

    ``headers`` may use any casing (a plain dict or Starlette ``Headers``).
    Every configured (non-empty) secret is tried with ``hmac.compare_digest``,
    so a secret rotation works by listing both secrets. Raises
    ``SignatureError`` when no secret is configured, the header is missing or
    not ``sha256=`` + 64 hex digits, or no secret matches. Returns ``None``.
    """
    usable = [secret for secret in secrets if secret]
    if not usable:
        raise SignatureError("no GitHub webhook secret is configured")
    value = _header(headers, SIGNATURE_HEADER)
    if value is None:
        raise SignatureError("missing X-Hub-Signature-256 header")
    match = _SIGNATURE_RE.fullmatch(value.strip())
    if match is None:
        raise SignatureError("malformed X-Hub-Signature-256 header (expected sha256=<hex>)")
    if not signature_matches(body, match.group(1), usable):
        raise SignatureError("X-Hub-Signature-256 matches no configured secret")


# ---------------------------------------------------------------------------
# Parsing


class _Delivery:
    """A verified, decoded delivery: header values plus the JSON object."""

    __slots__ = ("delivery_id", "event", "hook_id", "payload", "trigger_label")

    def __init__(
        self,
        *,
        delivery_id: str,
        event: str,
        hook_id: str | None,
        payload: Payload,
        trigger_label: str,
    ) -> None:
        self.delivery_id = delivery_id
        self.event = event
        self.hook_id = hook_id
        self.payload = payload
        self.trigger_label = trigger_label


def parse_github_delivery(
    headers: Mapping[str, str],
    body: bytes,
    *,
    secrets: Sequence[str],
    trigger_label: str,
) -> Decision:
    """Verify and parse one GitHub delivery into ``Trigger``, ``Ignored`` or ``Ping``.

    The signature is verified before anything else is looked at. Then
    ``X-GitHub-Delivery`` and ``X-GitHub-Event`` must be present, and the body
    must be a JSON object (``application/json``, or
    ``application/x-www-form-urlencoded`` with the JSON in a ``payload`` field).
    Raises ``SignatureError`` or ``MalformedPayload``; never ``KeyError`` or
    ``TypeError``.
    """
    verify_github_signature(headers, body, secrets)
    delivery = _Delivery(
        delivery_id=_delivery_id(headers),
        event=_required_header(headers, EVENT_HEADER, "X-GitHub-Event"),
        hook_id=_header(headers, HOOK_ID_HEADER),
        payload=decode_github_body(headers, body),
        trigger_label=trigger_label,
    )
    return _dispatch(delivery)


def decode_github_body(headers: Mapping[str, str], body: bytes) -> Payload:
    """Decode a delivery body (JSON or form-encoded ``payload=``) into a JSON object.

    Raises ``MalformedPayload`` for anything that is not a JSON object.
    """
    content_type = (_header(headers, "content-type") or "").split(";")[0].strip().lower()
    text = _form_payload(body) if content_type == "application/x-www-form-urlencoded" else body
    return decode_object(text)


def _form_payload(body: bytes) -> str:
    """The ``payload`` field of a form-encoded body (GitHub's ``form`` content type)."""
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedPayload("form-encoded body cannot be decoded") from exc
    values = fields.get("payload")
    if not values:
        raise MalformedPayload("form-encoded body has no 'payload' field")
    return values[0]


def _dispatch(delivery: _Delivery) -> Decision:
    """Route a delivery through the (event, action) table; name what is ignored."""
    if delivery.event == "ping":
        return Ping()
    if delivery.event != "issues":
        verb = "is not handled" if delivery.event in IGNORED_EVENTS else "is not supported"
        return Ignored(f"event '{delivery.event}' {verb}")
    action = _field(delivery.payload, "action", str, "action")
    handler = _ISSUE_HANDLERS.get(action)
    if handler is not None:
        return handler(delivery)
    verb = "is not handled" if action in IGNORED_ISSUE_ACTIONS else "is not supported"
    return Ignored(f"action '{action}' {verb}")


def _on_labeled(delivery: _Delivery) -> Decision:
    """``issues``/``labeled``: trigger when the added label is the trigger label."""
    label = delivery.payload.get("label")
    if label is None:
        return Ignored("labeled delivery names no label")
    name = _field(_as_object(label, "label"), "name", str, "label.name")
    if not _same_label(name, delivery.trigger_label):
        return Ignored(f"label '{name}' is not the trigger label")
    return _trigger(delivery)


def _on_opened(delivery: _Delivery) -> Decision:
    """``issues``/``opened``: trigger when the new issue already carries the trigger label."""
    issue = _object(delivery.payload, "issue", "issue")
    labels = issue.get("labels")
    if labels is None:
        labels = []
    if not isinstance(labels, list):
        raise MalformedPayload("issue.labels is not a list")
    names = [
        _field(_as_object(label, "issue.labels[]"), "name", str, "issue.labels[].name")
        for label in labels
    ]
    if not any(_same_label(name, delivery.trigger_label) for name in names):
        return Ignored("issue was opened without the trigger label")
    return _trigger(delivery)


_ISSUE_HANDLERS: dict[str, Handler] = {
    "labeled": _on_labeled,
    "opened": _on_opened,
}


def _trigger(delivery: _Delivery) -> Decision:
    """Build the ``Trigger`` (or ignore a pull request) from a triggering delivery."""
    payload = delivery.payload
    issue = _object(payload, "issue", "issue")
    if issue.get("pull_request") is not None:
        return Ignored("pull requests are not delegated")
    repository = _object(payload, "repository", "repository")
    repo_id = _field(repository, "id", int, "repository.id")
    number = _field(issue, "number", int, "issue.number")
    sender = _object(payload, "sender", "sender")
    event = IssueEvent(
        tracker="github",
        delivery_id=delivery.delivery_id,
        issue_key=f"github:{repo_id}:{number}",
        issue_id=str(_field(issue, "id", int, "issue.id")),
        number=str(number),
        title=_field(issue, "title", str, "issue.title"),
        body=_optional(issue, "body", str, "issue.body") or "",
        url=_field(issue, "html_url", str, "issue.html_url"),
        scope=_field(repository, "full_name", str, "repository.full_name"),
        author=_person(_object(issue, "user", "issue.user"), "issue.user"),
        labeler=_person(sender, "sender"),
        installation_id=_installation_id(payload),
        extra=_extra(delivery, repository, sender),
    )
    return Trigger(event)


def _person(user: Payload, where: str) -> Person:
    """A GitHub account as a ``Person`` (numeric id as text, login)."""
    return Person(
        id=str(_field(user, "id", int, f"{where}.id")),
        login=_field(user, "login", str, f"{where}.login"),
    )


def _installation_id(payload: Payload) -> int | None:
    """``installation.id`` of a GitHub App delivery; ``None`` for a plain hook."""
    installation = payload.get("installation")
    if installation is None:
        return None
    return _field(_as_object(installation, "installation"), "id", int, "installation.id")


def _extra(delivery: _Delivery, repository: Payload, sender: Payload) -> dict[str, str]:
    """A few strings that are useful later (logs, comments, de-duplication per hook)."""
    extra = {"action": _field(delivery.payload, "action", str, "action")}
    html_url = repository.get("html_url")
    if isinstance(html_url, str):
        extra["repository_url"] = html_url
    sender_type = sender.get("type")
    if isinstance(sender_type, str):
        extra["sender_type"] = sender_type
    if delivery.hook_id:
        extra["hook_id"] = delivery.hook_id
    return extra


# ---------------------------------------------------------------------------
# Small typed accessors: every failure is a MalformedPayload naming the field.


def _same_label(name: str, trigger_label: str) -> bool:
    return name.casefold() == trigger_label.casefold()














# ---------------------------------------------------------------------------
# Headers




def _required_header(headers: Mapping[str, str], name: str, label: str) -> str:
    value = (_header(headers, name) or "").strip()
    if not value:
        raise MalformedPayload(f"missing {label} header")
    return value


def _delivery_id(headers: Mapping[str, str]) -> str:
    value = _required_header(headers, DELIVERY_HEADER, "X-GitHub-Delivery")
    if len(value) > _MAX_DELIVERY_ID or not value.isprintable():
        raise MalformedPayload("X-GitHub-Delivery header is not a delivery id")
    return value
