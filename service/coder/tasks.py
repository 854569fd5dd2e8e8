"""The Coder Tasks API backend (Coder v2.27 to v2.36), per ``reference/coder-tasks.md``.

``ensure`` creates one task per ``WorkSpec`` and never a second one: the task
name is the spec's deterministic ``name``, so a retry first looks the name up
(``may_exist``) and a name conflict on create adopts the existing task.

Tasks routes live under ``/api/v2`` (v2.29+) or only ``/api/experimental``
(≤ v2.28). Every Tasks call tries the remembered prefix first (``/api/v2`` when
nothing is known), repeats the same call under the other prefix on
``404 Route not found.``, and remembers what worked in ``prefix_cache``, a dict
keyed by Coder URL that backends of one process share. An object-level 404 is
never a reason to switch prefix.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote

from service.coder.base import CreatedWork, OnWait, SendOutcome, Snapshot, WorkSpec
from service.coder.client import CoderClient
from service.coder.templates import (
    TemplateCache,
    choose_preset,
    fetch_presets,
    fetch_template,
    path_segment,
)
from service.core.status import TaskSnapshot
from service.errors import Conflict, NotFound, PermanentError, RouteNotFound, TransientError
from service.logging import get_logger

log = get_logger("service.coder")

API_V2: Final = "/api/v2"
API_EXPERIMENTAL: Final = "/api/experimental"
TASK_PREFIXES: Final = (API_V2, API_EXPERIMENTAL)

INACTIVE_STATUSES: Final = frozenset({"paused", "error"})
FINISHED_STATES: Final = frozenset({"complete", "failed", "failure"})
DISPLAY_NAME_MAX_BYTES: Final = 64


class TasksBackend:
    """``CoderBackend`` over the Tasks API of one deployment, acting as the client's user."""

    def __init__(
        self,
        client: CoderClient,
        coder_url: str,
        *,
        prefix_cache: dict[str, str] | None = None,
        templates: TemplateCache | None = None,
    ) -> None:
        self._client = client
        self._coder_url = coder_url.rstrip("/")
        self._prefixes: dict[str, str] = prefix_cache if prefix_cache is not None else {}
        self._templates = templates if templates is not None else TemplateCache()

    def __repr__(self) -> str:
        return f"TasksBackend(coder_url={self._coder_url!r})"

    async def ensure(self, spec: WorkSpec, *, may_exist: bool,
                     on_wait: OnWait | None = None) -> CreatedWork:
        """Return the task named ``spec.name``, creating it only if it does not exist.

        With ``may_exist`` the name is looked up first. A 409 on create means the
        name is taken: the existing task is looked up and returned. Raises
        ``PermanentError`` when no template is configured, the configured preset
        does not exist, or Coder's answer lacks the task's ``id``/``owner_name``;
        ``NotFound`` for an unknown template; ``RouteNotFound`` when the server
        serves no Tasks API; other ``RemoteError`` subclasses as the client maps them.
        """
        if not spec.template.strip():
            raise PermanentError(
                "coder", "no template configured: set a Coder template for this route or in "
                "[coder]", public="coder-bridge has no Coder template configured for this issue",
                misconfigured="template")
        if may_exist:
            existing = await self._find_by_name(spec.name)
            if existing is not None:
                return existing
        body = await self._create_body(spec)
        try:
            return await self._post_task(spec, body)
        except Conflict:
            raise
        except PermanentError as exc:
            # A version remembered for up to a minute may be gone (a template updated and
            # its old version archived): Coder answers 400 then. Forget what was remembered
            # and, when the template's version did change, create once more with the new one.
            if exc.status != 400 or not self._forget(spec, body["template_version_id"]):
                raise
            fresh = await self._create_body(spec)
            if fresh["template_version_id"] == body["template_version_id"]:
                raise
            log.info("template_version_changed", template=spec.template)
            return await self._post_task(spec, fresh)

    async def _post_task(self, spec: WorkSpec, body: dict[str, str]) -> CreatedWork:
        """``POST /tasks/me``; a taken name is the task made by an earlier attempt."""
        try:
            task = await self._tasks_call("POST", "/tasks/me", json=body)
        except Conflict:
            existing = await self._find_by_name(spec.name)
            if existing is None:
                words = (f'a workspace named "{spec.name}" already exists on Coder but is not '
                         "a task; delete or rename it and try again")
                raise Conflict("coder", words, status=409, public=words) from None
            return existing
        return self._created(task)

    async def is_active(self, work: CreatedWork) -> bool:
        """Whether the task may still make progress.

        False when it is gone (404), its ``status`` is ``paused`` or ``error``, or
        its ``current_state.state`` is ``complete``, ``failed`` or ``failure``;
        True otherwise, unknown statuses included. Other failures raise as in
        ``ensure`` (e.g. ``RouteNotFound`` after an upgrade to a Chats-only server).
        """
        try:
            task = await self._tasks_call("GET", self._task_path(work))
        except NotFound:
            return False
        if not isinstance(task, dict):
            return True
        if task.get("status") in INACTIVE_STATUSES:
            return False
        state = task.get("current_state")
        return not (isinstance(state, dict) and state.get("state") in FINISHED_STATES)

    async def list_snapshots(self, works: list[CreatedWork]) -> dict[str, Snapshot]:
        """Every tracked task in one ``GET /tasks?q=owner:me`` (the list has no paging)."""
        wanted = {work.id for work in works}
        answer = await self._tasks_call("GET", "/tasks", params={"q": "owner:me"})
        items = answer.get("tasks") if isinstance(answer, dict) else None
        found: dict[str, Snapshot] = {}
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and item.get("id") in wanted:
                found[str(item["id"])] = task_snapshot(item)
        return found

    async def snapshot(self, work: CreatedWork) -> Snapshot:
        """``GET /tasks/{owner}/{id}``; a 404 says the task is gone."""
        try:
            return task_snapshot(await self._tasks_call("GET", self._task_path(work)))
        except NotFound:
            return TaskSnapshot(exists=False)

    async def send(self, work: CreatedWork, text: str) -> SendOutcome:
        """``POST /tasks/{owner}/{id}/send``. Tasks have no queue: a busy agent answers 502
        (``busy``: the bridge holds the message); a task that is not active answers 400
        or 409 (``not_ready``). The class of the answer decides, never its words."""
        try:
            await self._tasks_call("POST", self._task_path(work) + "/send", json={"input": text})
        except NotFound:
            return "gone"
        except TransientError as exc:
            if exc.status == 502:
                return "busy"
            raise
        except PermanentError as exc:
            if exc.status in (400, 409):
                return "not_ready"
            raise
        return "sent"

    async def stop(self, work: CreatedWork) -> None:
        """Pause the task (v2.31+: its work stays inspectable); where pausing is not
        served, delete it. A task that is gone is left alone."""
        path = self._task_path(work)
        try:
            await self._client.request("POST", self._working_prefix() + path + "/pause")
        except RouteNotFound:
            try:
                await self._tasks_call("DELETE", path)
            except NotFound:
                return
        except NotFound:
            return

    # --- steps ---------------------------------------------------------------------------------

    def _task_path(self, work: CreatedWork) -> str:
        return f"/tasks/{path_segment(work.owner_name)}/{path_segment(work.id)}"

    def _working_prefix(self) -> str:
        return self._prefixes.get(self._coder_url, API_V2)

    async def _find_by_name(self, name: str) -> CreatedWork | None:
        """The caller's task called ``name``, or ``None`` when there is none."""
        try:
            task = await self._tasks_call("GET", f"/tasks/me/{path_segment(name)}")
        except NotFound:
            return None
        return self._created(task)

    async def _create_body(self, spec: WorkSpec) -> dict[str, str]:
        """The ``POST /tasks/me`` body: template version, preset if any, prompt and names."""
        version_id = await self._fetch_active_version(spec)
        body = {"template_version_id": version_id}
        preset_id = await self._pick_preset(spec, version_id)
        if preset_id is not None:
            body["template_version_preset_id"] = preset_id
        body["input"] = spec.prompt
        body["name"] = spec.name
        display_name = clip_display_name(spec.display_name)
        if display_name:
            body["display_name"] = display_name
        return body

    def _forget(self, spec: WorkSpec, version_id: str) -> bool:
        """Drop the remembered version of ``spec``'s template and its presets; whether a
        version was remembered."""
        self._templates.drop(("presets", self._coder_url, version_id))
        return self._templates.drop(self._version_key(spec))

    def _version_key(self, spec: WorkSpec) -> tuple[str, ...]:
        return ("version", self._coder_url, spec.organization, spec.template)

    async def _fetch_active_version(self, spec: WorkSpec) -> str:
        key = self._version_key(spec)
        cached = self._templates.get(key)
        if isinstance(cached, str):
            return cached
        template = await fetch_template(self._client, spec.organization, spec.template)
        self._templates.put(key, template.active_version_id)
        return template.active_version_id

    async def _pick_preset(self, spec: WorkSpec, version_id: str) -> str | None:
        """The preset ``ID`` to send, or ``None`` to send no preset key."""
        key = ("presets", self._coder_url, version_id)
        presets = self._templates.get(key)
        if not isinstance(presets, list):
            presets = await fetch_presets(self._client, version_id)
            self._templates.put(key, presets)
        return choose_preset(presets, spec.preset, template=spec.template)

    async def _tasks_call(self, method: str, suffix: str, *, json: object | None = None,
                          params: dict[str, str] | None = None) -> Any:
        """``method`` on a Tasks route (``suffix`` starts ``/tasks``) under the working prefix."""
        cached = self._prefixes.get(self._coder_url)
        order = [cached, *(p for p in TASK_PREFIXES if p != cached)] if cached else TASK_PREFIXES
        for prefix in order:
            try:
                result = await self._client.request(method, prefix + suffix, json=json,
                                                    params=params)
            except RouteNotFound:
                continue
            except (NotFound, Conflict):
                self._prefixes[self._coder_url] = prefix  # an object-level answer: route served
                raise
            self._prefixes[self._coder_url] = prefix
            return result
        self._prefixes.pop(self._coder_url, None)
        raise RouteNotFound(
            "coder",
            "this Coder server does not serve the Tasks API (Coder v2.37 and later replaced "
            "Tasks with Chats, and older servers may have Tasks switched off)",
            status=404,
        )

    def _created(self, task: Any) -> CreatedWork:
        return created_work_from_task(task, self._coder_url)


# --- pure helpers ------------------------------------------------------------------------------


def clip_display_name(text: str) -> str:
    """``text`` trimmed and cut to Coder's 64-byte limit without splitting a character.

    Coder checks ``len()`` of the Go string, i.e. UTF-8 bytes, so 64 bytes is
    also at most 64 characters.
    """
    raw = text.strip().encode("utf-8")[:DISPLAY_NAME_MAX_BYTES]
    return raw.decode("utf-8", errors="ignore").rstrip()


def task_snapshot(task: Any) -> TaskSnapshot:
    """A ``TaskSnapshot`` of a Task object; unreadable fields read as unknown."""
    if not isinstance(task, dict):
        return TaskSnapshot(exists=True)
    current = task.get("current_state")
    state: dict[str, Any] = current if isinstance(current, dict) else {}
    status = task.get("status")
    return TaskSnapshot(
        exists=True,
        status=status if isinstance(status, str) and status else "unknown",
        state=_text(state.get("state")) or None,
        message=_text(state.get("message")),
        uri=_text(state.get("uri")),
        state_at=parse_time(state.get("timestamp")),
    )


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def parse_time(value: Any) -> float | None:
    """An RFC 3339 time as UNIX seconds (a naive one read as UTC), or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)).timestamp()


def created_work_from_task(task: Any, coder_url: str) -> CreatedWork:
    """A ``CreatedWork`` from a Task object; ``PermanentError`` if ``id``/``owner_name`` lack.

    Unknown fields are ignored; a missing or non-string ``status`` reads ``unknown``.
    """
    if not isinstance(task, dict):
        raise PermanentError("coder", "Coder's answer about the task is not a JSON object")
    task_id, owner = task.get("id"), task.get("owner_name")
    if not isinstance(task_id, str) or not task_id or not isinstance(owner, str) or not owner:
        raise PermanentError("coder", "Coder's answer about the task lacks its id or owner name")
    status = task.get("status")
    base = coder_url.rstrip("/")
    return CreatedWork(
        kind="task",
        id=task_id,
        url=f"{base}/tasks/{quote(owner, safe='')}/{quote(task_id, safe='')}",
        owner_name=owner,
        status=status if isinstance(status, str) and status else "unknown",
    )

