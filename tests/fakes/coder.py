"""An HTTP fake of one Coder deployment that behaves like the real server on the wire.

Follows ``/work/shared/reference/coder-tasks.md``: auth and 401 bodies (section
2), the error body and both 404 messages (section 3), users, templates by name,
PascalCase presets, and the Tasks endpoints with their validation rules.

Usage::

    fake = FakeCoder(mode="tasks")              # see MODES
    token = fake.add_user("alice")
    fake.add_template("default", "docker", presets=["small", {"Name": "large", "Default": True}])
    with serve_in_thread(fake.app()) as url:
        ...                                    # talk HTTP to ``url``
    assert len(fake.tasks_of("alice")) == 1

Routes are data: ``ROUTES`` lists every endpoint once, relative to a prefix and
tagged with a group (``core``, ``tasks``, ``chats``); ``MODES`` says which URL
prefixes serve each group, which groups sit behind the ``agents`` experiment
and which build version and Chats era the server reports:

* ``tasks-experimental`` (v2.28): Tasks under ``/api/experimental`` only;
* ``tasks-gated`` (≈ v2.32): Tasks on both prefixes; experimental Chats answer
  403 until ``enable_experiment("agents")``; legacy chat objects;
* ``tasks`` (v2.29 - v2.36): Tasks on both prefixes, ungated experimental Chats;
* ``both`` (v2.37): Chats on ``/api/v2`` and ``/api/experimental``, no Tasks;
* ``chats`` (v2.38+): Chats on ``/api/v2`` only.

``set_mode`` switches generation mid-test (an upgrade); state survives it.
Chats: ``configure_chats`` (no model, the 409 usage limit, chats born in
``error``), ``set_chat_state``, ``chats``/``chats_of``. Workspaces:
``configure_workspaces`` (auto-advance builds after N polls), ``add_workspace``,
``set_workspace_build``, ``workspaces``, ``workspace_preset_of``. Route names
for ``fail_next``/``delay_next`` are the ``name`` column of ``ROUTES`` (e.g.
``create_chat``, ``list_chats``, ``get_chat``, ``update_chat``,
``get_organization``, ``create_workspace``, ``get_workspace_by_name``,
``get_workspace``) and apply under every prefix. Anything not in the active
table answers ``404 {"message":"Route not found."}``.

Tests read state from their own thread while the server runs on a uvicorn
thread: every access to state holds ``self._lock``; handlers are synchronous and
run entirely under it; sleeps (``delay_next``) happen outside it.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import hmac
import json
import re
import secrets
import string
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, Final
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route, compile_path

SIGNED_OUT: Final = (
    "You are signed out or your session has expired. Please sign in again to continue."
)
NO_TOKEN_DETAIL: Final = 'Cookie "coder_session_token" or query parameter must be provided.'
RESOURCE_NOT_FOUND: Final = "Resource not found or you do not have access to this resource"
ROUTE_NOT_FOUND: Final = "Route not found."
RATE_LIMITED: Final = "You've been rate limited for sending more than 512 requests in 1m0s."
NAME_IN_USE: Final = "This value is already in use and should be unique."
NIL_UUID: Final = "00000000-0000-0000-0000-000000000000"
VERSION_HEADER: Final = "X-Coder-Build-Version"
AGENTS_GATE: Final = "Chat functionality requires enabling the 'agents' experiment."
NOT_A_MEMBER: Final = "You are not a member of the specified organization."
NO_MODEL: Final = "No default chat model config is configured."
WORKSPACE_NOT_FOUND: Final = "Workspace not found or you do not have access to this resource"
USAGE_LIMIT: Final = "Chat usage limit exceeded."
CHAT_STATUSES: Final = frozenset(
    {
        "waiting",
        "pending",
        "running",
        "paused",
        "completed",
        "error",
        "requires_action",
        "interrupting",
    }
)

_NAME_RE: Final = re.compile(r"^[a-zA-Z0-9]+(?:-[a-zA-Z0-9]+)*$")
_ID_ALPHABET: Final = string.ascii_lowercase + string.digits
_SECRET_ALPHABET: Final = string.ascii_letters + string.digits
_QUERY_TERM: Final = re.compile(r'(?:([^\s:]+):)?("[^"]*"|\S+)')
_LABEL_KEY: Final = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._/-]*$")
_LEGACY_CHAT_KEYS: Final = (
    "id",
    "owner_id",
    "workspace_id",
    "build_id",
    "agent_id",
    "parent_chat_id",
    "root_chat_id",
    "last_model_config_id",
    "title",
    "status",
    "last_error",
    "diff_status",
    "created_at",
    "updated_at",
    "archived",
    "pin_order",
    "mcp_server_ids",
    "labels",
    "has_unread",
)
_BUILD_JOB_STATUS: Final = {
    "pending": "pending",
    "starting": "running",
    "running": "succeeded",
    "failed": "failed",
    "canceling": "canceling",
    "canceled": "canceled",
    "stopping": "running",
    "stopped": "succeeded",
    "deleting": "running",
    "deleted": "succeeded",
}


# --- the route table ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FakeRoute:
    """One endpoint: ``path`` is relative to each prefix its ``group`` is served under.

    ``name`` is what ``fail_next``/``delay_next`` target; ``handler`` names a
    ``FakeCoder`` method taking a ``Call`` and returning a ``Response``.
    """

    method: str
    path: str
    name: str
    handler: str
    group: str
    auth: bool = True


ROUTES: tuple[FakeRoute, ...] = (
    FakeRoute("GET", "/buildinfo", "buildinfo", "_buildinfo", "core", auth=False),
    FakeRoute("GET", "/users", "list_users", "_list_users", "core"),
    FakeRoute("GET", "/users/{user}", "get_user", "_get_user", "core"),
    FakeRoute(
        "GET",
        "/organizations/{organization}/templates/{template}",
        "get_template",
        "_get_template",
        "core",
    ),
    FakeRoute("GET", "/templateversions/{version}/presets", "list_presets", "_presets", "core"),
    FakeRoute("GET", "/organizations/{organization}", "get_organization", "_get_org", "core"),
    FakeRoute("POST", "/users/{user}/workspaces", "create_workspace", "_create_workspace", "core"),
    FakeRoute(
        "GET",
        "/users/{user}/workspace/{workspace}",
        "get_workspace_by_name",
        "_get_workspace_by_name",
        "core",
    ),
    FakeRoute("GET", "/workspaces/{workspace}", "get_workspace", "_get_workspace", "core"),
    FakeRoute("GET", "/tasks", "list_tasks", "_list_tasks", "tasks"),
    FakeRoute("POST", "/tasks/{user}", "create_task", "_create_task", "tasks"),
    FakeRoute("GET", "/tasks/{user}/{task}", "get_task", "_get_task", "tasks"),
    FakeRoute("DELETE", "/tasks/{user}/{task}", "delete_task", "_delete_task", "tasks"),
    FakeRoute("POST", "/tasks/{user}/{task}/send", "send_task_input", "_send_task", "tasks"),
    FakeRoute("POST", "/tasks/{user}/{task}/pause", "pause_task", "_pause_task", "pause"),
    FakeRoute("POST", "/tasks/{user}/{task}/resume", "resume_task", "_resume_task", "pause"),
    FakeRoute("POST", "/chats", "create_chat", "_create_chat", "chats"),
    FakeRoute("GET", "/chats", "list_chats", "_list_chats", "chats"),
    FakeRoute("GET", "/chats/{chat}", "get_chat", "_get_chat", "chats"),
    FakeRoute("PATCH", "/chats/{chat}", "update_chat", "_update_chat", "chats"),
    FakeRoute("GET", "/chats/{chat}/messages", "list_chat_messages", "_list_messages", "chats"),
    FakeRoute("POST", "/chats/{chat}/messages", "send_chat_message", "_send_message", "chats"),
    FakeRoute("POST", "/chats/{chat}/interrupt", "interrupt_chat", "_interrupt_chat", "chats"),
    FakeRoute("GET", "/.well-known/oauth-authorization-server", "oauth2_discovery",
              "_oauth2_discovery", "oauth2", auth=False),
    FakeRoute("GET", "/oauth2/authorize", "oauth2_authorize_page", "_oauth2_page", "oauth2",
              auth=False),
    FakeRoute("POST", "/oauth2/authorize", "oauth2_authorize", "_oauth2_approve", "oauth2",
              auth=False),
    FakeRoute("POST", "/oauth2/tokens", "oauth2_tokens", "_oauth2_tokens", "oauth2",
              auth=False),
    FakeRoute("POST", "/oauth2/revoke", "oauth2_revoke", "_oauth2_revoke", "oauth2",
              auth=False),
)


@dataclass(frozen=True)
class ModeSpec:
    """What one server generation serves: build version and group → URL prefixes.

    ``gated`` groups answer 403 (the ``agents`` experiment message) until the
    experiment is enabled (``FakeCoder.enable_experiment("agents")``).
    ``chat_era`` shapes the Chats API: ``"legacy"`` (≈ Mar to early Jul 2026: a
    new chat starts ``pending``, ``last_error`` is a string or ``null``, the
    smaller object, ``organization_id`` ignored) or ``"current"`` (starts
    ``running``, ``last_error`` an object or absent, ``organization_id`` required).
    """

    version: str
    prefixes: Mapping[str, tuple[str, ...]]
    gated: tuple[str, ...] = ()
    chat_era: str = "current"


_V2: Final = "/api/v2"
_EXP: Final = "/api/experimental"

MODES: dict[str, ModeSpec] = {
    # <= v2.28: Tasks only under the experimental prefix (no pause and resume before v2.31).
    "tasks-experimental": ModeSpec("v2.28.3", {"core": (_V2,), "tasks": (_EXP,)}),
    # ≈ v2.31 - v2.33.0: Tasks, and experimental Chats behind the 'agents' experiment.
    "tasks-gated": ModeSpec(
        "v2.32.0",
        {"core": (_V2,), "tasks": (_V2, _EXP), "pause": (_V2, _EXP), "chats": (_EXP,)},
        gated=("chats",),
        chat_era="legacy",
    ),
    # v2.29 - v2.36: /api/v2/tasks with the experimental alias kept; from ≈ v2.33.1
    # ungated experimental Chats as well.
    "tasks": ModeSpec("v2.36.1", {"core": (_V2,), "tasks": (_V2, _EXP),
                                  "pause": (_V2, _EXP), "chats": (_EXP,)}),
    # v2.37.x: Tasks removed; Chats on /api/v2 and (one release) /api/experimental.
    "both": ModeSpec("v2.37.2", {"core": (_V2,), "chats": (_V2, _EXP)}),
    # v2.38+: Chats on /api/v2 only.
    "chats": ModeSpec("v2.38.0", {"core": (_V2,), "chats": (_V2,)}),
}


@dataclass(frozen=True)
class _Compiled:
    route: FakeRoute
    regex: re.Pattern[str]


# --- state records -----------------------------------------------------------------------------


@dataclass
class FakeOrg:
    id: str
    name: str


@dataclass
class FakeUser:
    id: str
    username: str
    organization_ids: list[str]
    status: str = "active"
    github_user_id: int | None = None
    created_at: str = ""


@dataclass
class FakeKey:
    id: str
    secret: str
    user_id: str
    expires_at: datetime | None = None


@dataclass
class FakeTemplate:
    """A template with one (active) version; ``presets`` are PascalCase wire objects."""

    id: str
    name: str
    organization_id: str
    active_version_id: str
    presets: list[dict[str, Any]]
    task_capable: bool = True
    display_name: str = ""


@dataclass
class ChatSwitches:
    """Server-side conditions of the Chats API that tests switch on and off.

    ``model_configured=False``: create answers 400 with the no-model message.
    ``usage_limit``: create answers the pre-Aug-2026 409 body (``spent_micros``,
    ``limit_micros``, ``resets_at``). ``fail_new_chats``: a created chat comes back
    already in ``error`` with this ``last_error`` message (``last_error_kind``).
    """

    model_configured: bool = True
    usage_limit: tuple[int, int, str] | None = None
    fail_new_chats: str | None = None
    last_error_kind: str = "config"


@dataclass
class WorkspaceSwitches:
    """How first builds behave: ``auto_advance_after`` polls of ``GET /workspaces/{id}``
    move a pending build to ``final_status`` (``None``: only ``set_workspace_build``
    moves it); ``build_error`` is the job error shown when the final status is ``failed``.
    """

    auto_advance_after: int | None = None
    final_status: str = "running"
    build_error: str = "terraform apply: exit status 1"


@dataclass
class _Fault:
    route: str
    status: int
    body: dict[str, Any] | str | None
    after_acting: bool
    retry_after: int | None
    times: int


@dataclass
class _Delay:
    route: str
    seconds: float
    after_acting: bool
    times: int


@dataclass
class Call:
    """What a handler sees: the matched route's parameters and the authenticated user."""

    method: str
    params: dict[str, str]
    query: QueryParams
    body: bytes
    user: FakeUser | None
    base_url: str
    headers: Mapping[str, str] = field(default_factory=dict)


# --- the fake ----------------------------------------------------------------------------------


class FakeCoder:
    """In-memory Coder deployment; ``app()`` is the ASGI app to serve.

    ``mode`` picks a ``MODES`` entry; ``version`` overrides its build version.
    A default organization named ``default`` exists from the start.
    """

    def __init__(self, mode: str = "tasks", *, version: str | None = None) -> None:
        self._lock = threading.Lock()
        self._orgs: dict[str, FakeOrg] = {}
        self._users: dict[str, FakeUser] = {}
        self._keys: dict[str, FakeKey] = {}
        self._templates: dict[str, FakeTemplate] = {}
        self._tasks: dict[str, dict[str, Any]] = {}
        self._task_presets: dict[str, str | None] = {}
        self._chats: dict[str, dict[str, Any]] = {}
        self._chat_messages: dict[str, list[dict[str, Any]]] = {}
        self._chat_queues: dict[str, list[dict[str, Any]]] = {}
        self._message_ids = iter(range(1, 10**9))
        self._task_inputs: dict[str, list[tuple[str, str]]] = {}
        self._stops: list[tuple[str, str, str]] = []
        self.agent_busy: set[str] = set()
        #: Coder's OAuth2 provider (reference oauth.md §4): off by default, as on Coder.
        self.oauth2_enabled = False
        self.oauth2_token_lifetime = 86400.0
        self._oauth2_apps: dict[str, tuple[str, list[str]]] = {}
        self._oauth2_codes: dict[str, dict[str, Any]] = {}
        self._oauth2_refresh: dict[str, dict[str, Any]] = {}
        #: Who is signed in to Coder in the browser (the consent page approves as them).
        self.browser_user = ""
        self._workspaces: dict[str, dict[str, Any]] = {}
        self._workspace_polls: dict[str, int] = {}
        self._workspace_presets: dict[str, str | None] = {}
        self._experiments: set[str] = set()
        self._gated: frozenset[str] = frozenset()
        self.chat_era = "current"
        self.chat_switches = ChatSwitches()
        self.workspace_switches = WorkspaceSwitches()
        self._faults: list[_Fault] = []
        self._delays: list[_Delay] = []
        self._requests: list[tuple[str, str]] = []
        self._in_flight = 0
        self._app: Starlette | None = None
        self.deployment_id = str(uuid.uuid4())
        self.default_org_id = self.add_org("default")
        self.set_mode(mode, version=version)

    # --- configuration (test thread) ----------------------------------------------------------

    def set_mode(self, mode: str, *, version: str | None = None) -> None:
        """Switch the served API generation (e.g. to simulate an upgrade)."""
        spec = MODES[mode]
        prefixes = {**spec.prefixes, "oauth2": ("",)}  # answered only while enabled
        table = [
            _Compiled(route, compile_path(prefix + route.path)[0])
            for route in ROUTES
            for prefix in prefixes.get(route.group, ())
        ]
        with self._lock:
            self.mode = mode
            self.version = version or spec.version
            self.chat_era = spec.chat_era
            self._gated = frozenset(spec.gated)
            self._table = table

    def app(self) -> Starlette:
        """The ASGI app (one instance per fake; every path goes through the route table)."""
        if self._app is None:
            methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
            self._app = Starlette(routes=[Route("/{path:path}", self._dispatch, methods=methods)])
        return self._app

    def add_org(self, name: str) -> str:
        """Create an organization; returns its uuid."""
        org = FakeOrg(id=str(uuid.uuid4()), name=name)
        with self._lock:
            self._orgs[org.id] = org
        return org.id

    def add_user(
        self,
        username: str,
        *,
        token: str | None = None,
        organizations: Iterable[str] = ("default",),
        github_user_id: int | None = None,
    ) -> str:
        """Create a user in ``organizations`` (names; created if missing); returns a token."""
        org_ids = [self._org_id_for(name) for name in organizations]
        user = FakeUser(
            id=str(uuid.uuid4()),
            username=username,
            organization_ids=org_ids,
            github_user_id=github_user_id,
            created_at=_now(),
        )
        with self._lock:
            if self._user_by_name(username) is not None:
                raise ValueError(f"user {username!r} exists")
            self._users[user.id] = user
        return self.add_token(username, token=token)

    def add_token(self, username: str, *, token: str | None = None) -> str:
        """Another API token for ``username`` (real format ``<10>-<22>``); returns it."""
        token = token or new_token()
        key_id, _, secret = token.partition("-")
        if len(key_id) != 10 or len(secret) != 22 or "-" in secret:
            raise ValueError("a Coder token looks like <10 chars>-<22 chars>")
        with self._lock:
            user = self._require_user(username)
            self._keys[key_id] = FakeKey(id=key_id, secret=secret, user_id=user.id)
        return token

    def revoke_token(self, token: str) -> None:
        """Delete the key: later requests get 401 "API key is invalid."."""
        with self._lock:
            self._keys.pop(token.partition("-")[0], None)

    def expire_token(self, token: str) -> None:
        """Make the key expired: later requests get 401 "API key expired at ..."."""
        with self._lock:
            key = self._keys[token.partition("-")[0]]
            key.expires_at = datetime(2020, 1, 1, tzinfo=UTC)

    def suspend_user(self, username: str) -> None:
        """Suspend ``username``: later requests get 401 "User is not active ..."."""
        with self._lock:
            self._require_user(username).status = "suspended"

    def add_template(
        self,
        org: str,
        name: str,
        *,
        presets: Iterable[str | Mapping[str, Any]] = (),
        task_capable: bool = True,
        display_name: str = "",
    ) -> FakeTemplate:
        """Create a template (one active version) in ``org`` (name or uuid).

        ``presets`` entries are names or partial PascalCase objects such as
        ``{"Name": "large", "Default": True}``; missing keys are filled in.
        """
        org_id = self._org_id_for(org)
        template = FakeTemplate(
            id=str(uuid.uuid4()),
            name=name,
            organization_id=org_id,
            active_version_id=str(uuid.uuid4()),
            presets=[_preset(p) for p in presets],
            task_capable=task_capable,
            display_name=display_name,
        )
        with self._lock:
            self._templates[template.id] = template
        return template

    def set_task_state(
        self,
        task: str,
        *,
        status: str | None = None,
        state: str | None = None,
        message: str = "",
        uri: str = "",
    ) -> None:
        """Move a task (uuid or name) along: set ``status`` and/or ``current_state``
        (``state``, the agent's ``message`` and ``uri``, as ``coder_report_task`` does)."""
        with self._lock:
            record = self._task_by_id_or_name(task)
            if status is not None:
                record["status"] = status
            if state is not None:
                record["current_state"] = {
                    "timestamp": _now(),
                    "state": state,
                    "message": message,
                    "uri": uri,
                }
            record["updated_at"] = _now()

    def add_oauth2_app(self, redirect_uri: str) -> tuple[str, str]:
        """Register an OAuth2 application (and turn the provider on); returns
        (client id, client secret)."""
        client_id = str(uuid.uuid4())
        secret = "coder_" + secrets.token_hex(5) + "_" + secrets.token_hex(20)
        with self._lock:
            self._oauth2_apps[client_id] = (secret, [redirect_uri])
            self.oauth2_enabled = True
        return client_id, secret

    @property
    def oauth2_refresh_tokens(self) -> int:
        """Refresh tokens that are still good."""
        with self._lock:
            return len(self._oauth2_refresh)

    def task_inputs(self, task: str) -> list[tuple[str, str]]:
        """The follow-ups a task took (``send`` answered 204), as ``(username, input)``."""
        with self._lock:
            return list(self._task_inputs.get(self._task_by_id_or_name(task)["id"], []))

    @property
    def stops(self) -> list[tuple[str, str, str]]:
        """Every stop the fake carried out, as ``(call, id, username)``: ``pause`` or
        ``delete`` of a task, ``interrupt`` or ``archive`` of a chat."""
        with self._lock:
            return list(self._stops)

    def delete_task_now(self, task: str) -> None:
        """The task is deleted by someone else (later reads answer 404)."""
        with self._lock:
            del self._tasks[self._task_by_id_or_name(task)["id"]]

    def enable_experiment(self, name: str) -> None:
        """Turn on a server experiment (``"agents"`` opens gated experimental Chats)."""
        with self._lock:
            self._experiments.add(name)

    def configure_chats(self, **changes: Any) -> None:
        """Change ``chat_switches`` (see ``ChatSwitches``), e.g. ``model_configured=False``."""
        with self._lock:
            self.chat_switches = replace(self.chat_switches, **changes)

    def configure_workspaces(self, **changes: Any) -> None:
        """Change ``workspace_switches`` (see ``WorkspaceSwitches``)."""
        with self._lock:
            self.workspace_switches = replace(self.workspace_switches, **changes)

    def set_chat_state(
        self,
        chat: str,
        status: str,
        *,
        last_error: str | Mapping[str, Any] | None = None,
        summary: str | None = None,
        updated_at: datetime | None = None,
        archived: bool | None = None,
        pr_url: str | None = None,
        answer: str | None = None,
    ) -> None:
        """Move a chat along: new ``status``, ``last_error`` (a message or a ChatError
        object; rendered per era), optional ``last_turn_summary`` and ``updated_at``
        (default: now), ``archived``, the pull request in ``diff_status`` (``pr_url``),
        and a new assistant message (``answer``)."""
        with self._lock:
            record = self._chats[chat]
            record["status"] = status
            record["last_error"] = _chat_error(last_error)
            if summary is not None:
                record["last_turn_summary"] = summary
            if archived is not None:
                record["archived"] = archived
            if pr_url is not None:
                record["diff_status"] = _diff_status(pr_url)
            if answer is not None:
                self._add_message(chat, "assistant", answer)
            record["updated_at"] = _stamp(updated_at) if updated_at else _now()

    def chat_messages(self, chat: str) -> list[dict[str, Any]]:
        """Copies of a chat's messages, oldest first."""
        with self._lock:
            return copy.deepcopy(self._chat_messages.get(chat, []))

    def queued_messages(self, chat: str) -> list[dict[str, Any]]:
        """Copies of the messages Coder holds until the agent's turn ends, oldest first."""
        with self._lock:
            return copy.deepcopy(self._chat_queues.get(chat, []))

    def add_workspace(
        self, username: str, name: str, template: FakeTemplate, *, status: str = "running"
    ) -> dict[str, Any]:
        """A workspace that already exists (e.g. made by hand); returns a copy of it."""
        with self._lock:
            owner = self._require_user(username)
            record = self._new_workspace(owner, template, name, None)
            _set_build(record, status, "")
            self._workspaces[record["id"]] = record
            return copy.deepcopy(record)

    def set_workspace_build(self, workspace: str, status: str, *, error: str = "") -> None:
        """Set the latest build's ``status`` (and the matching ``job.status``/``job.error``)
        of a workspace given by id or name."""
        with self._lock:
            _set_build(self._workspace_by_id_or_name(workspace), status, error)

    # --- failure injection ---------------------------------------------------------------------

    def fail_next(
        self,
        route: str,
        status: int,
        body: dict[str, Any] | str | None = None,
        *,
        after_acting: bool = False,
        retry_after: int | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` requests to ``route`` (a name or ``"*"``) with ``status``.

        ``body`` defaults to a realistic Coder error body (429: the rate-limit
        message); a ``str`` body is sent as ``text/html`` (a proxy's error page).
        ``after_acting`` performs the real action first, then answers the error
        (e.g. a 502 after the task was created). ``retry_after`` adds the header.
        """
        self._check_route(route)
        fault = _Fault(route, status, body, after_acting, retry_after, times)
        with self._lock:
            self._faults.append(fault)

    def delay_next(
        self, route: str, seconds: float, *, after_acting: bool = False, times: int = 1
    ) -> None:
        """Hold the next ``times`` answers of ``route`` for ``seconds`` (to force client timeouts).

        Without ``after_acting`` the delay comes before the action (which still
        happens afterwards, as on a slow real server); with it, the action is
        done first and only the answer is late.
        """
        self._check_route(route)
        with self._lock:
            self._delays.append(_Delay(route, seconds, after_acting, times))

    # --- inspection (test thread) ---------------------------------------------------------------

    @property
    def requests(self) -> list[tuple[str, str]]:
        """Every request received so far as ``(method, path)``, oldest first (no tokens)."""
        with self._lock:
            return list(self._requests)

    @property
    def in_flight(self) -> int:
        """Requests being handled right now (poll it to 0 after a delayed request)."""
        with self._lock:
            return self._in_flight

    @property
    def tasks(self) -> list[dict[str, Any]]:
        """Copies of every task (wire form), oldest first."""
        with self._lock:
            return [copy.deepcopy(t) for t in self._tasks.values()]

    def tasks_of(self, username: str) -> list[dict[str, Any]]:
        """Copies of the tasks owned by ``username``."""
        return [t for t in self.tasks if t["owner_name"] == username]

    def preset_of(self, task: str) -> str | None:
        """The ``Name`` of the preset a task (uuid or name) was created with, or ``None``.

        Not part of Coder's Task object; kept so tests can check preset selection.
        """
        with self._lock:
            return self._task_presets.get(self._task_by_id_or_name(task)["id"])

    @property
    def chats(self) -> list[dict[str, Any]]:
        """Copies of every chat in the current wire form (``get`` shape), oldest first."""
        with self._lock:
            return [self._chat_json(c, detail=True) for c in self._chats.values()]

    def chats_of(self, username: str) -> list[dict[str, Any]]:
        """Copies of the chats owned by ``username``."""
        with self._lock:
            owner = self._require_user(username)
            return [
                self._chat_json(c, detail=True)
                for c in self._chats.values()
                if c["owner_id"] == owner.id
            ]

    @property
    def workspaces(self) -> list[dict[str, Any]]:
        """Copies of every workspace (wire form), oldest first."""
        with self._lock:
            return [copy.deepcopy(w) for w in self._workspaces.values()]

    def workspace_preset_of(self, workspace: str) -> str | None:
        """The ``Name`` of the preset a workspace (id or name) was created with, or ``None``."""
        with self._lock:
            return self._workspace_presets.get(self._workspace_by_id_or_name(workspace)["id"])

    # --- HTTP plumbing ------------------------------------------------------------------------

    async def _dispatch(self, request: Request) -> Response:
        body = await request.body()
        with self._lock:
            self._requests.append((request.method, request.url.path))
            self._in_flight += 1
            version = self.version
        try:
            response = await self._serve(request, body)
        finally:
            with self._lock:
                self._in_flight -= 1
        response.headers[VERSION_HEADER] = version
        return response

    async def _serve(self, request: Request, body: bytes) -> Response:
        with self._lock:
            found = self._match(request.method, request.url.path)
            if found is None:
                return _error(404, ROUTE_NOT_FOUND)
            route, params = found
            fault = self._take(self._faults, route.name)
            delay = self._take(self._delays, route.name)
        if delay is not None and not delay.after_acting:
            await asyncio.sleep(delay.seconds)
        if fault is not None and not fault.after_acting:
            return _fault_response(fault)
        response = self._act(request, route, params, body)
        if delay is not None and delay.after_acting:
            await asyncio.sleep(delay.seconds)
        if fault is not None and fault.after_acting:
            return _fault_response(fault)
        return response

    def _act(
        self, request: Request, route: FakeRoute, params: dict[str, str], body: bytes
    ) -> Response:
        with self._lock:
            user: FakeUser | None = None
            if route.auth:
                outcome = self._authenticate(request)
                if isinstance(outcome, Response):
                    return outcome
                user = outcome
            if route.group in self._gated and "agents" not in self._experiments:
                return _error(403, AGENTS_GATE)
            handler: Callable[[Call], Response] = getattr(self, route.handler)
            call = Call(
                method=request.method,
                params=params,
                query=request.query_params,
                body=body,
                user=user,
                base_url=str(request.base_url).rstrip("/"),
                headers=request.headers,
            )
            return handler(call)

    def _match(self, method: str, path: str) -> tuple[FakeRoute, dict[str, str]] | None:
        """The route serving ``method path`` in the current mode, with its parameters.

        A known path with another method also counts as no route (a client must
        not rely on Coder's 405 there).
        """
        for compiled in self._table:
            m = compiled.regex.match(path)
            if m is not None and compiled.route.method == method:
                return compiled.route, m.groupdict()
        return None

    def _take(self, queue: list[Any], name: str) -> Any:
        for item in queue:
            if item.route in (name, "*"):
                item.times -= 1
                if item.times <= 0:
                    queue.remove(item)
                return item
        return None

    def _check_route(self, route: str) -> None:
        if route != "*" and route not in {r.name for r in ROUTES}:
            raise ValueError(f"unknown route name {route!r}; see ROUTES")

    # --- auth (reference section 2) -------------------------------------------------------------

    def _authenticate(self, request: Request) -> FakeUser | Response:
        token, bearer = _token_from(request)
        if not token:
            return _unauthorized(NO_TOKEN_DETAIL, bearer)
        parts = token.split("-")
        if len(parts) != 2:
            problem = f"incorrect amount of API key parts, expected 2 got {len(parts)}"
            return _unauthorized(f"Invalid API key format: {problem}", bearer)
        key_id, secret = parts
        if len(key_id) != 10:
            problem = f"invalid API key ID length, expected 10 got {len(key_id)}"
            return _unauthorized(f"Invalid API key format: {problem}", bearer)
        if len(secret) != 22:
            problem = f"invalid API key secret length, expected 22 got {len(secret)}"
            return _unauthorized(f"Invalid API key format: {problem}", bearer)
        key = self._keys.get(key_id)
        if key is None:
            return _unauthorized("API key is invalid.", bearer)
        if not hmac.compare_digest(key.secret, secret):
            return _unauthorized("API key secret is invalid.", bearer)
        if key.expires_at is not None and key.expires_at <= datetime.now(UTC):
            stamp = key.expires_at.strftime("%Y-%m-%d %H:%M:%S +0000 UTC")
            return _unauthorized(f'API key expired at "{stamp}".', bearer)
        user = self._users[key.user_id]
        if user.status == "suspended":
            message = (
                f'User is not active (status = "{user.status}"). '
                "Contact an admin to reactivate your account."
            )
            return _json(401, {"message": message})
        return user

    # --- handlers: users, templates ------------------------------------------------------------

    def _buildinfo(self, call: Call) -> Response:
        return _json(
            200,
            {
                "oauth2_provider": self.oauth2_enabled,
                "external_url": f"https://github.com/coder/coder/commit/{self.version}",
                "version": self.version,
                "dashboard_url": call.base_url,
                "telemetry": False,
                "workspace_proxy": False,
                "agent_api_version": "2.6",
                "provisioner_api_version": "1.9",
                "upgrade_message": "",
                "deployment_id": self.deployment_id,
                "webpush_public_key": "",
            },
        )

    def _get_user(self, call: Call) -> Response:
        user = self._resolve_user(call.params["user"], call.user)
        if user is None:
            return _error(404, RESOURCE_NOT_FOUND)
        return _json(200, self._user_json(user))

    def _list_users(self, call: Call) -> Response:
        terms = _parse_query(call.query.get("q", ""), default_key="search")
        users = list(self._users.values())
        for key, value in terms:
            if key == "github_com_user_id":
                users = [u for u in users if str(u.github_user_id) == value]
            elif key in ("search", "username"):
                users = [u for u in users if value in u.username.lower()]
            elif key == "status":
                users = [u for u in users if u.status == value]
        return _json(200, {"users": [self._user_json(u) for u in users], "count": len(users)})

    def _get_template(self, call: Call) -> Response:
        org = self._org_by_name_or_id(call.params["organization"])
        assert call.user is not None
        if org is None or org.id not in call.user.organization_ids:
            return _error(404, RESOURCE_NOT_FOUND)
        for template in self._templates.values():
            if template.organization_id == org.id and template.name == call.params["template"]:
                return _json(200, self._template_json(template, org))
        return _error(404, RESOURCE_NOT_FOUND)

    def _presets(self, call: Call) -> Response:
        version_id = call.params["version"]
        if not _is_uuid(version_id):
            return _error(400, f'Invalid UUID "{version_id}".')
        template = self._template_by_version(version_id)
        assert call.user is not None
        if template is None or template.organization_id not in call.user.organization_ids:
            return _error(404, RESOURCE_NOT_FOUND)
        return _json(200, copy.deepcopy(template.presets))

    # --- handlers: the OAuth2 provider (oauth.md section 4) ------------------------------------

    def _oauth2_discovery(self, call: Call) -> Response:
        if not self.oauth2_enabled:
            return _error(404, ROUTE_NOT_FOUND)
        base = call.base_url
        return _json(200, {
            "issuer": base, "authorization_endpoint": f"{base}/oauth2/authorize",
            "token_endpoint": f"{base}/oauth2/tokens",
            "revocation_endpoint": f"{base}/oauth2/revoke", "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic",
                                                      "client_secret_post"]})

    def _oauth2_request_problem(self, query: QueryParams) -> Response | None:
        """What Coder shows (400, no redirect) for an unknown client or callback, or a
        missing PKCE challenge."""
        if not self.oauth2_enabled:
            return _error(404, ROUTE_NOT_FOUND)
        app = self._oauth2_apps.get(query.get("client_id", ""))
        if app is None or query.get("redirect_uri", app[1][0]) not in app[1]:
            return _error(400, "Invalid client or redirect_uri.")
        if not query.get("code_challenge") or query.get("response_type") != "code":
            return _error(400, "invalid_request: code_challenge is required")
        if self._user_by_name(self.browser_user) is None:
            return HTMLResponse("<h1>Sign in to Coder</h1>", status_code=401)
        return None

    def _oauth2_page(self, call: Call) -> Response:
        """Coder's consent page: the signed-in user presses Allow (a form post)."""
        problem = self._oauth2_request_problem(call.query)
        if problem is not None:
            return problem
        action = "/oauth2/authorize?" + str(call.query)
        return HTMLResponse(
            f"<!doctype html><title>Authorize</title><h1>Authorize coder-bridge</h1>"
            f"<p>coder-bridge wants to act as <strong>{self.browser_user}</strong>.</p>"
            f'<form method="post" action="{action}"><button type="submit">Allow</button>'
            "</form>")

    def _oauth2_approve(self, call: Call) -> Response:
        problem = self._oauth2_request_problem(call.query)
        if problem is not None:
            return problem
        query = call.query
        code = "coder_" + secrets.token_hex(5) + "_" + secrets.token_hex(20)
        redirect = query.get("redirect_uri") or self._oauth2_apps[query["client_id"]][1][0]
        self._oauth2_codes[code] = {"client_id": query["client_id"], "redirect_uri": redirect,
                                    "challenge": query["code_challenge"],
                                    "user": self.browser_user,
                                    "expires": datetime.now(UTC).timestamp() + 600}
        target = f"{redirect}?code={code}&state={query.get('state', '')}"
        return Response(status_code=302, headers={"Location": target})

    def _oauth2_client(self, call: Call) -> str | Response:
        """The client id authenticated by HTTP Basic, or Coder's 401 ``invalid_client``."""
        header = call.headers.get("authorization", "")
        try:
            client_id, _, secret = base64.b64decode(header.partition(" ")[2]).decode()\
                .partition(":")
        except ValueError:
            client_id = secret = ""
        app = self._oauth2_apps.get(client_id)
        if app is None or not hmac.compare_digest(app[0], secret):
            return JSONResponse({"error": "invalid_client",
                                 "error_description": "The client credentials are invalid"},
                                status_code=401, headers={"WWW-Authenticate":
                                                          'Basic realm="coder"'})
        return client_id

    def _oauth2_tokens(self, call: Call) -> Response:
        if not self.oauth2_enabled:
            return _error(404, ROUTE_NOT_FOUND)
        client = self._oauth2_client(call)
        if isinstance(client, Response):
            return client
        form = {k: v[0] for k, v in parse_qs(call.body.decode()).items()}

        def refuse(error: str, text: str) -> Response:
            return JSONResponse({"error": error, "error_description": text}, status_code=400)

        grant_type = form.get("grant_type")
        if grant_type == "authorization_code":
            grant = self._oauth2_codes.pop(form.get("code", ""), None)
            if grant is None or grant["client_id"] != client or \
                    grant["expires"] < datetime.now(UTC).timestamp():
                return refuse("invalid_grant", "The authorization code is invalid or expired")
            if form.get("redirect_uri") != grant["redirect_uri"]:
                return refuse("invalid_grant", "The redirect_uri does not match")
            digest = hashlib.sha256(form.get("code_verifier", "").encode()).digest()
            if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != grant["challenge"]:
                return refuse("invalid_grant", "The PKCE code verifier is invalid")
            user = grant["user"]
        elif grant_type == "refresh_token":
            old = self._oauth2_refresh.pop(form.get("refresh_token", ""), None)
            if old is None or old["client_id"] != client:
                return refuse("invalid_grant", "The refresh token is invalid or expired")
            self._keys.pop(old["key_id"], None)  # the old pair stops working
            user = old["user"]
        else:
            return refuse("unsupported_grant_type", "grant_type is missing or unknown")
        # One live pair per user per app: the previous one ends.
        for token, held in list(self._oauth2_refresh.items()):
            if held["user"] == user and held["client_id"] == client:
                self._keys.pop(held["key_id"], None)
                del self._oauth2_refresh[token]
        access = new_token()
        key_id, _, key_secret = access.partition("-")
        expires = datetime.now(UTC).timestamp() + self.oauth2_token_lifetime
        self._keys[key_id] = FakeKey(id=key_id, secret=key_secret,
                                     user_id=self._require_user(user).id,
                                     expires_at=datetime.fromtimestamp(expires, UTC))
        refresh = "coder_" + secrets.token_hex(5) + "_" + secrets.token_hex(20)
        self._oauth2_refresh[refresh] = {"client_id": client, "user": user, "key_id": key_id}
        return _json(200, {"access_token": access, "token_type": "Bearer",
                           "refresh_token": refresh,
                           "expires_in": int(self.oauth2_token_lifetime),
                           "expiry": _stamp(datetime.fromtimestamp(expires, UTC))})

    def _oauth2_revoke(self, call: Call) -> Response:
        if not self.oauth2_enabled:
            return _error(404, ROUTE_NOT_FOUND)
        client = self._oauth2_client(call)
        if isinstance(client, Response):
            return client
        token = parse_qs(call.body.decode()).get("token", [""])[0]
        held = self._oauth2_refresh.pop(token, None)
        if held is not None:
            self._keys.pop(held["key_id"], None)
        else:
            self._keys.pop(token.partition("-")[0], None)
        return Response(status_code=200)

    # --- handlers: tasks (reference sections 7 and 8) -------------------------------------------

    def _create_task(self, call: Call) -> Response:
        assert call.user is not None
        owner = self._resolve_user(call.params["user"], call.user)
        if owner is None or owner.id != call.user.id:  # acting for others needs an admin
            return _error(404, RESOURCE_NOT_FOUND)
        try:
            req = json.loads(call.body or b"null")
        except ValueError as exc:
            return _error(400, "Request body must be valid JSON.", detail=str(exc))
        if not isinstance(req, dict):
            return _error(400, "Request body must be valid JSON.", detail="expected an object")
        return self._create_task_from(req, owner)

    def _create_task_from(self, req: dict[str, Any], owner: FakeUser) -> Response:
        template = self._template_by_version(str(req.get("template_version_id") or ""))
        if template is None:
            return _error(
                400, "Template version not found or you do not have access to this resource"
            )
        if not template.task_capable:
            return _error(400, 'Template does not have a valid "coder_ai_task" resource.')
        name = str(req.get("name") or "")
        if name and (problem := _name_problem(name)):
            return _error(400, "Unable to create a Task with the provided name.", detail=problem)
        display_name = str(req.get("display_name") or "").strip()
        if len(display_name.encode("utf-8")) > 64:
            return _error(400, "Display name must be 64 characters or less.")
        if template.organization_id not in owner.organization_ids:
            return _error(404, RESOURCE_NOT_FOUND)
        preset_id = str(req.get("template_version_preset_id") or NIL_UUID)
        if preset_id != NIL_UUID and all(p["ID"] != preset_id for p in template.presets):
            return _error(400, "Template version preset not found.", detail=preset_id)
        name = name or f"task-{secrets.token_hex(4)}"
        if any(
            t["owner_id"] == owner.id and t["name"].lower() == name.lower()
            for t in self._tasks.values()
        ):
            return _error(
                409,
                f'Workspace "{name}" already exists.',
                validations=[{"field": "name", "detail": NAME_IN_USE}],
            )
        task = self._new_task(req, owner, template, name, display_name or name)
        self._tasks[task["id"]] = task
        preset = next((p for p in template.presets if p["ID"] == preset_id), None)
        self._task_presets[task["id"]] = preset["Name"] if preset else None
        return _json(201, copy.deepcopy(task))

    def _new_task(
        self,
        req: dict[str, Any],
        owner: FakeUser,
        template: FakeTemplate,
        name: str,
        display_name: str,
    ) -> dict[str, Any]:
        now = _now()
        return {
            "id": str(uuid.uuid4()),
            "organization_id": template.organization_id,
            "owner_id": owner.id,
            "owner_name": owner.username,
            "name": name,
            "display_name": display_name,
            "template_id": template.id,
            "template_version_id": template.active_version_id,
            "template_name": template.name,
            "template_display_name": template.display_name,
            "template_icon": "",
            "workspace_id": str(uuid.uuid4()),
            "workspace_name": name,
            "workspace_status": "pending",
            "workspace_build_number": 1,
            "workspace_agent_id": None,
            "workspace_agent_lifecycle": None,
            "workspace_agent_health": None,
            "workspace_app_id": None,
            "initial_prompt": str(req.get("input") or ""),
            "status": "pending",
            "current_state": None,
            "created_at": now,
            "updated_at": now,
        }

    def _list_tasks(self, call: Call) -> Response:
        assert call.user is not None
        tasks = [t for t in self._tasks.values() if t["owner_id"] == call.user.id]
        bad: list[dict[str, str]] = []
        for key, value in _parse_query(call.query.get("q", ""), default_key="owner"):
            if key == "owner":
                owner = self._resolve_user(value, call.user)
                tasks = [t for t in tasks if owner is not None and t["owner_id"] == owner.id]
            elif key == "organization":
                org = self._org_by_name_or_id(value)
                tasks = [t for t in tasks if org is not None and t["organization_id"] == org.id]
            elif key == "status":
                tasks = [t for t in tasks if t["status"] == value]
            else:
                bad.append({"field": key, "detail": f'"{key}" is not a valid query param'})
        if bad:
            return _error(400, "Invalid task search query.", validations=bad)
        return _json(200, {"tasks": copy.deepcopy(tasks), "count": len(tasks)})

    def _get_task(self, call: Call) -> Response:
        task = self._visible_task(call)
        if task is None:
            return _error(404, RESOURCE_NOT_FOUND)
        return _json(200, copy.deepcopy(task))

    def _delete_task(self, call: Call) -> Response:
        task = self._visible_task(call)
        if task is None:
            return _error(404, RESOURCE_NOT_FOUND)
        del self._tasks[task["id"]]
        self._stops.append(("delete", task["id"], task["owner_name"]))
        return Response(status_code=202)

    def _send_task(self, call: Call) -> Response:
        """``send`` (reference section 13.4): 204 when the task is active and its agent
        idle; 400 when it is not active; 502 while the agent works (no queue)."""
        task = self._visible_task(call)
        if task is None:
            return _error(404, RESOURCE_NOT_FOUND)
        req = _json_object(call.body)
        if isinstance(req, Response):
            return req
        text = req.get("input")
        if not isinstance(text, str) or not text.strip():
            return _error(400, "Task input is required.")
        if task["status"] != "active":
            return _error(400, "Task status must be active.",
                          detail=f'Task status is "{task["status"]}", it must be "active" '
                                 "to interact with the task.")
        state = (task["current_state"] or {}).get("state")
        if state == "working" or task["id"] in self.agent_busy:
            return _error(502, "Task app is not ready to accept input.", detail="Status: running")
        assert call.user is not None
        self._task_inputs.setdefault(task["id"], []).append((call.user.username, text))
        task["current_state"] = {"timestamp": _now(), "state": "working", "message": "",
                                 "uri": ""}
        return Response(status_code=204)

    def _pause_task(self, call: Call) -> Response:
        task = self._visible_task(call)
        if task is None:
            return _error(404, RESOURCE_NOT_FOUND)
        task["status"] = "paused"
        task["updated_at"] = _now()
        self._stops.append(("pause", task["id"], task["owner_name"]))
        return _json(202, {"workspace_build": {"id": str(uuid.uuid4()), "transition": "stop",
                                               "status": "pending"}})

    def _resume_task(self, call: Call) -> Response:
        task = self._visible_task(call)
        if task is None:
            return _error(404, RESOURCE_NOT_FOUND)
        task["status"] = "active"
        return _json(202, {"workspace_build": {"id": str(uuid.uuid4()), "transition": "start",
                                               "status": "pending"}})

    # --- handlers: organizations and workspaces (coder-chats.md section 9.1) -------------------

    def _get_org(self, call: Call) -> Response:
        assert call.user is not None
        org = self._org_by_name_or_id(call.params["organization"])
        if org is None or org.id not in call.user.organization_ids:
            return _error(404, RESOURCE_NOT_FOUND)
        return _json(
            200,
            {
                "id": org.id,
                "name": org.name,
                "display_name": org.name.capitalize(),
                "description": "",
                "icon": "",
                "is_default": org.name == "default",
                "created_at": _now(),
                "updated_at": _now(),
            },
        )

    def _create_workspace(self, call: Call) -> Response:
        assert call.user is not None
        req = _json_object(call.body)
        if isinstance(req, Response):
            return req
        problem = _template_choice_problem(req) or _workspace_name_problem(req)
        if problem is not None:
            return problem
        ref = call.params["user"]
        owner = self._resolve_user(ref, call.user)
        if owner is None:
            return _error(400, '"user" must be an existing uuid or username.')
        template = self._template_for_workspace(req, call.user)
        if isinstance(template, Response):
            return template
        if owner.id != call.user.id:
            return _error(
                403, "Unauthorized to create workspace.", detail="you may only act for yourself"
            )
        name = str(req["name"])
        if self._name_taken(owner, name):
            return _error(
                409,
                f'Workspace "{name}" already exists.',
                validations=[{"field": "name", "detail": NAME_IN_USE}],
            )
        preset_id = str(req.get("template_version_preset_id") or NIL_UUID)
        preset = next((p for p in template.presets if p["ID"] == preset_id), None)
        if preset_id != NIL_UUID and preset is None:
            detail = "insert workspace build"
            return _error(500, "Internal error creating workspace.", detail=detail)
        workspace = self._new_workspace(owner, template, name, preset)
        self._workspaces[workspace["id"]] = workspace
        self._workspace_presets[workspace["id"]] = preset["Name"] if preset else None
        return _json(201, copy.deepcopy(workspace))

    def _template_for_workspace(
        self, req: dict[str, Any], caller: FakeUser
    ) -> FakeTemplate | Response:
        """The template named by ``template_id`` or ``template_version_id``, if visible."""
        template_id = str(req.get("template_id") or NIL_UUID)
        if template_id != NIL_UUID:
            template = self._templates.get(template_id.lower())
            field, label, ref = "template_id", "Template", template_id
        else:
            ref = str(req.get("template_version_id"))
            template = self._template_by_version(ref)
            field, label = "template_version_id", "Template version"
        if template is None or template.organization_id not in caller.organization_ids:
            return _error(
                400,
                f'{label} "{ref}" doesn\'t exist.',
                validations=[{"field": field, "detail": "template not found"}],
            )
        return template

    def _name_taken(self, owner: FakeUser, name: str) -> bool:
        """Workspace names (tasks included) are unique per owner, case-insensitively."""
        wanted = name.lower()
        return any(
            w["owner_id"] == owner.id and w["name"].lower() == wanted
            for w in self._workspaces.values()
        ) or any(
            t["owner_id"] == owner.id and t["name"].lower() == wanted for t in self._tasks.values()
        )

    def _new_workspace(
        self,
        owner: FakeUser,
        template: FakeTemplate,
        name: str,
        preset: dict[str, Any] | None,
    ) -> dict[str, Any]:
        now = _now()
        org = self._orgs[template.organization_id]
        return {
            "id": str(uuid.uuid4()),
            "name": name,
            "owner_id": owner.id,
            "owner_name": owner.username,
            "organization_id": org.id,
            "organization_name": org.name,
            "template_id": template.id,
            "template_name": template.name,
            "template_display_name": template.display_name,
            "template_active_version_id": template.active_version_id,
            "outdated": False,
            "automatic_updates": "never",
            "health": {"healthy": True, "failing_agents": []},
            "favorite": False,
            "allow_renames": False,
            "created_at": now,
            "updated_at": now,
            "last_used_at": now,
            "latest_build": {
                "id": str(uuid.uuid4()),
                "build_number": 1,
                "transition": "start",
                "status": "pending",
                "reason": "initiator",
                "initiator_id": owner.id,
                "template_version_id": template.active_version_id,
                "template_version_name": "v1",
                "template_version_preset_id": preset["ID"] if preset else None,
                "job": {
                    "id": str(uuid.uuid4()),
                    "status": "pending",
                    "error": "",
                    "error_code": "",
                    "queue_position": 0,
                    "queue_size": 0,
                    "created_at": now,
                },
                "resources": [],
                "matched_provisioners": {"count": 1, "available": 1},
                "created_at": now,
            },
        }

    def _get_workspace_by_name(self, call: Call) -> Response:
        assert call.user is not None
        owner = self._resolve_user(call.params["user"], call.user)
        if owner is None:
            return _error(400, '"user" must be an existing uuid or username.')
        wanted = call.params["workspace"].lower()
        found = next(
            (
                w
                for w in self._workspaces.values()
                if w["owner_id"] == owner.id and w["name"].lower() == wanted
            ),
            None,
        )
        if found is None or found["owner_id"] != call.user.id:
            return _error(404, RESOURCE_NOT_FOUND)
        return _json(200, copy.deepcopy(found))

    def _get_workspace(self, call: Call) -> Response:
        assert call.user is not None
        ref = call.params["workspace"]
        if not _is_uuid(ref):
            return _error(400, f'Invalid UUID "{ref}".')
        found = self._workspaces.get(ref.lower())
        if found is None or found["owner_id"] != call.user.id:
            return _error(404, RESOURCE_NOT_FOUND)
        self._maybe_advance(found)
        return _json(200, copy.deepcopy(found))

    def _maybe_advance(self, workspace: dict[str, Any]) -> None:
        """Count a poll; with ``auto_advance_after`` set, finish a pending/starting build."""
        switches = self.workspace_switches
        polls = self._workspace_polls.get(workspace["id"], 0) + 1
        self._workspace_polls[workspace["id"]] = polls
        if switches.auto_advance_after is None:
            return
        if workspace["latest_build"]["status"] not in ("pending", "starting"):
            return
        if polls >= switches.auto_advance_after:
            error = switches.build_error if switches.final_status == "failed" else ""
            _set_build(workspace, switches.final_status, error)
        else:
            _set_build(workspace, "starting", "")

    # --- handlers: chats (coder-chats.md sections 4 - 8) -------------------------------------

    def _create_chat(self, call: Call) -> Response:
        assert call.user is not None
        req = _json_object(call.body)
        if isinstance(req, Response):
            return req
        org_id: str | None = None
        if self.chat_era == "current":
            checked = self._chat_org(req, call.user)
            if isinstance(checked, Response):
                return checked
            org_id = checked
        problem = (
            _content_problem(req.get("content"))
            or _labels_problem(req.get("labels"))
            or self._chat_workspace_problem(req.get("workspace_id"), call.user)
            or self._chat_policy_problem()
        )
        if problem is not None:
            return problem
        chat = self._new_chat(req, call.user, org_id)
        self._chats[chat["id"]] = chat
        self._add_message(chat["id"], "user", _text_of(req["content"]))
        return _json(201, self._chat_json(chat, detail=True))

    def _chat_org(self, req: dict[str, Any], caller: FakeUser) -> str | Response:
        raw = req.get("organization_id")
        if raw in (None, "", NIL_UUID):
            return _error(400, "organization_id is required.")
        if not isinstance(raw, str) or not _is_uuid(raw):
            return _error(
                400, "Request body must be valid JSON.", detail="organization_id: invalid UUID"
            )
        org = self._orgs.get(raw.lower())
        if org is None or org.id not in caller.organization_ids:
            return _error(403, NOT_A_MEMBER)
        return org.id

    def _chat_workspace_problem(self, raw: Any, caller: FakeUser) -> Response | None:
        if raw in (None, "", NIL_UUID):
            return None
        found = self._workspaces.get(str(raw).lower())
        if found is None or found["owner_id"] != caller.id:
            return _error(400, WORKSPACE_NOT_FOUND)
        return None

    def _chat_policy_problem(self) -> Response | None:
        switches = self.chat_switches
        if not switches.model_configured:
            return _error(400, NO_MODEL)
        if switches.usage_limit is not None:
            spent, limit, resets_at = switches.usage_limit
            body = {
                "message": USAGE_LIMIT,
                "spent_micros": spent,
                "limit_micros": limit,
                "resets_at": resets_at,
            }
            return _json(409, body)
        return None

    def _new_chat(self, req: dict[str, Any], owner: FakeUser, org_id: str | None) -> dict[str, Any]:
        now = _now()
        chat_id = str(uuid.uuid4())
        text = " ".join(str(p.get("text") or "") for p in req["content"] if p.get("type") == "text")
        failure = self.chat_switches.fail_new_chats
        status = "pending" if self.chat_era == "legacy" else "running"
        last_error = None
        if failure is not None:
            status = "error"
            kind = self.chat_switches.last_error_kind
            last_error = _chat_error({"message": failure, "kind": kind})
        workspace_id = req.get("workspace_id")
        return {
            "id": chat_id,
            "organization_id": org_id or self.default_org_id,
            "owner_id": owner.id,
            "owner_username": owner.username,
            "owner_name": owner.username.capitalize(),
            "title": _chat_title(text),
            "status": status,
            "last_error": last_error,
            "workspace_id": workspace_id if workspace_id not in ("", NIL_UUID) else None,
            "build_id": None,
            "agent_id": None,
            "parent_chat_id": None,
            "root_chat_id": None,
            "last_model_config_id": str(uuid.uuid4()),
            "last_turn_summary": None,
            "summary": None,
            "diff_status": None,
            "created_at": now,
            "updated_at": now,
            "archived": False,
            "shared": False,
            "pin_order": 0,
            "mcp_server_ids": list(req.get("mcp_server_ids") or []),
            "labels": dict(req.get("labels") or {}),
            "has_unread": False,
            "client_type": str(req.get("client_type") or "api"),
            "files": [],
            "queued_for_capacity": False,
            "warnings": [],
            "children": [],
        }

    def _list_chats(self, call: Call) -> Response:
        assert call.user is not None
        chats = [c for c in self._chats.values() if c["owner_id"] == call.user.id]
        archived = False
        for key, value in _parse_query(call.query.get("q", ""), default_key="search"):
            if key == "archived" and value in ("true", "false"):
                archived = value == "true"
            else:
                return _error(400, "Invalid chat search query.")
        chats = [c for c in chats if c["archived"] is archived and c["parent_chat_id"] is None]
        for raw in call.query.getlist("label"):
            key, sep, value = raw.partition(":")
            if not (sep and key and value):
                return _error(
                    400,
                    f'Invalid label filter: "{raw}" (expected format key:value, '
                    "both must be non-empty)",
                )
            chats = [c for c in chats if c["labels"].get(key) == value]
        chats.reverse()  # newest first
        window = _window(call.query, len(chats))
        if isinstance(window, Response):
            return window
        start, stop = window
        return _json(200, [self._chat_json(c, detail=False) for c in chats[start:stop]])

    def _get_chat(self, call: Call) -> Response:
        chat = self._visible_chat(call)
        if isinstance(chat, Response):
            return chat
        return _json(200, self._chat_json(chat, detail=True))

    def _update_chat(self, call: Call) -> Response:
        chat = self._visible_chat(call)
        if isinstance(chat, Response):
            return chat
        req = _json_object(call.body)
        if isinstance(req, Response):
            return req
        if "labels" in req and (problem := _labels_problem(req["labels"])):
            return problem
        if req.get("archived") is True and not chat["archived"]:
            assert call.user is not None
            self._stops.append(("archive", chat["id"], call.user.username))
        for key in ("title", "archived", "pin_order", "labels", "workspace_id"):
            if key in req:
                chat[key] = req[key] if key != "labels" else dict(req[key] or {})
        chat["updated_at"] = _now()
        return Response(status_code=204)

    def _list_messages(self, call: Call) -> Response:
        chat = self._visible_chat(call)
        if isinstance(chat, Response):
            return chat
        raw = call.query.get("limit", "50")
        if not raw.isdigit() or not 1 <= int(raw) <= 200:
            return _error(400, "Invalid limit parameter (1-200).")
        newest_first = list(reversed(self._chat_messages.get(chat["id"], [])))
        return _json(200, {"messages": copy.deepcopy(newest_first[: int(raw)]),
                           "queued_messages": copy.deepcopy(self._chat_queues.get(chat["id"], [])),
                           "has_more": len(newest_first) > int(raw)})

    def _send_message(self, call: Call) -> Response:
        """A follow-up (coder-chats.md section 12.6): queued while the agent runs,
        otherwise it starts a run; archived chats take none; only the owner may send."""
        chat = self._visible_chat(call)
        if isinstance(chat, Response):
            return chat
        req = _json_object(call.body)
        if isinstance(req, Response):
            return req
        behavior = req.get("busy_behavior", "queue")
        if behavior not in ("queue", "interrupt"):
            return _error(400, "Invalid busy_behavior value.",
                          detail='Must be "queue" or "interrupt".')
        if chat["archived"]:
            return _error(400, "Cannot send messages to an archived chat.")
        problem = _content_problem(req.get("content"))
        if problem is not None:
            return problem
        text = _text_of(req["content"])
        if chat["status"] in ("running", "pending", "interrupting") and behavior == "queue":
            queue = self._chat_queues.setdefault(chat["id"], [])
            if len(queue) >= 5:
                return _error(429, "Message queue is full.",
                              detail="Maximum 5 messages can be queued.")
            entry = {"id": next(self._message_ids), "chat_id": chat["id"],
                     "content": copy.deepcopy(req["content"]), "created_at": _now()}
            queue.append(entry)
            return _json(200, {"queued": True, "queued_message": copy.deepcopy(entry)})
        message = self._add_message(chat["id"], "user", text)
        chat["status"] = "running"
        chat["last_error"] = None
        chat["updated_at"] = _now()
        return _json(200, {"queued": False, "message": copy.deepcopy(message)})

    def _interrupt_chat(self, call: Call) -> Response:
        chat = self._visible_chat(call)
        if isinstance(chat, Response):
            return chat
        chat["status"] = "waiting"
        chat["updated_at"] = _now()
        assert call.user is not None
        self._stops.append(("interrupt", chat["id"], call.user.username))
        return _json(200, self._chat_json(chat, detail=True))

    def _add_message(self, chat_id: str, role: str, text: str) -> dict[str, Any]:
        """Append a message to a chat (caller holds the lock)."""
        message = {"id": next(self._message_ids), "chat_id": chat_id, "created_at": _now(),
                   "role": role, "content": [{"type": "text", "text": text}]}
        self._chat_messages.setdefault(chat_id, []).append(message)
        return message

    def finish_chat_turn(self, chat: str, answer: str = "") -> None:
        """The agent ends its turn: ``waiting``, with ``answer`` as its message; a queued
        follow-up then starts the next turn at once, as Coder does."""
        with self._lock:
            record = self._chats[chat]
            if answer:
                self._add_message(chat, "assistant", answer)
            queue = self._chat_queues.get(chat, [])
            if queue:
                entry = queue.pop(0)
                self._add_message(chat, "user", _text_of(entry["content"]))
                record["status"] = "running"
            else:
                record["status"] = "waiting"
            record["updated_at"] = _now()

    def _visible_chat(self, call: Call) -> dict[str, Any] | Response:
        assert call.user is not None
        ref = call.params["chat"]
        if not _is_uuid(ref):
            return _error(400, f'Invalid UUID "{ref}".')
        chat = self._chats.get(ref.lower())
        if chat is None or chat["owner_id"] != call.user.id:
            return _error(404, RESOURCE_NOT_FOUND)
        return chat

    def _chat_json(self, chat: dict[str, Any], *, detail: bool) -> dict[str, Any]:
        """A chat as this server generation sends it (``detail``: create/get-one shape)."""
        body = copy.deepcopy(chat)
        if self.chat_era == "legacy":
            error = body["last_error"]
            body["last_error"] = error["message"] if error else None
            return {key: body[key] for key in _LEGACY_CHAT_KEYS}
        if body["last_error"] is None:
            del body["last_error"]
        if not detail:
            del body["files"], body["queued_for_capacity"]
        return body

    # --- lookups (call with the lock held) ---------------------------------------------------

    def _visible_task(self, call: Call) -> dict[str, Any] | None:
        """``{task}`` by uuid (any owner) or name (scoped to ``{user}``), if the caller owns it."""
        assert call.user is not None
        ref = call.params["task"]
        if _is_uuid(ref):
            task = self._tasks.get(ref.lower())
        else:
            owner = self._resolve_user(call.params["user"], call.user)
            task = next(
                (
                    t
                    for t in self._tasks.values()
                    if owner is not None
                    and t["owner_id"] == owner.id
                    and t["name"].lower() == ref.lower()
                ),
                None,
            )
        if task is None or task["owner_id"] != call.user.id:
            return None
        return task

    def _task_by_id_or_name(self, ref: str) -> dict[str, Any]:
        for task in self._tasks.values():
            if ref in (task["id"], task["name"]):
                return task
        raise KeyError(ref)

    def _workspace_by_id_or_name(self, ref: str) -> dict[str, Any]:
        for workspace in self._workspaces.values():
            if ref in (workspace["id"], workspace["name"]):
                return workspace
        raise KeyError(ref)

    def _resolve_user(self, ref: str, caller: FakeUser | None) -> FakeUser | None:
        """``me``, a username or a uuid (any user; task handlers then require the caller)."""
        if ref == "me":
            return caller
        if _is_uuid(ref):
            return self._users.get(ref.lower())
        return self._user_by_name(ref)

    def _user_by_name(self, username: str) -> FakeUser | None:
        wanted = username.lower()
        return next((u for u in self._users.values() if u.username.lower() == wanted), None)

    def _require_user(self, username: str) -> FakeUser:
        user = self._user_by_name(username)
        if user is None:
            raise KeyError(f"no user {username!r}")
        return user

    def _org_by_name_or_id(self, ref: str) -> FakeOrg | None:
        return next((o for o in self._orgs.values() if ref in (o.id, o.name)), None)

    def _org_id_for(self, ref: str) -> str:
        with self._lock:
            org = self._org_by_name_or_id(ref)
        return org.id if org is not None else self.add_org(ref)

    def _template_by_version(self, version_id: str) -> FakeTemplate | None:
        wanted = version_id.lower()
        return next((t for t in self._templates.values() if t.active_version_id == wanted), None)

    def _user_json(self, user: FakeUser) -> dict[str, Any]:
        return {
            "id": user.id,
            "username": user.username,
            "name": user.username.capitalize(),
            "email": f"{user.username}@example.com",
            "avatar_url": "",
            "created_at": user.created_at,
            "updated_at": user.created_at,
            "last_seen_at": user.created_at,
            "status": user.status,
            "login_type": "password",
            "organization_ids": list(user.organization_ids),
            "roles": [],
            "theme_preference": "",
        }

    def _template_json(self, template: FakeTemplate, org: FakeOrg) -> dict[str, Any]:
        return {
            "id": template.id,
            "name": template.name,
            "display_name": template.display_name,
            "organization_id": org.id,
            "organization_name": org.name,
            "active_version_id": template.active_version_id,
            "icon": "",
            "deprecated": False,
            "deprecation_message": "",
            "created_at": _now(),
            "updated_at": _now(),
        }


# --- module helpers ----------------------------------------------------------------------------


def new_token() -> str:
    """A token in Coder's real format: 10-character id, hyphen, 22-character secret."""
    key_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(10))
    secret = "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(22))
    return f"{key_id}-{secret}"


def _text_of(content: Any) -> str:
    """The text parts of a chat message's content, joined."""
    return " ".join(str(p.get("text") or "") for p in content
                    if isinstance(p, dict) and p.get("type") == "text")


def _diff_status(url: str) -> dict[str, Any]:
    """A ``diff_status`` for a pull request at ``url`` (coder-chats.md section 12.5)."""
    number = url.rstrip("/").rsplit("/", 1)[-1]
    return {"url": url, "pr_number": int(number) if number.isdigit() else None,
            "pull_request_state": "open", "pull_request_title": "The agent's change",
            "additions": 3, "deletions": 1, "changed_files": 1}


def _token_from(request: Request) -> tuple[str, bool]:
    """The token sent and whether it came via ``Authorization: Bearer`` (Coder's forms win)."""
    for candidate in (
        request.headers.get("Coder-Session-Token", ""),
        request.cookies.get("coder_session_token", ""),
        request.query_params.get("coder_session_token", ""),
    ):
        if candidate.strip():
            return candidate.strip(), False
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer " and auth[7:].strip():
        return auth[7:].strip(), True
    access = request.query_params.get("access_token", "").strip()
    return access, False


def _unauthorized(detail: str, bearer: bool) -> Response:
    response = _json(401, {"message": SIGNED_OUT, "detail": detail})
    if bearer:
        response.headers["WWW-Authenticate"] = (
            f'Bearer realm="coder", error="invalid_token", error_description="{detail}"'
        )
    return response


def _name_problem(name: str) -> str | None:
    """``codersdk.NameValid``: the detail of the first rule ``name`` breaks, or ``None``."""
    if len(name) > 32:
        return "must be <= 32 characters"
    if len(name) < 1:
        return "must be >= 1 character"
    if name in ("new", "create"):
        return f'cannot use "{name}" as a name'
    if not _NAME_RE.match(name):
        return "must be alphanumeric with hyphens"
    return None


def _parse_query(q: str, *, default_key: str) -> list[tuple[str, str]]:
    """Coder search terms: ``key:value`` or a bare value (``default_key``), lowercased."""
    terms = []
    for m in _QUERY_TERM.finditer(q.lower()):
        key, value = m.group(1) or default_key, m.group(2).strip('"')
        terms.append((key, value))
    return terms


def _preset(spec: str | Mapping[str, Any]) -> dict[str, Any]:
    base: dict[str, Any] = {
        "ID": str(uuid.uuid4()),
        "Name": "",
        "Parameters": [],
        "Default": False,
        "DesiredPrebuildInstances": None,
        "Description": "",
        "Icon": "",
    }
    base.update({"Name": spec} if isinstance(spec, str) else dict(spec))
    return base


def _json_object(body: bytes) -> dict[str, Any] | Response:
    """The request body as a JSON object, or Coder's 400 for anything else."""
    try:
        req = json.loads(body or b"null")
    except ValueError as exc:
        return _error(400, "Request body must be valid JSON.", detail=str(exc))
    if not isinstance(req, dict):
        return _error(400, "Request body must be valid JSON.", detail="expected an object")
    return req


def _template_choice_problem(req: Mapping[str, Any]) -> Response | None:
    """Exactly one of ``template_id``/``template_version_id`` (the nil uuid counts as absent)."""
    present = [
        field
        for field in ("template_id", "template_version_id")
        if str(req.get(field) or NIL_UUID) != NIL_UUID
    ]
    if len(present) == 1:
        return None
    tag = "required_without" if not present else "excluded_with"
    validations = [
        {"field": field, "detail": f'Validation failed for tag "{tag}" with value: "{value}"'}
        for field in ("template_id", "template_version_id")
        for value in (req.get(field) or NIL_UUID,)
    ]
    return _error(400, "Validation failed.", validations=validations)


def _workspace_name_problem(req: Mapping[str, Any]) -> Response | None:
    name = req.get("name")
    if isinstance(name, str) and _name_problem(name) is None:
        return None
    detail = f'Validation failed for tag "workspace_name" with value: "{name or ""}"'
    return _error(400, "Validation failed.", validations=[{"field": "name", "detail": detail}])


def _content_problem(content: Any) -> Response | None:
    """Create-chat ``content``: at least one part; text parts must not be blank."""
    if not isinstance(content, list) or not content:
        return _error(400, "Content is required.", detail="Content cannot be empty.")
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not str(part.get("text") or "").strip():
                detail = f"content[{i}].text cannot be empty."
                return _error(400, "Invalid input part.", detail=detail)
        elif kind not in ("file", "file-reference"):
            return _error(400, "Invalid input part.", detail=f"content[{i}].type is not supported.")
    return None


def _labels_problem(labels: Any) -> Response | None:
    """``chatlabels.go``: ≤ 50 entries; key 1-64 bytes matching the pattern; value 1-256 bytes."""
    if labels is None:
        return None
    problems: list[str] = []
    if not isinstance(labels, dict):
        problems.append("labels must be an object of strings")
    else:
        if len(labels) > 50:
            problems.append(f"too many labels ({len(labels)}; at most 50)")
        for key, value in labels.items():
            if len(key.encode()) > 64 or not _LABEL_KEY.match(key):
                problems.append(f"label key {key!r} is invalid")
            if not isinstance(value, str) or not value or len(value.encode()) > 256:
                problems.append(f"label value for {key!r} must be 1-256 bytes")
    if not problems:
        return None
    validations = [{"field": "labels", "detail": p} for p in problems]
    return _error(400, "Invalid labels.", validations=validations)


def _window(query: QueryParams, total: int) -> tuple[int, int] | Response:
    """``offset``/``limit`` of a chat listing as slice bounds (limit defaults to 50)."""
    try:
        offset = int(query.get("offset", "0"))
        limit = int(query.get("limit", "50"))
    except ValueError:
        return _error(400, "Query parameters have invalid values.")
    if offset < 0 or limit < 0:
        return _error(400, "Query parameters have invalid values.")
    return offset, min(total, offset + (limit or 50))


def _chat_title(text: str) -> str:
    words = text.split()
    title = " ".join(words[:6]) + ("…" if len(words) > 6 else "")
    return title[:80] or "New Chat"


def _chat_error(value: str | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The stored ChatError object for a message or a partial object."""
    if value is None:
        return None
    error: dict[str, Any] = {"message": "", "kind": "generic", "retryable": False}
    error.update({"message": value} if isinstance(value, str) else dict(value))
    return error


def _set_build(workspace: dict[str, Any], status: str, error: str) -> None:
    build = workspace["latest_build"]
    build["status"] = status
    build["job"]["status"] = _BUILD_JOB_STATUS.get(status, status)
    build["job"]["error"] = error
    workspace["updated_at"] = _now()


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _fault_response(fault: _Fault) -> Response:
    if isinstance(fault.body, str):
        response: Response = Response(fault.body, status_code=fault.status, media_type="text/html")
    else:
        response = _json(fault.status, fault.body or _default_error_body(fault.status))
    if fault.retry_after is not None:
        response.headers["Retry-After"] = str(fault.retry_after)
    return response


def _default_error_body(status: int) -> dict[str, Any]:
    if status == 429:
        return {"message": RATE_LIMITED}
    if status == 500:
        return {"message": "Internal error.", "detail": "injected failure"}
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return {"message": f"{phrase}."}


def _error(
    status: int,
    message: str,
    *,
    detail: str | None = None,
    validations: list[dict[str, str]] | None = None,
) -> Response:
    """The standard Coder error body; ``detail``/``validations`` left out when empty."""
    body: dict[str, Any] = {"message": message}
    if detail:
        body["detail"] = detail
    if validations:
        body["validations"] = validations
    return _json(status, body)


def _json(status: int, body: Any) -> Response:
    return JSONResponse(body, status_code=status)


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return len(value) == 36


def _now() -> str:
    return _stamp(datetime.now(UTC))


__all__ = [
    "MODES",
    "ROUTES",
    "Call",
    "ChatSwitches",
    "FakeCoder",
    "FakeRoute",
    "FakeTemplate",
    "ModeSpec",
    "WorkspaceSwitches",
    "new_token",
]
