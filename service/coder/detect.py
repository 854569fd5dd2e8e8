"""Which Coder API a deployment speaks (Tasks or Chats) and where, per ``coder-chats.md`` §3.

``coder.api`` is ``"auto"``, ``"tasks"`` or ``"chats"``. For ``"auto"`` the
probing order of the reference is followed, with the token of the job:

1. ``GET /api/v2/buildinfo``: a release ``version`` ≥ v2.37 skips the Tasks
   probes (a hint only; dev builds never skip);
2. ``GET /api/v2/tasks?q=owner:me`` → Tasks on ``/api/v2``;
3. ``GET /api/experimental/tasks?q=owner:me`` → Tasks on ``/api/experimental``;
4. ``GET /api/v2/chats?limit=1`` → Chats on ``/api/v2``, unless it may be the
   incompatible early prototype (guard below);
5. ``GET /api/experimental/chats?limit=1`` → Chats on ``/api/experimental``;
   a 403 there means Chats exist but are switched off (the ``agents`` experiment);
6. otherwise a ``PermanentError``: this Coder server offers neither Tasks nor Chats.

Forced ``"tasks"``/``"chats"`` only probe that API, ``/api/v2`` first.

Only a 2xx answer counts as "served"; ``404`` (either message) and other
refusals mean "not here"; a ``401`` (``TokenRejected``) and transient failures
stop detection and propagate, since they say nothing about the API.

``ApiDetector`` caches the result per Coder URL and choice; it is created once
per process and injected. ``DetectingBackend`` (what ``backend_factory``
builds) detects lazily and, when a call answers ``404 Route not found.``,
drops the cache, detects again and retries the operation once: the server was
upgraded under us. After Chats were detected no Tasks route is ever called.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar

import httpx

from service.coder.base import (
    CoderBackend,
    CreatedWork,
    OnWait,
    SendOutcome,
    Snapshot,
    WorkSpec,
)
from service.coder.chats import ChatsBackend
from service.coder.client import CoderClient, decipher_response, decipher_transport_error
from service.coder.tasks import TasksBackend
from service.coder.templates import TemplateCache
from service.coder.workspaces import WorkspaceCreator
from service.config import CoderConfig
from service.errors import (
    NotFound,
    PermanentError,
    RouteNotFound,
    TokenRejected,
)
from service.logging import get_logger

API_V2: Final = "/api/v2"
API_EXPERIMENTAL: Final = "/api/experimental"
BASES: Final = (API_V2, API_EXPERIMENTAL)
CHATS_ON_V2_SINCE: Final = (2, 37)
TASKS_ON_V2_SINCE: Final = (2, 29)

ApiChoice = Literal["auto", "tasks", "chats"]
ApiName = Literal["tasks", "chats"]

log = get_logger("service.coder.detect")

_VERSION: Final = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)(.*)$")
T = TypeVar("T")


# --- results -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Detected:
    """The API a deployment speaks and its base path (``/api/v2`` or ``/api/experimental``)."""

    api: ApiName
    base: str
    version: str | None = None

    def describe(self) -> str:
        """E.g. ``the Chats API at /api/v2/chats``."""
        return f"the {self.api.capitalize()} API at {self.base}/{self.api}"


@dataclass(frozen=True)
class ServerVersion:
    """A parsed Coder build version; ``dev`` for ``-devel+…`` builds."""

    raw: str
    release: tuple[int, int, int]
    dev: bool

    def at_least(self, wanted: tuple[int, int]) -> bool:
        """Whether this version is ``wanted`` (major, minor) or later."""
        return self.release[:2] >= wanted


def parse_version(text: str | None) -> ServerVersion | None:
    """``v2.37.1`` or ``v2.38.0-devel+abc123`` → ``ServerVersion``; anything else → ``None``."""
    m = _VERSION.match((text or "").strip())
    if m is None:
        return None
    release = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
    return ServerVersion(raw=text or "", release=release, dev="devel" in m.group(4))


# --- the detector ------------------------------------------------------------------------------


class ApiDetector:
    """Process-wide cache of detection results, keyed by Coder URL and ``coder.api`` choice.

    Create one per process and inject it; concurrent detections for one key
    share a lock, so a burst of jobs probes once.
    """

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], Detected] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    def __repr__(self) -> str:
        return f"ApiDetector(cached={len(self._cache)})"

    def cached(self, coder_url: str, api: ApiChoice = "auto") -> Detected | None:
        """The remembered result, if any (no request)."""
        return self._cache.get((_norm(coder_url), api))

    def invalidate(self, coder_url: str) -> None:
        """Forget every result for ``coder_url`` (the next ``detect`` probes again)."""
        url = _norm(coder_url)
        for key in [k for k in self._cache if k[0] == url]:
            del self._cache[key]

    async def detect(self, client: CoderClient, *, api: ApiChoice = "auto") -> Detected:
        """The API and base path of ``client``'s deployment, from the cache or by probing.

        Raises ``PermanentError`` when the server offers neither API (or not the
        forced one); ``TokenRejected`` for a bad token; ``TransientError`` when
        the server could not be asked. Failures are not cached.
        """
        key = (_norm(client.base_url), api)
        if (hit := self._cache.get(key)) is not None:
            return hit
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if (hit := self._cache.get(key)) is not None:
                return hit
            detected = await probe(client, api)
            self._cache[key] = detected
            log.info(
                "coder_api_detected",
                api=detected.api,
                base=detected.base,
                version=detected.version,
                choice=api,
            )
            return detected


async def probe(client: CoderClient, api: ApiChoice) -> Detected:
    """Probe the deployment for ``api`` (see the module docstring for the order)."""
    version = await server_version(client)
    raw = version.raw if version else client.build_version
    if api in ("auto", "tasks") and not (api == "auto" and _skips_tasks(version)):
        base = await _tasks_base(client)
        if base is not None:
            return Detected("tasks", base, raw)
        if api == "tasks":
            words = ("coder.api is set to tasks, but this Coder server does not serve the "
                     "Tasks API (Coder v2.37 and later replaced Tasks with Chats); set coder.api "
                     "to auto")
            raise PermanentError("coder", words, public=words)
    base, gated = await _chats_base(client, version)
    if base is not None:
        return Detected("chats", base, raw)
    words = _neither_message(api, gated)
    raise PermanentError("coder", words, public=words)


async def server_version(client: CoderClient) -> ServerVersion | None:
    """The build version from ``GET /api/v2/buildinfo`` (a hint); ``None`` when unreadable.

    A transient failure propagates (the server cannot be asked right now).
    """
    try:
        info = await client.request("GET", f"{API_V2}/buildinfo")
    except PermanentError as exc:
        log.info("coder_buildinfo_unreadable", error=str(exc))
        return parse_version(client.build_version)
    text = info.get("version") if isinstance(info, dict) else None
    return parse_version(text if isinstance(text, str) else client.build_version)


# --- probes ------------------------------------------------------------------------------------


async def _tasks_base(client: CoderClient) -> str | None:
    for base in BASES:
        if await _served(client, f"{base}/tasks", {"q": "owner:me"}) is not None:
            return base
    return None


async def _chats_base(
    client: CoderClient, version: ServerVersion | None
) -> tuple[str | None, bool]:
    """The Chats base, and whether the experimental one answered the experiment gate (403)."""
    body = await _served(client, f"{API_V2}/chats", {"limit": "1"})
    if body is not None:
        if _trust_v2_chats(version, body):
            return API_V2, False
        log.warning("coder_chats_prototype_ignored", version=version.raw if version else None)
    try:
        body = await client.request("GET", f"{API_EXPERIMENTAL}/chats", params={"limit": "1"})
    except TokenRejected:
        raise
    except PermanentError as exc:
        return None, exc.status == 403
    return (API_EXPERIMENTAL, False) if isinstance(body, list) else (None, False)


async def _served(client: CoderClient, path: str, params: dict[str, str]) -> Any | None:
    """The 2xx body of a probe (``{}`` for an empty one), or ``None`` when not served there."""
    try:
        body = await client.request("GET", path, params=params)
    except (RouteNotFound, NotFound):
        return None
    except TokenRejected:
        raise
    except PermanentError as exc:
        log.info("coder_probe_refused", path=path, status=exc.status)
        return None
    return body if body is not None else {}


def _trust_v2_chats(version: ServerVersion | None, body: Any) -> bool:
    """Guard against the early ``/api/v2/chats`` prototype (incompatible shapes).

    Trusted when the version is ≥ v2.37 or a dev build, or when the items carry
    ``last_model_config_id`` and ``archived``. With no version known and no items
    it is trusted too: only servers without Tasks get here, and prototype-era
    servers served Tasks.
    """
    if not isinstance(body, list):
        return False
    if version is not None and (version.dev or version.at_least(CHATS_ON_V2_SINCE)):
        return True
    if body:
        return all(
            isinstance(item, dict) and "last_model_config_id" in item and "archived" in item
            for item in body
        )
    return version is None


def _skips_tasks(version: ServerVersion | None) -> bool:
    return version is not None and not version.dev and version.at_least(CHATS_ON_V2_SINCE)


def _neither_message(api: ApiChoice, gated: bool) -> str:
    if api == "chats":
        text = "coder.api is set to chats, but this Coder server does not serve the Chats API"
    else:
        text = "this Coder server offers neither Tasks nor Chats"
    if gated:
        text += (
            "; its Chats API is switched off (a Coder administrator has to enable the "
            "'agents' experiment)"
        )
    return text


# --- the backend the worker uses ---------------------------------------------------------------


class DetectingBackend:
    """``CoderBackend`` that finds the API on first use and re-detects after an upgrade.

    ``ensure`` and ``is_active`` detect (cached), delegate to ``TasksBackend`` or
    ``ChatsBackend``, and on ``RouteNotFound`` invalidate the cache, detect again
    and retry once (``ensure`` then retries with ``may_exist=True``).
    """

    def __init__(
        self,
        client: CoderClient,
        coder_url: str,
        *,
        detector: ApiDetector,
        api: ApiChoice = "auto",
        workspaces: WorkspaceCreator | None = None,
        templates: TemplateCache | None = None,
    ) -> None:
        self._client = client
        self._coder_url = coder_url.rstrip("/")
        self._detector = detector
        self._api = api
        self._workspaces = workspaces
        self._templates = templates if templates is not None else TemplateCache()

    def __repr__(self) -> str:
        return f"DetectingBackend(coder_url={self._coder_url!r}, api={self._api!r})"

    async def ensure(self, spec: WorkSpec, *, may_exist: bool,
                     on_wait: OnWait | None = None) -> CreatedWork:
        """``ensure`` of the detected API's backend (see ``CoderBackend.ensure``)."""

        async def first() -> CreatedWork:
            return await self._backend(await self._detect()).ensure(
                spec, may_exist=may_exist, on_wait=on_wait)

        async def again() -> CreatedWork:
            return await self._backend(await self._detect()).ensure(
                spec, may_exist=True, on_wait=on_wait)

        try:
            return await self._once_more_on_route_not_found(first, again)
        except RouteNotFound as exc:
            raise RouteNotFound(
                "coder",
                'Coder answered "Route not found." again after the bridge re-checked which API '
                "the server offers; the server may be in the middle of an upgrade, or a proxy "
                "in front of it hides some routes",
                status=exc.status,
            ) from None

    async def is_active(self, work: CreatedWork) -> bool:
        """Ask the API that made ``work``; False when that API is gone from the server.

        A task on a server now detected as Chats is not active (no Tasks route is
        called then); a chat on a server detected as Tasks is asked at the Chats
        base found by a forced Chats detection.
        """

        async def ask() -> bool:
            return await self._is_active_once(work)

        try:
            return await self._once_more_on_route_not_found(ask, ask)
        except RouteNotFound:
            return False

    async def list_snapshots(self, works: list[CreatedWork]) -> dict[str, Snapshot]:
        """One list call per API the works belong to (a deployment speaks one)."""
        found: dict[str, Snapshot] = {}
        for kind in ("task", "chat"):
            of_kind = [work for work in works if work.kind == kind]
            if of_kind:
                found.update(await self._for(of_kind[0], _lister(of_kind)))
        return found

    async def snapshot(self, work: CreatedWork) -> Snapshot:
        """A fresh snapshot from the API that made ``work``."""
        return await self._for(work, lambda backend: backend.snapshot(work))

    async def send(self, work: CreatedWork, text: str) -> SendOutcome:
        """A follow-up through the API that made ``work``."""
        return await self._for(work, lambda backend: backend.send(work, text))

    async def stop(self, work: CreatedWork) -> None:
        """Stop ``work`` through the API that made it."""
        await self._for(work, lambda backend: backend.stop(work))

    async def _for(self, work: CreatedWork, call: Callable[[CoderBackend], Awaitable[T]]) -> T:
        """``call`` on the backend of the API that made ``work``: a chat on the Chats API
        wherever the server offers it; a task on the Tasks API, which a server that no
        longer serves it answers ``RouteNotFound`` for."""

        async def once() -> T:
            detected = await self._detect()
            if work.kind == "chat" and detected.api != "chats":
                detected = await self._detector.detect(self._client, api="chats")
            if work.kind == "task" and detected.api != "tasks":
                raise RouteNotFound("coder", "this Coder server no longer serves the Tasks API",
                                    status=404)
            return await call(self._backend(detected))

        return await self._once_more_on_route_not_found(once, once)

    async def _is_active_once(self, work: CreatedWork) -> bool:
        detected = await self._detect()
        if work.kind == "task":
            if detected.api != "tasks":
                log.info("task_api_gone", task_id=work.id, api=detected.api)
                return False
            return await self._backend(detected).is_active(work)
        if detected.api != "chats":
            detected = await self._detector.detect(self._client, api="chats")
        return await self._backend(detected).is_active(work)

    async def _once_more_on_route_not_found(
        self, first: Callable[[], Awaitable[T]], again: Callable[[], Awaitable[T]]
    ) -> T:
        try:
            return await first()
        except RouteNotFound as exc:
            log.warning("coder_api_changed", error=str(exc), coder_url=self._coder_url)
            self._detector.invalidate(self._coder_url)
        return await again()

    async def _detect(self) -> Detected:
        return await self._detector.detect(self._client, api=self._api)

    def _backend(self, detected: Detected) -> CoderBackend:
        if detected.api == "tasks":
            cache = {self._coder_url: detected.base}
            return TasksBackend(self._client, self._coder_url, prefix_cache=cache,
                                templates=self._templates)
        return ChatsBackend(
            self._client, self._coder_url, base=detected.base, workspaces=self._workspaces
        )


def _lister(
    works: list[CreatedWork],
) -> Callable[[CoderBackend], Awaitable[dict[str, Snapshot]]]:
    async def call(backend: CoderBackend) -> dict[str, Snapshot]:
        return await backend.list_snapshots(works)

    return call


def backend_factory(
    config: CoderConfig,
    http: httpx.AsyncClient,
    detector: ApiDetector,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Callable[[str], CoderBackend]:
    """token → a ``DetectingBackend`` for ``config.url`` acting with that token.

    The workspace build wait is bounded by ``config.workspace_build_timeout``;
    ``sleep``/``clock`` drive its polling (tests inject fakes).
    """
    build_timeout = config.workspace_build_timeout
    templates = TemplateCache()  # shared by every user's backend in this process

    def build(token: str) -> CoderBackend:
        client = CoderClient(config.url, token, http=http, timeout=config.timeout)
        workspaces = WorkspaceCreator(client, build_timeout=build_timeout, sleep=sleep, clock=clock)
        return DetectingBackend(
            client, config.url, detector=detector, api=config.api, workspaces=workspaces,
            templates=templates,
        )

    return build


# --- check-config --online ---------------------------------------------------------------------


async def describe(config: CoderConfig, http: httpx.AsyncClient, token: str | None) -> str:
    """One line for ``check-config --online``: which API and base path the server offers.

    With a token the server is probed as the worker would (``coder.api``
    respected, nothing cached). Without one only ``/api/v2/buildinfo`` is read
    and the answer is a guess from the version, said as such. Raises the
    ``RemoteError`` subclasses of detection (bad token, unreachable server,
    neither API).
    """
    url = config.url.rstrip("/")
    if token:
        client = CoderClient(url, token, http=http, timeout=config.timeout)
        detected = await ApiDetector().detect(client, api=config.api)
        how = "found by probing" if config.api == "auto" else f"coder.api = {config.api}"
        shown = detected.version or client.build_version or "of unknown version"
        return f"Coder {shown} at {url} offers {detected.describe()} ({how})"
    version = await _anonymous_version(url, http, seconds=config.timeout)
    shown = version.raw if version else "of unknown version"
    forced = f"; coder.api forces {config.api}" if config.api != "auto" else ""
    return (
        f"Coder {shown} at {url}: no user token was available, so the API was not probed; "
        f"judging by the version alone it most likely offers {_guess(version)}{forced}"
    )


async def _anonymous_version(
    url: str, http: httpx.AsyncClient, *, seconds: float
) -> ServerVersion | None:
    """``GET /api/v2/buildinfo`` without a token (it needs none)."""
    try:
        response = await http.get(f"{url}{API_V2}/buildinfo", timeout=seconds)
    except httpx.HTTPError as exc:
        raise decipher_transport_error(exc) from None
    info = decipher_response(response)
    text = info.get("version") if isinstance(info, dict) else None
    return parse_version(text if isinstance(text, str) else None)


def _guess(version: ServerVersion | None) -> str:
    if version is None or version.dev:
        return "an API that cannot be told from the version (a development build or none)"
    if version.at_least(CHATS_ON_V2_SINCE):
        return "the Chats API at /api/v2/chats"
    if version.at_least(TASKS_ON_V2_SINCE):
        return "the Tasks API at /api/v2/tasks"
    return "the Tasks API at /api/experimental/tasks"


def _norm(url: str) -> str:
    return url.rstrip("/")
