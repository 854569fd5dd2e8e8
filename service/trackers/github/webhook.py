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

Fast path: decoding is on every delivery's path, so an ``issues`` delivery with
a JSON body is first decoded by msgspec into structs declaring only the fields
read here (``_IssuesDelivery``); msgspec type-checks those and skips the rest
without building objects. For the 14 KB fixture that is ~10 us, about a third of
orjson's full decode plus walking the dicts (~20 + ~12 us). The dict path stays
the reference for every error: whenever msgspec refuses the body, the decision
needs a field the body lacks, or orjson might refuse what msgspec accepts
(invalid UTF-8 or deep nesting in unread values), the reference decides, so
both paths answer alike. One difference is accepted, as no cheap check finds
it: a number in an unread field that overflows a double (``1e400``) is refused
by orjson, while msgspec skips it unevaluated.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from typing import Annotated, Protocol
from urllib.parse import parse_qs

import msgspec

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
    """A verified delivery's header values, read in the order their errors are reported."""

    __slots__ = ("delivery_id", "event", "hook_id", "trigger_label")

    def __init__(self, headers: Mapping[str, str], trigger_label: str) -> None:
        self.delivery_id = _delivery_id(headers)
        self.event = _required_header(headers, EVENT_HEADER, "X-GitHub-Event")
        self.hook_id = _header(headers, HOOK_ID_HEADER)
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
    delivery = _Delivery(headers, trigger_label)
    decision = _parse_fast(delivery, headers, body)
    if decision is None:
        decision = _parse_reference(delivery, headers, body)
    return decision


def decode_github_body(headers: Mapping[str, str], body: bytes) -> Payload:
    """Decode a delivery body (JSON or form-encoded ``payload=``) into a JSON object.

    Raises ``MalformedPayload`` for anything that is not a JSON object.
    """
    text = _form_payload(body) if _is_form_encoded(headers) else body
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


def _parse_reference(delivery: _Delivery, headers: Mapping[str, str], body: bytes) -> Decision:
    """The dict path, the reference: orjson decodes the whole body, ``_PayloadView`` reads it."""
    payload = decode_github_body(headers, body)
    if delivery.event == "ping":
        return Ping()
    if delivery.event != "issues":
        verb = "is not handled" if delivery.event in IGNORED_EVENTS else "is not supported"
        return Ignored(f"event '{delivery.event}' {verb}")
    return _decide(delivery, _PayloadView(payload))


def _parse_fast(delivery: _Delivery, headers: Mapping[str, str], body: bytes) -> Decision | None:
    """The reference's decision for a common ``issues`` delivery, or ``None``: ask the reference.

    ``None`` for other events and form-encoded bodies, whenever msgspec refuses the body
    (whatever the reason: the reference names it), when the decision needs a field the
    body lacks, and for bodies orjson might refuse although msgspec accepts them.
    """
    if delivery.event != "issues" or _is_form_encoded(headers):
        return None
    if not (_is_utf8(body) and _nesting_fits_orjson(body)):
        return None
    try:
        return _decide(delivery, _ISSUES_DECODER.decode(body))
    except (msgspec.MsgspecError, RecursionError, _Incomplete):
        return None


def _decide(delivery: _Delivery, view: _IssuesView) -> Decision:
    """An ``issues`` delivery: a ``Trigger``, or ``Ignored`` naming why not.

    Reads only what the action needs, in the order the reference reports errors.
    """
    action = view.action
    if action == "labeled":
        name = view.label_name()
        if name is None:
            return Ignored("labeled delivery names no label")
        if not _same_label(name, delivery.trigger_label):
            return Ignored(f"label '{name}' is not the trigger label")
    elif action == "opened":
        names = view.issue_label_names()
        if not any(_same_label(name, delivery.trigger_label) for name in names):
            return Ignored("issue was opened without the trigger label")
    else:
        verb = "is not handled" if action in IGNORED_ISSUE_ACTIONS else "is not supported"
        return Ignored(f"action '{action}' {verb}")
    if view.is_pull_request():
        return Ignored("pull requests are not delegated")
    return Trigger(view.issue_event(delivery, action))


def _same_label(name: str, trigger_label: str) -> bool:
    return name.casefold() == trigger_label.casefold()


def _issue_event(
    delivery: _Delivery,
    action: str,
    *,
    repo_id: int,
    number: int,
    issue_id: int,
    title: str,
    body: str | None,
    url: str,
    scope: str,
    author: Person,
    labeler: Person,
    installation_id: int | None,
    repository_url: object,
    sender_type: object,
) -> IssueEvent:
    """The ``IssueEvent`` of a triggering delivery, from values either view has read.

    ``extra`` holds a few strings that are useful later (logs, comments, de-duplication
    per hook); the repository URL and sender type only when they are strings.
    """
    extra = {"action": action}
    if isinstance(repository_url, str):
        extra["repository_url"] = repository_url
    if isinstance(sender_type, str):
        extra["sender_type"] = sender_type
    if delivery.hook_id:
        extra["hook_id"] = delivery.hook_id
    return IssueEvent(
        tracker="github",
        delivery_id=delivery.delivery_id,
        issue_key=f"github:{repo_id}:{number}",
        issue_id=str(issue_id),
        number=str(number),
        title=title,
        body=body or "",
        url=url,
        scope=scope,
        author=author,
        labeler=labeler,
        installation_id=installation_id,
        extra=extra,
    )


class _IssuesView(Protocol):
    """What ``_decide`` reads from an ``issues`` delivery.

    ``_PayloadView`` (the reference) raises ``MalformedPayload`` naming a missing or
    mistyped field; ``_IssuesDelivery`` (already type-checked by msgspec) raises
    ``_Incomplete`` when it lacks an optional field the decision needs.
    """

    @property
    def action(self) -> str: ...

    def label_name(self) -> str | None: ...

    def issue_label_names(self) -> list[str]: ...

    def is_pull_request(self) -> bool: ...

    def issue_event(self, delivery: _Delivery, action: str) -> IssueEvent: ...


# ---------------------------------------------------------------------------
# The reference: the decoded JSON object, read field by field


class _PayloadView:
    """The dict view: each field is checked when read, so a failure names the field."""

    __slots__ = ("payload",)

    def __init__(self, payload: Payload) -> None:
        self.payload = payload

    @property
    def action(self) -> str:
        return _field(self.payload, "action", str, "action")

    def label_name(self) -> str | None:
        label = self.payload.get("label")
        if label is None:
            return None
        return _field(_as_object(label, "label"), "name", str, "label.name")

    def issue_label_names(self) -> list[str]:
        labels = _object(self.payload, "issue", "issue").get("labels")
        if labels is None:
            return []
        if not isinstance(labels, list):
            raise MalformedPayload("issue.labels is not a list")
        return [
            _field(_as_object(label, "issue.labels[]"), "name", str, "issue.labels[].name")
            for label in labels
        ]

    def is_pull_request(self) -> bool:
        return _object(self.payload, "issue", "issue").get("pull_request") is not None

    def issue_event(self, delivery: _Delivery, action: str) -> IssueEvent:
        payload = self.payload
        issue = _object(payload, "issue", "issue")
        repository = _object(payload, "repository", "repository")
        repo_id = _field(repository, "id", int, "repository.id")
        number = _field(issue, "number", int, "issue.number")
        sender = _object(payload, "sender", "sender")
        return _issue_event(
            delivery,
            action,
            repo_id=repo_id,
            number=number,
            issue_id=_field(issue, "id", int, "issue.id"),
            title=_field(issue, "title", str, "issue.title"),
            body=_optional(issue, "body", str, "issue.body"),
            url=_field(issue, "html_url", str, "issue.html_url"),
            scope=_field(repository, "full_name", str, "repository.full_name"),
            author=_person(_object(issue, "user", "issue.user"), "issue.user"),
            labeler=_person(sender, "sender"),
            installation_id=_installation_id(payload),
            repository_url=repository.get("html_url"),
            sender_type=sender.get("type"),
        )


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


# ---------------------------------------------------------------------------
# The fast path: typed structs of only the fields read (msgspec skips the rest)

# orjson decodes an integer beyond 64 bits as a float, which the reference refuses, where
# msgspec would keep an int. Bounded at int64 (the widest bound msgspec takes), a larger
# id goes to the reference, which refuses it (or accepts 2**63..2**64-1, still ints).
_Int = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]

# orjson refuses nesting deeper than 1024 levels; msgspec stops where the interpreter's
# recursion guard does: on 3.11 sys.getrecursionlimit() (1000 unless raised), later at a
# C-level limit (thousands), so there the opening brackets are counted instead.
_ORJSON_MAX_DEPTH = 1024


class _Incomplete(Exception):
    """The typed view lacks an (optional) field the decision needs: the reference decides."""


class _Label(msgspec.Struct):
    name: str


class _Account(msgspec.Struct):
    id: _Int
    login: str

    def person(self) -> Person:
        return Person(id=str(self.id), login=self.login)


class _Sender(_Account):
    type: str | None = None


class _Issue(msgspec.Struct):
    id: _Int
    number: _Int
    title: str
    html_url: str
    user: _Account
    body: str | None = None
    labels: list[_Label] | None = None
    # Presence only, never decoded: Raw() when absent, Raw(b"null") when null.
    pull_request: msgspec.Raw = msgspec.Raw()


class _Repository(msgspec.Struct):
    id: _Int
    full_name: str
    html_url: str | None = None


class _Installation(msgspec.Struct):
    id: _Int


class _IssuesDelivery(msgspec.Struct):
    """The typed view of an ``issues`` body, type-checked as a whole by the decode.

    The objects are optional, as an ignored action needs none of them (a decision that
    needs a missing one raises ``_Incomplete``); inside them, what the reference requires
    is required and not nullable, so a body it would refuse never decodes.
    """

    action: str
    label: _Label | None = None
    issue: _Issue | None = None
    repository: _Repository | None = None
    sender: _Sender | None = None
    installation: _Installation | None = None

    def label_name(self) -> str | None:
        return None if self.label is None else self.label.name

    def issue_label_names(self) -> list[str]:
        return [label.name for label in self._issue().labels or ()]

    def is_pull_request(self) -> bool:
        return bytes(self._issue().pull_request) not in (b"", b"null")

    def issue_event(self, delivery: _Delivery, action: str) -> IssueEvent:
        issue, repository, sender = self._issue(), self.repository, self.sender
        if repository is None or sender is None:
            raise _Incomplete
        return _issue_event(
            delivery,
            action,
            repo_id=repository.id,
            number=issue.number,
            issue_id=issue.id,
            title=issue.title,
            body=issue.body,
            url=issue.html_url,
            scope=repository.full_name,
            author=issue.user.person(),
            labeler=sender.person(),
            installation_id=None if self.installation is None else self.installation.id,
            repository_url=repository.html_url,
            sender_type=sender.type,
        )

    def _issue(self) -> _Issue:
        if self.issue is None:
            raise _Incomplete
        return self.issue


_ISSUES_DECODER = msgspec.json.Decoder(_IssuesDelivery)


def _is_utf8(body: bytes) -> bool:
    """orjson refuses invalid UTF-8 anywhere; msgspec does not check strings it skips."""
    if body.isascii():
        return True
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _nesting_fits_orjson(body: bytes) -> bool:
    """Whether msgspec cannot accept nesting that orjson refuses (see ``_ORJSON_MAX_DEPTH``)."""
    if sys.version_info < (3, 12):
        return sys.getrecursionlimit() <= _ORJSON_MAX_DEPTH
    return body.count(b"[") + body.count(b"{") <= _ORJSON_MAX_DEPTH


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


def _is_form_encoded(headers: Mapping[str, str]) -> bool:
    """GitHub's ``form`` content type; anything else is decoded as JSON."""
    content_type = (_header(headers, "content-type") or "").split(";")[0].strip().lower()
    return content_type == "application/x-www-form-urlencoded"
