"""Linear webhook deliveries: verify, check freshness, parse into a ``Decision`` (pure).

Nothing here reads a clock, the network or the environment: the web layer hands
over the headers, the raw body bytes, the configured secrets and ``now`` (UNIX
seconds), and gets back a ``Trigger`` or an ``Ignored``, or a ``WebhookError``
subclass (``SignatureError`` → 401, ``MalformedPayload`` → 400). Linear has no
ping delivery, so ``Ping`` is never returned.

Policy decisions:

- The signature (``Linear-Signature``: bare hex HMAC-SHA256 of the raw body) is
  checked first, against every configured secret (rotation).
- Freshness: the body's ``webhookTimestamp`` (UNIX milliseconds) must be within
  ``FRESHNESS_WINDOW_SECONDS`` (60 s) of ``now`` in either direction, as Linear
  recommends; otherwise ``SignatureError`` (a stale or future delivery is treated
  like a bad signature: it may be a replay). It is read from the body only after
  the signature matched, so it is covered by the signature. The
  ``Linear-Timestamp`` header is not signed and never counts: a body without a
  ``webhookTimestamp`` is refused the same way.
- The entity type comes from the body's ``type`` (the ``Linear-Event`` header
  says the same and is not required).
- Only ``Issue`` deliveries can trigger: ``create`` when the new issue carries
  the trigger label, ``update`` when ``data.labelIds`` gained the trigger
  label relative to ``updatedFrom.labelIds`` (a ``null`` previous value counts
  as no labels). An ``update`` whose ``updatedFrom`` has no ``labelIds`` did not
  touch labels, and one where the label was already on the issue before (e.g.
  another label changed at the same time) adds nothing.
- An ``Issue`` ``update`` that removed labels is a ``Change`` (``unlabeled``): a
  removed label is known by id only (its name is gone from ``data.labels``), so
  the removed ids travel in ``extra["removed_label_ids"]`` and the worker compares
  them with the trigger label's id it kept when the delegation started. One that
  moved the issue into a ``completed``, ``canceled`` or ``duplicate`` state is a
  ``Change`` (``closed``).
- A ``Comment`` ``create`` on an issue whose first line starts with the command
  word is a ``Comment``, unless an app wrote it (``botActor``).
- The trigger label matches a label whose **name** equals it
  case-insensitively (names come from ``data.labels``), or whose **id** equals
  it exactly, so that a deployment may configure the label's id to avoid
  ambiguity between team and workspace labels of the same name.
- Other types and actions are answered with ``Ignored`` and a specific reason;
  known-but-unused ones say "is not handled", unknown ones "is not supported".
- Fields are only required where they are used: an ignored delivery does not
  need a well-formed ``data``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from service.core.events import (
    Change,
    ChangeEvent,
    Comment,
    CommentEvent,
    Decision,
    Ignored,
    IssueEvent,
    Person,
    Trigger,
)
from service.errors import MalformedPayload, SignatureError
from service.trackers.payload import (
    Payload,
    as_object as _as_object,
    decode_object,
    field as _field,
    header as _header,
    json_type as _json_type,
    optional as _optional,
    optional_object as _optional_object,
    required_object as _object,
    typed as _typed,
)
from service.trackers.signing import signature_matches

SIGNATURE_HEADER = "linear-signature"
DELIVERY_HEADER = "linear-delivery"
EVENT_HEADER = "linear-event"
FRESHNESS_WINDOW_SECONDS = 60.0

_SIGNATURE_RE = re.compile(r"[0-9a-fA-F]{64}")
_MAX_DELIVERY_ID = 128

Handler = Callable[["_Delivery"], Decision]

# Entity types a workspace webhook may send besides ``Issue`` and ``Comment``; answered
# 200, no work.
IGNORED_TYPES = frozenset(
    {
        "IssueLabel",
        "IssueAttachment",
        "Attachment",
        "Reaction",
        "Project",
        "ProjectUpdate",
        "Cycle",
        "Document",
        "Initiative",
        "InitiativeUpdate",
        "Customer",
        "CustomerNeed",
        "User",
        "AuditEntry",
        "IssueSLA",
        "OAuthApp",
        "AppUserNotification",
        "PermissionChange",
        "AgentSessionEvent",
    }
)

# ``Issue`` actions the bridge knows about and deliberately does nothing for.
IGNORED_ISSUE_ACTIONS = frozenset({"remove", "restore"})


# ---------------------------------------------------------------------------
# Signature and freshness


def signature_header(headers: Mapping[str, str]) -> str:
    """The hex digest of ``Linear-Signature``; ``SignatureError`` when the header is
    missing or not 64 hex digits. Needs no body: the web layer calls it before
    reading one."""
    value = _header(headers, SIGNATURE_HEADER)
    if value is None:
        raise SignatureError("missing Linear-Signature header")
    if _SIGNATURE_RE.fullmatch(value.strip()) is None:
        raise SignatureError("malformed Linear-Signature header (expected 64 hex digits)")
    return value.strip()


def verify_linear_signature(
    headers: Mapping[str, str], body: bytes, secrets: Sequence[str]
) -> None:
    """Check ``Linear-Signature`` (bare hex HMAC-SHA256 of the raw ``body``) against every secret.

    ``headers`` may use any casing (a plain dict or Starlette ``Headers``); the
    hex digest may be upper or lower case. Every configured (non-empty) secret
    is compared in constant time, so a rotation works by listing both secrets.
    Raises ``SignatureError`` when no secret is configured, the header is missing
    or not 64 hex digits, or no secret matches. Returns ``None``.
    """
    usable = [secret for secret in secrets if secret]
    if not usable:
        raise SignatureError("no Linear webhook secret is configured")
    if not signature_matches(body, signature_header(headers), usable):
        raise SignatureError("Linear-Signature matches no configured secret")


def check_linear_freshness(payload: Payload, *, now: float) -> None:
    """Refuse a delivery sent more than 60 s before or after ``now`` (UNIX seconds).

    The send time is the body's signed ``webhookTimestamp`` (UNIX ms); exactly 60 s
    off is still accepted. Raises ``SignatureError`` when it is outside the window
    or absent, and ``MalformedPayload`` when it is not a finite number.
    """
    sent_ms = _sent_at_ms(payload)
    skew = sent_ms / 1000.0 - now
    if abs(skew) > FRESHNESS_WINDOW_SECONDS:
        when = "old" if skew < 0 else "in the future"
        raise SignatureError(
            f"delivery timestamp is {abs(skew):.0f} s {when}, outside the "
            f"{FRESHNESS_WINDOW_SECONDS:.0f} s window (replay, or a clock out of sync)"
        )


def _sent_at_ms(payload: Payload) -> float:
    """The signed send time in UNIX ms from the body; finite, or refused."""
    if "webhookTimestamp" not in payload:
        raise SignatureError("the body has no webhookTimestamp, so it may be a replay")
    value = payload["webhookTimestamp"]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedPayload(f"webhookTimestamp is a JSON {_json_type(value)}, not a number")
    number = float(value)
    if not math.isfinite(number):
        raise MalformedPayload("delivery timestamp is not a finite number")
    return number


# ---------------------------------------------------------------------------
# Parsing


class _Delivery:
    """A verified, fresh, decoded delivery: header values plus the JSON object."""

    __slots__ = ("command", "delivery_id", "payload", "trigger_label")

    def __init__(self, *, delivery_id: str, payload: Payload, trigger_label: str,
                 command: str) -> None:
        self.delivery_id = delivery_id
        self.payload = payload
        self.trigger_label = trigger_label
        self.command = command


def parse_linear_delivery(
    headers: Mapping[str, str],
    body: bytes,
    *,
    secrets: Sequence[str],
    trigger_label: str,
    now: float,
    command: str = "/agent",
) -> Decision:
    """Verify and parse one Linear delivery into a ``Decision``.

    In this order: the signature over the raw bytes; the body must be a JSON
    object; the timestamp must be within 60 s of ``now`` (UNIX seconds); the
    ``Linear-Delivery`` header must be present; then the delivery is routed by
    ``type`` and ``action``. Raises ``SignatureError`` (bad signature, stale or
    future delivery) or ``MalformedPayload``; never ``KeyError`` or ``TypeError``.
    """
    verify_linear_signature(headers, body, secrets)
    payload = decode_linear_body(body)
    check_linear_freshness(payload, now=now)
    delivery = _Delivery(delivery_id=_delivery_id(headers), payload=payload,
                         trigger_label=trigger_label, command=command)
    return _dispatch(delivery)


def decode_linear_body(body: bytes) -> Payload:
    """Decode a delivery body into a JSON object; ``MalformedPayload`` for anything else."""
    return decode_object(body)


def _dispatch(delivery: _Delivery) -> Decision:
    """Route a delivery through the (type, action) table; name what is ignored."""
    kind = _field(delivery.payload, "type", str, "type")
    if kind == "Comment":
        return _on_comment(delivery)
    if kind != "Issue":
        verb = "is not handled" if kind in IGNORED_TYPES else "is not supported"
        return Ignored(f"type '{kind}' {verb}")
    action = _field(delivery.payload, "action", str, "action")
    handler = _ISSUE_HANDLERS.get(action)
    if handler is not None:
        return handler(delivery)
    verb = "is not handled" if action in IGNORED_ISSUE_ACTIONS else "is not supported"
    return Ignored(f"action '{action}' {verb}")


def _on_create(delivery: _Delivery) -> Decision:
    """``Issue``/``create``: trigger when the new issue already carries the trigger label."""
    data = _object(delivery.payload, "data", "data")
    label_id = _trigger_label_id(data, _label_ids(data), delivery.trigger_label)
    if label_id is None:
        return Ignored("issue was created without the trigger label")
    return _trigger(delivery, data, label_id)


#: Workflow state types in which an issue is closed.
CLOSED_STATE_TYPES = frozenset({"completed", "canceled", "duplicate"})


def _on_update(delivery: _Delivery) -> Decision:
    """``Issue``/``update``: a trigger when ``data.labelIds`` gained the trigger label; a
    change when labels were removed or the issue moved to a closed state."""
    updated_from = delivery.payload.get("updatedFrom")
    if updated_from is None:
        return Ignored("update did not change labels")
    previous_raw = _as_object(updated_from, "updatedFrom")
    data = _object(delivery.payload, "data", "data")
    if "stateId" in previous_raw and _state_type(data) in CLOSED_STATE_TYPES:
        return Change(_change(delivery, data, "closed"))
    if "labelIds" not in previous_raw:
        return Ignored("update did not change labels")
    current = _label_ids(data)
    previous = _id_list(previous_raw.get("labelIds"), "updatedFrom.labelIds")
    added = [label_id for label_id in current if label_id not in previous]
    label_id = _trigger_label_id(data, added, delivery.trigger_label)
    if label_id is not None:
        return _trigger(delivery, data, label_id)
    removed = [label_id for label_id in previous if label_id not in current]
    if removed:
        return Change(_change(delivery, data, "unlabeled",
                              extra={"removed_label_ids": ",".join(removed)}))
    if _trigger_label_id(data, current, delivery.trigger_label) is not None:
        return Ignored("trigger label was already on the issue")
    return Ignored("update did not add the trigger label")


def _state_type(data: Payload) -> str | None:
    state = _optional_object(data, "state", "data.state")
    return _optional(state, "type", str, "data.state.type") if state is not None else None


def _change(delivery: _Delivery, data: Payload, change: Literal["unlabeled", "closed"], *,
            extra: dict[str, str] | None = None) -> ChangeEvent:
    issue_id = _field(data, "id", str, "data.id")
    identifier = _field(data, "identifier", str, "data.identifier")
    return ChangeEvent(
        tracker="linear",
        delivery_id=delivery.delivery_id,
        issue_key=f"linear:{issue_id}",
        issue_id=issue_id,
        number=identifier,
        url=_issue_url(delivery.payload, data),
        scope=_scope(_optional_object(data, "team", "data.team"), identifier),
        change=change,
        actor=_actor(delivery.payload),
        extra=extra or {},
    )


def _on_comment(delivery: _Delivery) -> Decision:
    """``Comment``/``create``: a ``Comment`` when a person wrote a command on an issue."""
    action = _field(delivery.payload, "action", str, "action")
    if action != "create":
        return Ignored(f"comment action '{action}' is not handled")
    data = _object(delivery.payload, "data", "data")
    body = _field(data, "body", str, "data.body")
    first = body.lstrip().partition("\n")[0].strip()
    if first != delivery.command and not first.startswith((delivery.command + " ",
                                                           delivery.command + "\t")):
        return Ignored("comment is not a command")
    if data.get("botActor") is not None:
        return Ignored("comments by apps never run commands")
    issue_id = _optional(data, "issueId", str, "data.issueId")
    if not issue_id:
        return Ignored("comment is not on an issue")
    user_id = _optional(data, "userId", str, "data.userId")
    if not user_id:
        return Ignored("comment has no author")
    user = _optional_object(data, "user", "data.user")
    name = _optional(user, "name", str, "data.user.name") if user is not None else None
    issue = _optional_object(data, "issue", "data.issue")
    identifier = (_optional(issue, "identifier", str, "data.issue.identifier") or ""
                  if issue is not None else "")
    url = ((_optional(issue, "url", str, "data.issue.url") if issue is not None else None)
           or _optional(delivery.payload, "url", str, "url") or "")
    return Comment(CommentEvent(
        tracker="linear",
        delivery_id=delivery.delivery_id,
        issue_key=f"linear:{issue_id}",
        issue_id=issue_id,
        number=identifier,
        url=url.partition("#")[0],
        scope=identifier.rpartition("-")[0],
        comment_id=_field(data, "id", str, "data.id"),
        author=Person(user_id, name or ""),
        text=body,
    ))


_ISSUE_HANDLERS: dict[str, Handler] = {
    "create": _on_create,
    "update": _on_update,
}


def _label_ids(data: Payload) -> list[str]:
    """``data.labelIds`` (always sent by Linear; ``null`` is read as no labels)."""
    if "labelIds" not in data:
        raise MalformedPayload("data.labelIds is missing")
    return _id_list(data["labelIds"], "data.labelIds")


def _id_list(value: object, where: str) -> list[str]:
    """A JSON array of strings (``null`` → empty)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise MalformedPayload(f"{where} is a JSON {_json_type(value)}, expected an array")
    return [_typed(item, str, f"{where}[]") for item in value]


def _trigger_label_id(data: Payload, candidates: list[str], trigger_label: str) -> str | None:
    """The first of ``candidates`` (label ids) that is the trigger label, by name or id."""
    if not candidates:
        return None
    names = _label_names(data)
    wanted = trigger_label.casefold()
    for label_id in candidates:
        if label_id == trigger_label or names.get(label_id, "").casefold() == wanted:
            return label_id
    return None


def _label_names(data: Payload) -> dict[str, str]:
    """id → name from ``data.labels``; labels without a text id or name are skipped."""
    labels = data.get("labels")
    if labels is None:
        return {}
    if not isinstance(labels, list):
        raise MalformedPayload(f"data.labels is a JSON {_json_type(labels)}, expected an array")
    names: dict[str, str] = {}
    for label in labels:
        entry = _as_object(label, "data.labels[]")
        label_id, name = entry.get("id"), entry.get("name")
        if isinstance(label_id, str) and isinstance(name, str):
            names[label_id] = name
    return names


def _trigger(delivery: _Delivery, data: Payload, label_id: str) -> Decision:
    """Build the ``Trigger`` from a triggering delivery's ``data``."""
    payload = delivery.payload
    issue_id = _field(data, "id", str, "data.id")
    identifier = _field(data, "identifier", str, "data.identifier")
    team = _optional_object(data, "team", "data.team")
    event = IssueEvent(
        tracker="linear",
        delivery_id=delivery.delivery_id,
        issue_key=f"linear:{issue_id}",
        issue_id=issue_id,
        number=identifier,
        title=_field(data, "title", str, "data.title"),
        body=_optional(data, "description", str, "data.description") or "",
        url=_issue_url(payload, data),
        scope=_scope(team, identifier),
        author=_author(data),
        labeler=_actor(payload),
        installation_id=None,
        extra=_extra(payload, team, label_id),
    )
    return Trigger(event)


def _issue_url(payload: Payload, data: Payload) -> str:
    """``data.url``, else the envelope's ``url``; one of them is required."""
    url = _optional(data, "url", str, "data.url") or _optional(payload, "url", str, "url")
    if not url:
        raise MalformedPayload("data.url is missing")
    return url


def _scope(team: Payload | None, identifier: str) -> str:
    """The team key (``data.team.key``), else the identifier's prefix (``ENG`` of ``ENG-123``)."""
    key = _optional(team, "key", str, "data.team.key") if team is not None else None
    if key:
        return key
    prefix, dash, _ = identifier.rpartition("-")
    if not dash or not prefix:
        raise MalformedPayload("data.team.key is missing")
    return prefix


def _author(data: Payload) -> Person | None:
    """The issue's creator, or ``None`` when Linear sends no ``creatorId`` (integrations)."""
    creator_id = _optional(data, "creatorId", str, "data.creatorId")
    if not creator_id:
        return None
    creator = _optional_object(data, "creator", "data.creator")
    name = _optional(creator, "name", str, "data.creator.name") if creator is not None else None
    return Person(creator_id, name or "")


def _actor(payload: Payload) -> Person | None:
    """Who made the change (user, OAuth client, integration), if it has an id."""
    actor = _optional_object(payload, "actor", "actor")
    if actor is None:
        return None
    actor_id = _optional(actor, "id", str, "actor.id")
    if not actor_id:
        return None
    return Person(actor_id, _optional(actor, "name", str, "actor.name") or "")


def _extra(payload: Payload, team: Payload | None, label_id: str) -> dict[str, str]:
    """A few strings that are useful later (logs, comments, content de-duplication)."""
    extra = {"action": _field(payload, "action", str, "action"), "label_id": label_id}
    sources: list[tuple[str, Payload | None, str]] = [
        ("organization_id", payload, "organizationId"),
        ("webhook_id", payload, "webhookId"),
        ("team_name", team, "name"),
        ("actor_type", _optional_object(payload, "actor", "actor"), "type"),
    ]
    for name, source, key in sources:
        value = source.get(key) if source is not None else None
        if isinstance(value, str) and value:
            extra[name] = value
    return extra


# ---------------------------------------------------------------------------
# Headers


def _delivery_id(headers: Mapping[str, str]) -> str:
    value = (_header(headers, DELIVERY_HEADER) or "").strip()
    if not value:
        raise MalformedPayload("missing Linear-Delivery header")
    if len(value) > _MAX_DELIVERY_ID or not value.isprintable():
        raise MalformedPayload("Linear-Delivery header is not a delivery id")
    return value


__all__ = [
    "FRESHNESS_WINDOW_SECONDS",
    "IGNORED_ISSUE_ACTIONS",
    "IGNORED_TYPES",
    "check_linear_freshness",
    "decode_linear_body",
    "parse_linear_delivery",
    "signature_header",
    "verify_linear_signature",
]
