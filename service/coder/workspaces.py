"""Create (or adopt) a user's workspace and wait for its first build, per ``coder-chats.md`` §9.1.

The Chats API cannot be told which template to use; the only control is a
``workspace_id``. ``WorkspaceCreator.ensure_running`` therefore makes the
workspace first, with the user's token, and returns once it is ``running``:

1. the template is looked up by name in the organization, and the preset is
   chosen from the active version's (PascalCase) presets like the Tasks backend
   does (the configured name, else the ``Default: true`` one, else none);
2. ``POST /api/v2/users/me/workspaces`` with ``template_version_id`` when a
   preset is sent (so preset and version match) or ``template_id`` otherwise,
   and the deterministic ``spec.name`` as the workspace name (its only
   idempotency key);
3. on ``409`` or an ambiguous failure (timeout, 5xx, lost answer) the workspace
   is read back by name and reused once its ``template_id`` is checked;
4. ``GET /api/v2/workspaces/{id}`` is polled until ``latest_build.status`` is
   ``running`` (or ``stopped``: the chat's agent can start a stopped workspace).
   ``failed``, ``canceled``, deletion, or no ``running`` within
   ``build_timeout`` seconds raise a ``PermanentError`` in plain words, so the
   caller creates no chat and the issue is told why.

Sleeping and the clock are injected, so tests never wait.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from service.coder.base import OnWait
from service.coder.client import CoderClient
from service.coder.templates import (
    Template,
    choose_preset,
    fetch_presets,
    fetch_template,
    path_segment,
)
from service.errors import (
    Conflict,
    NotFound,
    PermanentError,
    RouteNotFound,
    TokenRejected,
    TransientError,
)
from service.logging import get_logger

API_V2: Final = "/api/v2"
DEFAULT_BUILD_TIMEOUT: Final = 600.0
DEFAULT_POLL_INTERVAL: Final = 5.0

READY_STATUSES: Final = frozenset({"running", "stopped"})
FAILED_STATUSES: Final = frozenset({"failed", "canceled"})
GONE_STATUSES: Final = frozenset({"deleting", "deleted"})

log = get_logger("service.coder.workspaces")

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]


@dataclass(frozen=True)
class Workspace:
    """The parts of a Coder ``Workspace`` the bridge uses."""

    id: str
    name: str
    template_id: str
    status: str
    job_error: str = ""
    provisioners: int | None = None


class WorkspaceCreator:
    """Makes sure the user's workspace for one delegation exists and is running.

    ``build_timeout`` bounds the wait for the first build (seconds);
    ``poll_interval`` is the pause between polls. ``sleep`` and ``clock``
    (monotonic seconds) are injectable for tests.
    """

    def __init__(
        self,
        client: CoderClient,
        *,
        build_timeout: float = DEFAULT_BUILD_TIMEOUT,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.monotonic,
    ) -> None:
        self._client = client
        self._build_timeout = build_timeout
        self._poll_interval = poll_interval
        self._sleep = sleep
        self._clock = clock

    def __repr__(self) -> str:
        return f"WorkspaceCreator(build_timeout={self._build_timeout!r})"

    async def ensure_running(
        self, *, name: str, template: str, preset: str, organization: str,
        on_wait: OnWait | None = None,
    ) -> Workspace:
        """The running workspace called ``name`` built from ``template`` (and ``preset``).

        ``organization`` is a name or id. Raises ``NotFound`` for an unknown
        template, ``PermanentError`` for an unknown preset, a refused create, a
        same-named workspace of another template, or a build that failed, was
        canceled or did not finish within ``build_timeout``; ``TransientError``
        when the create's outcome is unknown and no workspace of that name exists
        yet (a retry will try again); other ``RemoteError`` subclasses as mapped.
        ``on_wait`` is awaited once before waiting for a build to finish.
        """
        found = await fetch_template(self._client, organization, template)
        version_id = found.active_version_id
        presets = await fetch_presets(self._client, version_id)
        preset_id = choose_preset(presets, preset, template=template)
        workspace = await self._create_or_adopt(name, found, version_id, preset_id)
        if workspace.status not in READY_STATUSES and on_wait is not None:
            await on_wait()
        return await self._wait_until_running(workspace)

    # --- steps ---------------------------------------------------------------------------------

    async def _create_or_adopt(
        self, name: str, template: Template, version_id: str, preset_id: str | None
    ) -> Workspace:
        body: dict[str, str] = {"name": name}
        if preset_id is not None:
            body["template_version_id"] = version_id
            body["template_version_preset_id"] = preset_id
        else:
            body["template_id"] = template.id
        try:
            created = await self._client.request("POST", f"{API_V2}/users/me/workspaces", json=body)
        except Conflict:
            return await self._adopt(name, template, missing=None)
        except TransientError as exc:
            return await self._adopt(name, template, missing=exc)
        except (TokenRejected, RouteNotFound):
            raise
        except PermanentError as exc:
            raise _refused(exc, name) from None
        workspace = parse_workspace(created)
        log.info("workspace_created", workspace=workspace.name, workspace_id=workspace.id)
        return workspace

    async def _adopt(
        self, name: str, template: Template, *, missing: TransientError | None
    ) -> Workspace:
        """Reuse the caller's workspace ``name`` after a 409 or an answer that was lost.

        ``missing`` is re-raised when no such workspace exists (the create may be
        retried); after a 409 that case is a ``Conflict`` in plain words.
        """
        try:
            path = f"{API_V2}/users/me/workspace/{path_segment(name)}"
            body = await self._client.request("GET", path)
        except NotFound:
            if missing is not None:
                raise missing from None
            raise Conflict(
                "coder",
                f'Coder reports a workspace named "{name}" already exists but it cannot be read',
                status=409,
            ) from None
        workspace = parse_workspace(body)
        if workspace.template_id != template.id:
            raise PermanentError(
                "coder",
                f'a workspace named "{name}" already exists on Coder but was made from another '
                f'template than "{template.name}"; delete or rename it and try again',
            )
        log.info("workspace_adopted", workspace=workspace.name, workspace_id=workspace.id)
        return workspace

    async def _wait_until_running(self, workspace: Workspace) -> Workspace:
        deadline = self._clock() + self._build_timeout
        while True:
            if workspace.status in READY_STATUSES:
                return workspace
            _raise_if_finished_badly(workspace)
            if self._clock() >= deadline:
                words = _timeout_message(workspace, self._build_timeout)
                raise PermanentError("coder", words, public=words)
            await self._sleep(self._poll_interval)
            workspace = await self._poll(workspace)

    async def _poll(self, workspace: Workspace) -> Workspace:
        """The workspace again; 404 (gone) and 410 (deleted) become a plain ``PermanentError``."""
        try:
            path = f"{API_V2}/workspaces/{path_segment(workspace.id)}"
            body = await self._client.request("GET", path)
        except PermanentError as exc:
            if isinstance(exc, NotFound) or exc.status == 410:
                raise PermanentError(
                    "coder",
                    f'the Coder workspace "{workspace.name}" was deleted while it was being '
                    "built; no chat was started",
                    status=exc.status,
                ) from None
            raise
        return parse_workspace(body)


# --- pure helpers ------------------------------------------------------------------------------


def parse_workspace(body: Any) -> Workspace:
    """A ``Workspace`` from Coder's object; ``PermanentError`` when ``id`` is missing.

    A missing ``latest_build`` or status reads ``unknown`` (the wait goes on).
    """
    if not isinstance(body, dict) or not _str(body, "id"):
        raise PermanentError("coder", "Coder's answer about the workspace lacks its id")
    build = body.get("latest_build")
    build = build if isinstance(build, dict) else {}
    job = build.get("job")
    job = job if isinstance(job, dict) else {}
    matched = build.get("matched_provisioners")
    count = matched.get("count") if isinstance(matched, dict) else None
    return Workspace(
        id=_str(body, "id"),
        name=_str(body, "name"),
        template_id=_str(body, "template_id"),
        status=_str(build, "status") or "unknown",
        job_error=_str(job, "error"),
        provisioners=count if isinstance(count, int) and not isinstance(count, bool) else None,
    )


def _raise_if_finished_badly(workspace: Workspace) -> None:
    if workspace.status in FAILED_STATUSES:
        verb = "failed to build" if workspace.status == "failed" else "had its build canceled"
        # The build's error is a build log line: the log gets it, the issue does not.
        reason = f": {workspace.job_error}" if workspace.job_error else ""
        public = f'the Coder workspace "{workspace.name}" for this chat {verb}; no chat was started'
        raise PermanentError(
            "coder",
            f'the Coder workspace "{workspace.name}" for this chat {verb}{reason}; '
            "no chat was started", public=public,
        )
    if workspace.status in GONE_STATUSES:
        words = f'the Coder workspace "{workspace.name}" is being deleted; no chat was started'
        raise PermanentError("coder", words, public=words)


def _timeout_message(workspace: Workspace, timeout: float) -> str:
    minutes = max(1, round(timeout / 60))
    unit = "minute" if minutes == 1 else "minutes"
    hint = ""
    if workspace.status == "pending" and workspace.provisioners == 0:
        hint = " (no provisioner can take its build)"
    return (
        f'the Coder workspace "{workspace.name}" for this chat was not running after '
        f"{minutes} {unit}; its build is {workspace.status}{hint}. No chat was started"
    )


def _refused(exc: PermanentError, name: str) -> PermanentError:
    """A refused workspace create, in words (Coder's own message kept)."""
    public = f'Coder could not create the workspace "{name}" for this chat'
    return PermanentError("coder", f"{public}: {exc.message}", status=exc.status,
                          public=f"{public}: {exc.server_message}" if exc.server_message
                          and exc.status in (400, 403, 409) else public)


def _str(body: Any, key: str) -> str:
    value = body.get(key) if isinstance(body, dict) else None
    return value if isinstance(value, str) else ""

