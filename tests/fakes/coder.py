"""An HTTP fake of one Coder deployment that behaves like the real server on the wire.

Follows ``/work/shared/reference/coder-tasks.md``: auth and 401 bodies (section
2), the error body and both 404 messages (section 3), users, templates by name,
PascalCase presets, and the Tasks endpoints with their validation rules.

Usage::

    fake = FakeCoder(mode="tasks")              # or "tasks-experimental"
    token = fake.add_user("alice")
    fake.add_template("default", "docker", presets=["small", {"Name": "large", "Default": True}])
    with serve_in_thread(fake.app()) as url:
        ...                                    # talk HTTP to ``url``
    assert len(fake.tasks_of("alice")) == 1

Routes are data: ``ROUTES`` lists every endpoint once, relative to a prefix and
tagged with a group; ``MODES`` says which URL prefixes serve each group and which
build version the server reports. Adding the Chats API means adding ``chats``
routes (handlers are ``FakeCoder`` methods named in the table) and modes such as
``"both"`` (v2.37) and ``"chats"`` (v2.38+). Anything not in the active table
answers ``404 {"message":"Route not found."}``.

Tests read state from their own thread while the server runs on a uvicorn
thread: every access to state holds ``self._lock``; handlers are synchronous and
run entirely under it; sleeps (``delay_next``) happen outside it.
"""

from __future__ import annotations

import asyncio
import copy
import hmac
import json
import re
import secrets
import string
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, Final

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
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

_NAME_RE: Final = re.compile(r"^[a-zA-Z0-9]+(?:-[a-zA-Z0-9]+)*$")
_ID_ALPHABET: Final = string.ascii_lowercase + string.digits
_SECRET_ALPHABET: Final = string.ascii_letters + string.digits
_QUERY_TERM: Final = re.compile(r'(?:([^\s:]+):)?("[^"]*"|\S+)')


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
    FakeRoute("GET", "/tasks", "list_tasks", "_list_tasks", "tasks"),
    FakeRoute("POST", "/tasks/{user}", "create_task", "_create_task", "tasks"),
    FakeRoute("GET", "/tasks/{user}/{task}", "get_task", "_get_task", "tasks"),
    FakeRoute("DELETE", "/tasks/{user}/{task}", "delete_task", "_delete_task", "tasks"),
)


@dataclass(frozen=True)
class ModeSpec:
    """What one server generation serves: build version and group → URL prefixes."""

    version: str
    prefixes: Mapping[str, tuple[str, ...]]


MODES: dict[str, ModeSpec] = {
    # <= v2.28: Tasks only under the experimental prefix.
    "tasks-experimental": ModeSpec(
        "v2.28.3", {"core": ("/api/v2",), "tasks": ("/api/experimental",)}
    ),
    # v2.29 - v2.36: /api/v2/tasks, with the experimental alias kept.
    "tasks": ModeSpec("v2.36.1", {"core": ("/api/v2",), "tasks": ("/api/v2", "/api/experimental")}),
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
    query: Mapping[str, str]
    body: bytes
    user: FakeUser | None
    base_url: str


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
        table = [
            _Compiled(route, compile_path(prefix + route.path)[0])
            for route in ROUTES
            for prefix in spec.prefixes.get(route.group, ())
        ]
        with self._lock:
            self.mode = mode
            self.version = version or spec.version
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
    ) -> None:
        """Move a task (uuid or name) along: set ``status`` and/or ``current_state.state``."""
        with self._lock:
            record = self._task_by_id_or_name(task)
            if status is not None:
                record["status"] = status
            if state is not None:
                record["current_state"] = {
                    "timestamp": _now(),
                    "state": state,
                    "message": message,
                    "uri": "",
                }

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
            handler: Callable[[Call], Response] = getattr(self, route.handler)
            call = Call(
                method=request.method,
                params=params,
                query=request.query_params,
                body=body,
                user=user,
                base_url=str(request.base_url).rstrip("/"),
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
        return Response(status_code=202)

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
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


__all__ = [
    "MODES",
    "ROUTES",
    "Call",
    "FakeCoder",
    "FakeRoute",
    "FakeTemplate",
    "ModeSpec",
    "new_token",
]
