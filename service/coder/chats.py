"""The Coder Chats API backend (Coder Agents; required from v2.37), per ``coder-chats.md``.

A delegation becomes one chat owned by the token's user. Chats have no unique
name, so the chat is tagged with labels and **always** looked up by label
before one is created; that lookup is what keeps one chat per delegation (I1),
whatever ``may_exist`` says, and whichever earlier attempt may have created it:

* ``coder-bridge: "true"`` marks every chat the bridge made;
* ``coder-bridge/delegation: <32 hex>`` is a SHA-256 digest of the delegation
  key and is what the lookup filters on (hex needs no escaping in
  ``label=key:value`` and fits every label rule);
* ``coder-bridge/key: <delegation key>`` keeps the readable key (``:`` and
  ``#`` are allowed in values, not in keys), cut to 256 bytes.

When the route names a template, the workspace is created first with the
user's token (``workspaces.WorkspaceCreator``) and the chat is pinned to it
with ``workspace_id``; with no template the agent picks one itself.

``base`` is ``/api/v2`` or ``/api/experimental`` (``detect.ApiDetector`` finds
it); only ``<base>/chats`` routes and core ``/api/v2`` routes are called.
Responses are parsed leniently: unknown statuses and fields are logged, never
fatal, and ``last_error`` may be a string, an object, ``null`` or absent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote

from service.coder.base import CreatedWork, OnWait, SendOutcome, Snapshot, WorkSpec
from service.coder.client import CoderClient
from service.coder.workspaces import WorkspaceCreator
from service.core.status import ChatSnapshot
from service.errors import NotFound, PermanentError, RateLimited, RouteNotFound, TokenRejected
from service.logging import get_logger

API_V2: Final = "/api/v2"

LABEL_BRIDGE: Final = "coder-bridge"
LABEL_DELEGATION: Final = "coder-bridge/delegation"
LABEL_KEY: Final = "coder-bridge/key"
LABEL_VALUE_MAX_BYTES: Final = 256
DIGEST_CHARS: Final = 32
LOOKUP_LIMIT: Final = 25
LIST_PAGE_SIZE: Final = 100
LIST_PAGES: Final = 20

WORKING_STATUSES: Final = frozenset({"pending", "running", "interrupting", "paused"})
IDLE_STATUSES: Final = frozenset({"waiting", "completed"})
KNOWN_STATUSES: Final = WORKING_STATUSES | IDLE_STATUSES | {"error", "requires_action"}

DEFAULT_SETTLE_SECONDS: Final = 60.0
DEFAULT_IDLE_SECONDS: Final = 15 * 60.0

_KNOWN_FIELDS: Final = frozenset(
    {
        "id", "organization_id", "owner_id", "owner_username", "owner_name", "title", "status",
        "last_error", "workspace_id", "build_id", "agent_id", "parent_chat_id", "root_chat_id",
        "last_model_config_id", "last_reasoning_effort", "mode", "plan_mode",
        "last_turn_summary", "summary", "diff_status", "created_at", "updated_at", "archived",
        "shared", "pin_order", "mcp_server_ids", "labels", "has_unread", "client_type", "files",
        "queued_for_capacity", "context", "warnings", "children",
    }
)  # fmt: skip

log = get_logger("service.coder.chats")

Now = Callable[[], datetime]


# --- parsed objects ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatError:
    """A chat's ``last_error``: a legacy string becomes ``ChatError(message, kind="generic")``."""

    message: str
    kind: str = "generic"
    detail: str = ""
    retryable: bool = False


@dataclass(frozen=True)
class Chat:
    """The parts of a Coder Chat the bridge reads (everything else is ignored)."""

    id: str
    status: str
    owner_name: str = ""
    title: str = ""
    archived: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)
    last_error: ChatError | None = None
    workspace_id: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    summary: str = ""
    has_diff: bool = False
    pr_url: str = ""


def parse_chat(body: Any) -> Chat:
    """A ``Chat`` from Coder's object; ``PermanentError`` only when it has no ``id``.

    Tolerates missing keys, wrong types (read as absent), unknown statuses and
    unknown fields (both logged). ``status`` missing or not a string reads ``unknown``.
    """
    if not isinstance(body, dict) or not _text(body.get("id")):
        raise PermanentError("coder", "Coder's answer about the chat lacks its id")
    status = _text(body.get("status")) or "unknown"
    if status not in KNOWN_STATUSES:
        log.warning("chat_status_unknown", status=status, chat_id=body["id"])
    extra = sorted(k for k in body if k not in _KNOWN_FIELDS)
    if extra:
        log.debug("chat_fields_unknown", fields=extra[:20])
    labels = body.get("labels")
    return Chat(
        id=body["id"],
        status=status,
        owner_name=_text(body.get("owner_username")) or _text(body.get("owner_name")),
        title=_text(body.get("title")),
        archived=body.get("archived") is True,
        labels={k: v for k, v in labels.items() if isinstance(v, str)}
        if isinstance(labels, dict)
        else {},
        last_error=parse_chat_error(body.get("last_error")),
        workspace_id=_text(body.get("workspace_id")) or None,
        created_at=_time(body.get("created_at")),
        updated_at=_time(body.get("updated_at")),
        summary=_text(body.get("last_turn_summary")) or _text(body.get("summary")),
        has_diff=bool(body.get("diff_status")),
        pr_url=_text(diff.get("url")) if isinstance(diff := body.get("diff_status"), dict) else "",
    )


def parse_chat_error(value: Any) -> ChatError | None:
    """``last_error`` as sent by any server: a string, a ChatError object, ``null`` or absent.

    An empty string or an object without a usable ``message`` still counts as an
    error when it is present (``message`` then reads ``""``); ``None`` means no error.
    """
    if value is None:
        return None
    if isinstance(value, str):
        return ChatError(message=" ".join(value.split())) if value.strip() else None
    if isinstance(value, dict):
        return ChatError(
            message=" ".join(_text(value.get("message")).split()),
            kind=_text(value.get("kind")) or "generic",
            detail=" ".join(_text(value.get("detail")).split()),
            retryable=value.get("retryable") is True,
        )
    log.warning("chat_last_error_unreadable", type=type(value).__name__)
    return ChatError(message="")


# --- the backend -------------------------------------------------------------------------------


class ChatsBackend:
    """``CoderBackend`` over the Chats API at ``base`` of one deployment, as the client's user.

    ``workspaces`` creates the workspace for routes that name a template (``None``:
    never create one; the agent then chooses, and a template is logged as ignored).
    ``settle_seconds``/``idle_seconds`` tune when a ``waiting`` chat counts as
    finished (see ``is_active``); ``now`` is the wall clock (injectable).
    """

    def __init__(
        self,
        client: CoderClient,
        coder_url: str,
        *,
        base: str,
        workspaces: WorkspaceCreator | None = None,
        settle_seconds: float = DEFAULT_SETTLE_SECONDS,
        idle_seconds: float = DEFAULT_IDLE_SECONDS,
        now: Now | None = None,
    ) -> None:
        self._client = client
        self._coder_url = coder_url.rstrip("/")
        self._base = base.rstrip("/")
        self._workspaces = workspaces
        self._settle = settle_seconds
        self._idle = idle_seconds
        self._now: Now = now or _utcnow
        self._org_ids: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"ChatsBackend(coder_url={self._coder_url!r}, base={self._base!r})"

    async def ensure(self, spec: WorkSpec, *, may_exist: bool,
                     on_wait: OnWait | None = None) -> CreatedWork:
        """Return the chat labelled for ``spec.delegation_key``, creating it only if none exists.

        The label lookup always runs first (``may_exist`` changes nothing: chats
        have no name to conflict on). Creating resolves the organization, makes
        the workspace when ``spec.template`` is set, then posts the chat. Raises
        ``PermanentError`` in plain words when Coder refuses the chat (not a
        member of the organization, no model configured, usage limit, invalid
        labels, a bad workspace), when the workspace cannot be made or built, or
        when the new chat is already in ``error``; ``TokenRejected``,
        ``RouteNotFound`` and ``TransientError`` pass through unchanged.
        """
        existing = await self.find(spec.delegation_key)
        if existing is not None:
            log.info("chat_reused", chat_id=existing.id, may_exist=may_exist)
            return self._created(existing)
        org_id = await self._organization_id(spec.organization)
        workspace_id = await self._workspace_for(spec, org_id, on_wait)
        body = create_body(spec, org_id, workspace_id)
        try:
            answer = await self._client.request("POST", f"{self._base}/chats", json=body)
        except (TokenRejected, RouteNotFound):
            raise
        except PermanentError as exc:
            raise explain_create_failure(exc) from None
        chat = parse_chat(answer)
        if chat.status == "error":
            raise failed_chat_error(chat, self._link(chat.id))
        log.info("chat_created", chat_id=chat.id, status=chat.status, workspace_id=workspace_id)
        return self._created(chat)

    async def is_active(self, work: CreatedWork) -> bool:
        """Whether the chat may still be working.

        False when it is gone (404), archived, in ``error``, or ``waiting``/
        ``completed`` and clearly finished: it has a turn summary or a diff, or
        was updated at least ``settle_seconds`` after it was created, or has sat
        idle since creation for ``idle_seconds``. A chat seen ``waiting`` right
        after creation is therefore still active (two quick triggers must not make
        two chats). Every other status, unknown ones included, is active.
        """
        try:
            body = await self._client.request("GET", f"{self._base}/chats/{_seg(work.id)}")
        except NotFound:
            return False
        chat = parse_chat(body)
        if chat.archived or chat.status == "error":
            return False
        if chat.status in IDLE_STATUSES:
            return not self._clearly_finished(chat)
        return True

    async def list_snapshots(self, works: list[CreatedWork]) -> dict[str, Snapshot]:
        """Every tracked chat the user's list of the bridge's chats shows (labelled
        ``coder-bridge:true``, not archived), paged until all are found or it ends."""
        wanted = {work.id for work in works}
        found: dict[str, Snapshot] = {}
        for page in range(LIST_PAGES):
            params = {"label": f"{LABEL_BRIDGE}:true", "q": "archived:false",
                      "limit": str(LIST_PAGE_SIZE), "offset": str(page * LIST_PAGE_SIZE)}
            chats = _chats_in(await self._client.request("GET", f"{self._base}/chats",
                                                         params=params))
            found.update((c.id, chat_snapshot(c)) for c in chats if c.id in wanted)
            if len(chats) < LIST_PAGE_SIZE or wanted <= found.keys():
                break
        return found

    async def snapshot(self, work: CreatedWork) -> Snapshot:
        """``GET <base>/chats/{id}``; when it has ended its turn and carries no summary
        (older servers), the newest assistant message is read too."""
        try:
            chat = parse_chat(await self._client.request("GET",
                                                         f"{self._base}/chats/{_seg(work.id)}"))
        except NotFound:
            return ChatSnapshot(exists=False)
        if chat.status in IDLE_STATUSES and not chat.summary:
            chat = replace(chat, summary=await self._last_answer(chat.id))
        return chat_snapshot(chat)

    async def send(self, work: CreatedWork, text: str) -> SendOutcome:
        """A new message (``busy_behavior: queue``: Coder queues it while the agent works).
        A 409 means "not now" (``not_ready``); a full queue (429) ``busy``; an archived or
        unknown chat ``gone``."""
        body = {"content": [{"type": "text", "text": text}], "busy_behavior": "queue"}
        try:
            await self._client.request("POST", f"{self._base}/chats/{_seg(work.id)}/messages",
                                       json=body)
        except NotFound:
            return "gone"
        except RateLimited:
            return "busy"
        except PermanentError as exc:
            if exc.status == 409:
                return "not_ready"
            if exc.status == 400:
                return "gone"  # archived: Coder takes no more messages
            raise
        return "sent"

    async def stop(self, work: CreatedWork) -> None:
        """Interrupt the chat, then archive it (interrupt first, so a running turn stops).
        A chat that is gone is left alone."""
        path = f"{self._base}/chats/{_seg(work.id)}"
        try:
            await self._client.request("POST", f"{path}/interrupt")
            await self._client.request("PATCH", path, json={"archived": True})
        except NotFound:
            return

    async def _last_answer(self, chat_id: str) -> str:
        """The text of the chat's newest assistant message, or ``""``."""
        answer = await self._client.request("GET", f"{self._base}/chats/{_seg(chat_id)}/messages",
                                            params={"limit": "20"})
        messages = answer.get("messages") if isinstance(answer, dict) else None
        for message in messages if isinstance(messages, list) else []:
            if isinstance(message, dict) and message.get("role") == "assistant":
                parts = message.get("content")
                texts = [str(p["text"]) for p in parts if isinstance(p, dict)
                         and p.get("type") == "text" and isinstance(p.get("text"), str)] \
                    if isinstance(parts, list) else []
                if texts:
                    return " ".join(texts)
        return ""

    async def find(self, delegation_key: str) -> Chat | None:
        """The caller's chat labelled for ``delegation_key`` (archived ones too), or ``None``.

        Items are checked against the label again client-side, so a server that
        ignored the filter cannot make us adopt someone else's chat. With several
        matches (never expected) the oldest wins.
        """
        wanted = delegation_label_value(delegation_key)
        for query in ("", "archived:true"):
            params = {"label": f"{LABEL_DELEGATION}:{wanted}", "limit": str(LOOKUP_LIMIT)}
            if query:
                params["q"] = query
            body = await self._client.request("GET", f"{self._base}/chats", params=params)
            matches = [c for c in _chats_in(body) if c.labels.get(LABEL_DELEGATION) == wanted]
            if matches:
                if len(matches) > 1:
                    log.warning("chat_lookup_ambiguous", count=len(matches))
                return min(matches, key=_age_key)
        return None

    # --- steps ---------------------------------------------------------------------------------

    async def _organization_id(self, organization: str) -> str:
        """The uuid of ``organization`` (name or id); empty → the user's only organization."""
        ref = organization.strip()
        if ref in self._org_ids:
            return self._org_ids[ref]
        org_id = await (self._lookup_org(ref) if ref else self._only_org())
        self._org_ids[ref] = org_id
        return org_id

    async def _lookup_org(self, ref: str) -> str:
        try:
            body = await self._client.request("GET", f"{API_V2}/organizations/{_seg(ref)}")
        except NotFound:
            words = (f'Coder organization "{ref}" was not found, or your Coder account is not '
                     "a member of it; check coder.organization")
            raise NotFound("coder", words, status=404, public=words) from None
        org_id = _text(body.get("id")) if isinstance(body, dict) else ""
        if not org_id:
            raise PermanentError(
                "coder", f'Coder\'s answer about organization "{ref}" lacks its id'
            )
        return org_id

    async def _only_org(self) -> str:
        user = await self._client.fetch_me()
        if len(user.organization_ids) == 1:
            return user.organization_ids[0]
        count = len(user.organization_ids)
        words = (f"your Coder account belongs to {count} organizations, so the bridge cannot "
                 "tell which one the chat belongs to; set coder.organization")
        raise PermanentError("coder", words, public=words)

    async def _workspace_for(self, spec: WorkSpec, org_id: str,
                             on_wait: OnWait | None) -> str | None:
        template = spec.template.strip()
        if not template:
            return None
        if self._workspaces is None:
            log.warning("chat_template_ignored", template=template)
            return None
        workspace = await self._workspaces.ensure_running(
            name=spec.name,
            template=template,
            preset=spec.preset,
            organization=spec.organization.strip() or org_id,
            on_wait=on_wait,
        )
        return workspace.id

    def _clearly_finished(self, chat: Chat) -> bool:
        if chat.summary or chat.has_diff:
            return True
        if chat.created_at is None:
            return False
        updated = chat.updated_at or chat.created_at
        if (updated - chat.created_at).total_seconds() >= self._settle:
            return True
        return (self._now() - chat.created_at).total_seconds() >= self._idle

    def _link(self, chat_id: str) -> str:
        return f"{self._coder_url}/agents/{_seg(chat_id)}"

    def _created(self, chat: Chat) -> CreatedWork:
        return CreatedWork(
            kind="chat",
            id=chat.id,
            url=self._link(chat.id),
            owner_name=chat.owner_name,
            status=chat.status,
        )


# --- pure helpers ------------------------------------------------------------------------------


def chat_snapshot(chat: Chat) -> ChatSnapshot:
    """What a status check reads of a chat."""
    return ChatSnapshot(
        exists=True, status=chat.status, archived=chat.archived,
        error=chat.last_error.message if chat.last_error else "",
        summary=chat.summary, pr_url=chat.pr_url,
        updated_at=chat.updated_at.timestamp() if chat.updated_at else None)


def delegation_label_value(delegation_key: str) -> str:
    """The ``coder-bridge/delegation`` label value: 32 hex characters of SHA-256 of the key."""
    return hashlib.sha256(delegation_key.encode("utf-8")).hexdigest()[:DIGEST_CHARS]


def delegation_labels(delegation_key: str) -> dict[str, str]:
    """Every label the bridge puts on the chat of ``delegation_key`` (all valid for Coder)."""
    labels = {LABEL_BRIDGE: "true", LABEL_DELEGATION: delegation_label_value(delegation_key)}
    readable = _clip_bytes(delegation_key.strip(), LABEL_VALUE_MAX_BYTES)
    if readable:
        labels[LABEL_KEY] = readable
    return labels


def create_body(spec: WorkSpec, organization_id: str, workspace_id: str | None) -> dict[str, Any]:
    """The ``POST <base>/chats`` body: organization, the prompt as one text part, labels."""
    body: dict[str, Any] = {
        "organization_id": organization_id,
        "content": [{"type": "text", "text": spec.prompt}],
        "labels": delegation_labels(spec.delegation_key),
    }
    if workspace_id:
        body["workspace_id"] = workspace_id
    return body


def explain_create_failure(exc: PermanentError) -> PermanentError:
    """A refused chat create as a ``PermanentError`` whose message says what to do.

    Coder's own words are kept; a hint is added from the status (and, for
    wording only, a keyword of the message). The class never depends on text.
    """
    hint = _create_hint(exc)
    # Coder's short message is shown for the refusals it is known to send (not a member,
    # no model, a usage limit, invalid labels); never its detail or validations.
    known = exc.status in (400, 403, 409) and exc.server_message
    public = f"Coder did not start the chat: {exc.server_message}{hint}" if known else ""
    return PermanentError("coder", f"Coder did not start the chat: {exc.message}{hint}",
                          status=exc.status, public=public, server_message=exc.server_message)


def failed_chat_error(chat: Chat, url: str) -> PermanentError:
    """A chat that is in ``error`` straight after it was created: Coder's short
    ``last_error.message`` for the issue, its ``detail`` for the log only."""
    error = chat.last_error
    reason = (error.message if error else "") or "Coder gave no reason"
    hint = _KIND_HINTS.get(error.kind if error else "", "")
    public = f"Coder started the chat but it failed at once: {reason}.{hint} See {url}"
    detail = f" ({error.detail})" if error and error.detail else ""
    return PermanentError("coder", f"{public}{detail}", public=public)


_KIND_HINTS: Final = {
    "usage_limit": " Your Coder AI usage budget is used up; it can be tried again once it resets.",
    "config": " A Coder administrator has to fix the model configuration of Coder Agents.",
    "missing_key": " A Coder administrator has to add the model provider's API key.",
    "provider_disabled": " A Coder administrator has to enable the model provider.",
    "auth": " The model provider rejected Coder's credentials; a Coder administrator must fix it.",
    "rate_limit": " The model provider is rate limiting; label the issue again later.",
    "overloaded": " The model provider is overloaded; label the issue again later.",
}


def _create_hint(exc: PermanentError) -> str:
    text = exc.message.lower()
    if exc.status == 403:
        if "organization" in text:
            return (
                " Set coder.organization to an organization your Coder account belongs to, "
                "or ask a Coder administrator to add you to it."
            )
        if "experiment" in text:
            return " A Coder administrator has to enable Coder Agents on this server."
        return " Your Coder account may lack the role that allows Coder Agents (agents-access)."
    if exc.status == 409:
        return " Your Coder chat usage limit has been reached; try again after it resets."
    if exc.status == 413:
        return " The issue text is too long for a Coder chat (more than 256 KiB)."
    if exc.status == 400:
        if "model" in text:
            return (
                " A Coder administrator has to add an LLM provider and a default model "
                "for Coder Agents."
            )
        if "label" in text:
            return " The chat labels coder-bridge sent were refused; please report this."
        if "workspace" in text:
            return " The workspace prepared for this chat cannot be used."
        if "organization" in text:
            return " Set coder.organization."
    return ""


def _chats_in(body: Any) -> list[Chat]:
    if not isinstance(body, list):
        raise PermanentError("coder", "Coder's list of chats is not a JSON array")
    chats = []
    for item in body:
        try:
            chats.append(parse_chat(item))
        except PermanentError:
            log.warning("chat_list_item_unreadable")
    return chats


def _age_key(chat: Chat) -> tuple[int, datetime]:
    moment = chat.created_at
    return (0, moment) if moment is not None else (1, datetime.max.replace(tzinfo=UTC))


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _time(value: Any) -> datetime | None:
    """An RFC 3339 time (with zone; naive ones read as UTC), or ``None``."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _clip_bytes(text: str, limit: int) -> str:
    return text.encode("utf-8")[:limit].decode("utf-8", errors="ignore")


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _seg(value: str) -> str:
    """``value`` quoted as one path segment."""
    return quote(value, safe="")
