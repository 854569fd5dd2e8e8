"""API detection against every FakeCoder generation, the cache, re-detection and describe()."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import respx

from service.coder.base import WorkSpec
from service.coder.client import CoderClient
from service.coder.detect import (
    ApiChoice,
    ApiDetector,
    Detected,
    DetectingBackend,
    backend_factory,
    describe,
)
from service.config import CoderConfig
from service.errors import PermanentError, RouteNotFound, TokenRejected, TransientError
from tests.fakes.coder import MODES, FakeCoder, ModeSpec
from tests.fakes.server import serve_in_thread

SPEC = WorkSpec(
    delegation_key="github:186853002:1#1",
    name="cb-0123456789abcdef",
    prompt="Fix the flaky test",
    display_name="octo/repo#1: Fix the flaky test",
    template="",
    preset="",
    organization="default",
)
ROUTE_NOT_FOUND = {"message": "Route not found."}


class Served:
    """A running fake with alice and a task-capable template."""

    def __init__(self, fake: FakeCoder, url: str, token: str) -> None:
        self.fake, self.url, self.token = fake, url, token

    def probes(self) -> list[str]:
        """Paths requested so far (no query strings)."""
        return [path for _, path in self.fake.requests]


@contextmanager
def serving(mode: str, *, version: str | None = None) -> Iterator[Served]:
    fake = FakeCoder(mode=mode, version=version)
    token = fake.add_user("alice")
    fake.add_template("default", "tasks-docker", presets=[{"Name": "small", "Default": True}])
    with serve_in_thread(fake.app()) as url:
        yield Served(fake, url, token)


def is_tasks_route(path: str) -> bool:
    return path.startswith(("/api/v2/tasks", "/api/experimental/tasks"))


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def client_for(s: Served, http: httpx.AsyncClient, token: str | None = None) -> CoderClient:
    return CoderClient(s.url, token or s.token, http=http, timeout=5.0)


def factory_for(
    s: Served, http: httpx.AsyncClient, detector: ApiDetector, api: ApiChoice = "auto"
) -> DetectingBackend:
    config = CoderConfig(url=s.url, api=api, template="")
    backend = backend_factory(config, http, detector, sleep=_no_wait)(s.token)
    assert isinstance(backend, DetectingBackend)
    return backend


# --- automatic detection per server generation -------------------------------------------------

TASK_PROBES = ["/api/v2/tasks", "/api/experimental/tasks"]


@pytest.mark.parametrize(
    ("mode", "expected", "probes"),
    [
        (
            "tasks-experimental",
            Detected("tasks", "/api/experimental", "v2.28.3"),
            ["/api/v2/buildinfo", *TASK_PROBES],
        ),
        ("tasks-gated", Detected("tasks", "/api/v2", "v2.32.0"), ["/api/v2/buildinfo"]),
        ("tasks", Detected("tasks", "/api/v2", "v2.36.1"), ["/api/v2/buildinfo"]),
        ("both", Detected("chats", "/api/v2", "v2.37.2"), ["/api/v2/buildinfo"]),
        ("chats", Detected("chats", "/api/v2", "v2.38.0"), ["/api/v2/buildinfo"]),
    ],
)
async def test_auto_detection_per_mode(
    http: httpx.AsyncClient, mode: str, expected: Detected, probes: list[str]
) -> None:
    with serving(mode) as s:
        detected = await ApiDetector().detect(client_for(s, http))
        assert detected == expected
        if mode in ("tasks-gated", "tasks"):
            probes = [*probes, "/api/v2/tasks"]
        if mode in ("both", "chats"):  # v2.37+: no Tasks probe at all
            probes = [*probes, "/api/v2/chats"]
        assert s.probes() == probes


async def test_a_dev_build_is_probed_in_full(http: httpx.AsyncClient) -> None:
    with serving("chats", version="v2.38.0-devel+abc123") as s:
        detected = await ApiDetector().detect(client_for(s, http))
        assert detected == Detected("chats", "/api/v2", "v2.38.0-devel+abc123")
        assert s.probes() == ["/api/v2/buildinfo", *TASK_PROBES, "/api/v2/chats"]


async def test_a_dev_build_that_still_serves_tasks_gets_tasks(http: httpx.AsyncClient) -> None:
    with serving("tasks", version="v2.37.0-devel+abc123") as s:
        assert await ApiDetector().detect(client_for(s, http)) == Detected(
            "tasks", "/api/v2", "v2.37.0-devel+abc123"
        )


# --- forced choices ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "api", "expected"),
    [
        ("tasks", "chats", Detected("chats", "/api/experimental", "v2.36.1")),
        ("both", "chats", Detected("chats", "/api/v2", "v2.37.2")),
        ("tasks-experimental", "tasks", Detected("tasks", "/api/experimental", "v2.28.3")),
        ("tasks", "tasks", Detected("tasks", "/api/v2", "v2.36.1")),
    ],
)
async def test_forced_api_finds_its_base(
    http: httpx.AsyncClient, mode: str, api: ApiChoice, expected: Detected
) -> None:
    with serving(mode) as s:
        assert await ApiDetector().detect(client_for(s, http), api=api) == expected
        other = "/tasks" if api == "chats" else "/chats"
        assert not any(p.endswith(other) for p in s.probes())


async def test_forced_tasks_on_a_chats_server_is_permanent(http: httpx.AsyncClient) -> None:
    with serving("both") as s, pytest.raises(PermanentError, match=r"coder.api is set to tasks"):
        await ApiDetector().detect(client_for(s, http), api="tasks")


async def test_forced_chats_on_a_tasks_only_server_is_permanent(http: httpx.AsyncClient) -> None:
    with (
        serving("tasks-experimental") as s,
        pytest.raises(PermanentError, match=r"coder.api is set to chats"),
    ):
        await ApiDetector().detect(client_for(s, http), api="chats")


# --- neither, gates, guards --------------------------------------------------------------------


async def test_neither_api_with_chats_switched_off(
    http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    off = ModeSpec("v2.32.0", {"core": ("/api/v2",), "chats": ("/api/experimental",)}, ("chats",))
    monkeypatch.setitem(MODES, "all-off", off)
    with serving("all-off") as s:
        with pytest.raises(PermanentError) as caught:
            await ApiDetector().detect(client_for(s, http))
        assert caught.value.message.startswith("this Coder server offers neither Tasks nor Chats")
        assert "'agents' experiment" in caught.value.message
        s.fake.enable_experiment("agents")
        assert await ApiDetector().detect(client_for(s, http)) == Detected(
            "chats", "/api/experimental", "v2.32.0"
        )


async def test_neither_api_at_all(http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(MODES, "bare", ModeSpec("v2.30.0", {"core": ("/api/v2",)}))
    with serving("bare") as s, pytest.raises(PermanentError) as caught:
        await ApiDetector().detect(client_for(s, http))
    assert caught.value.message == "this Coder server offers neither Tasks nor Chats"


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url="https://coder.example.com", assert_all_called=False) as router:
        yield router


def no_tasks(mock: respx.MockRouter, version: str | None) -> None:
    if version is None:
        mock.get("/api/v2/buildinfo").respond(404, json=ROUTE_NOT_FOUND)
    else:
        mock.get("/api/v2/buildinfo").respond(200, json={"version": version})
    mock.get("/api/v2/tasks").respond(404, json=ROUTE_NOT_FOUND)
    mock.get("/api/experimental/tasks").respond(404, json=ROUTE_NOT_FOUND)


PROTOTYPE: list[dict[str, Any]] = [
    {"id": "c1", "model_config": {}, "workspace_agent_id": None, "title": "x"}
]
CURRENT: list[dict[str, Any]] = [
    {"id": "c1", "last_model_config_id": "m1", "archived": False, "status": "waiting"}
]


@pytest.mark.parametrize(
    ("version", "v2_items", "experimental", "expected"),
    [
        ("v2.30.0", PROTOTYPE, 404, None),  # the prototype is never trusted
        ("v2.30.0", PROTOTYPE, 200, Detected("chats", "/api/experimental", "v2.30.0")),
        ("v2.30.0", [], 200, Detected("chats", "/api/experimental", "v2.30.0")),
        ("v2.30.0", CURRENT, 404, Detected("chats", "/api/v2", "v2.30.0")),  # backport
        (None, [], 404, Detected("chats", "/api/v2", None)),
        (None, PROTOTYPE, 404, None),
    ],
)
async def test_the_v2_chats_prototype_guard(
    mock: respx.MockRouter,
    http: httpx.AsyncClient,
    version: str | None,
    v2_items: list[dict[str, Any]],
    experimental: int,
    expected: Detected | None,
) -> None:
    no_tasks(mock, version)
    mock.get("/api/v2/chats").respond(200, json=v2_items)
    if experimental == 200:
        mock.get("/api/experimental/chats").respond(200, json=[])
    else:
        mock.get("/api/experimental/chats").respond(404, json=ROUTE_NOT_FOUND)
    client = CoderClient("https://coder.example.com", "t", http=http, timeout=5.0)
    if expected is None:
        with pytest.raises(PermanentError, match="neither Tasks nor Chats"):
            await ApiDetector().detect(client)
    else:
        assert await ApiDetector().detect(client) == expected


async def test_a_bad_token_stops_detection_and_nothing_is_cached(http: httpx.AsyncClient) -> None:
    detector = ApiDetector()
    with serving("chats") as s:
        bad = s.fake.add_token("alice")
        s.fake.revoke_token(bad)
        with pytest.raises(TokenRejected):
            await detector.detect(client_for(s, http, bad))
        assert detector.cached(s.url) is None


async def test_a_transient_buildinfo_failure_propagates(http: httpx.AsyncClient) -> None:
    detector = ApiDetector()
    with serving("chats") as s:
        s.fake.fail_next("buildinfo", 503)
        with pytest.raises(TransientError):
            await detector.detect(client_for(s, http))
        assert detector.cached(s.url) is None
        assert (await detector.detect(client_for(s, http))).api == "chats"


# --- cache -------------------------------------------------------------------------------------


async def test_a_cache_hit_makes_no_probe(http: httpx.AsyncClient) -> None:
    detector = ApiDetector()
    with serving("tasks-experimental") as s:
        first = await detector.detect(client_for(s, http))
        before = len(s.fake.requests)
        second = await detector.detect(client_for(s, http, s.fake.add_token("alice")))
        assert first == second
        assert len(s.fake.requests) == before
        assert detector.cached(s.url + "/") == first
        detector.invalidate(s.url)
        assert detector.cached(s.url) is None


async def test_concurrent_detections_probe_once(http: httpx.AsyncClient) -> None:
    detector = ApiDetector()
    with serving("both") as s:
        results = await asyncio.gather(*(detector.detect(client_for(s, http)) for _ in range(5)))
        assert len(set(results)) == 1
        assert s.probes().count("/api/v2/buildinfo") == 1


async def test_choices_are_cached_separately(http: httpx.AsyncClient) -> None:
    detector = ApiDetector()
    with serving("tasks") as s:
        assert (await detector.detect(client_for(s, http))).api == "tasks"
        assert (await detector.detect(client_for(s, http), api="chats")).api == "chats"


# --- DetectingBackend: the worker's view -------------------------------------------------------


async def test_backend_creates_a_task_or_a_chat_as_detected(http: httpx.AsyncClient) -> None:
    for mode, kind in (("tasks", "task"), ("both", "chat"), ("chats", "chat")):
        with serving(mode) as s:
            backend = factory_for(s, http, ApiDetector())
            spec = SPEC if kind == "chat" else _with(template="tasks-docker")
            work = await backend.ensure(spec, may_exist=False)
            assert work.kind == kind
            assert await backend.is_active(work) is True
            if kind == "chat":
                assert work.url == f"{s.url}/agents/{work.id}"
                assert not any(is_tasks_route(p) for p in s.probes())


async def test_an_upgrade_under_us_is_detected_again_and_the_call_retried(
    http: httpx.AsyncClient,
) -> None:
    detector = ApiDetector()
    with serving("tasks") as s:
        backend = factory_for(s, http, detector)
        task = await backend.ensure(_with(template="tasks-docker"), may_exist=False)
        assert task.kind == "task"

        s.fake.set_mode("chats")  # upgraded to v2.38: Tasks routes now answer Route not found.
        s.fake.configure_workspaces(auto_advance_after=1)
        mark = len(s.fake.requests)
        second = _with(
            delegation_key="github:186853002:1#2",
            name="cb-0123456789abcde2",
            template="tasks-docker",
        )
        chat = await backend.ensure(second, may_exist=False)

        assert chat.kind == "chat"
        assert detector.cached(s.url) == Detected("chats", "/api/v2", "v2.38.0")
        after = s.probes()[mark:]
        first_chat_probe = after.index("/api/v2/buildinfo")
        assert "/api/v2/tasks/me" in after[:first_chat_probe]  # the call that hit the upgrade
        assert not any(is_tasks_route(p) for p in after[first_chat_probe:])
        assert len(s.fake.chats_of("alice")) == 1

        mark = len(s.fake.requests)
        assert await backend.is_active(task) is False  # its API is gone; no Tasks route called
        assert not any(is_tasks_route(p) for p in s.probes()[mark:])


async def test_is_active_redetects_when_the_chat_base_moves(http: httpx.AsyncClient) -> None:
    detector = ApiDetector()
    with serving("tasks") as s:
        backend = factory_for(s, http, detector, api="chats")
        work = await backend.ensure(SPEC, may_exist=False)
        assert detector.cached(s.url, "chats") == Detected("chats", "/api/experimental", "v2.36.1")
        s.fake.set_mode("chats")  # /api/experimental/chats is gone
        assert await backend.is_active(work) is True
        assert detector.cached(s.url, "chats") == Detected("chats", "/api/v2", "v2.38.0")


async def test_a_chat_is_asked_about_even_where_tasks_are_preferred(
    http: httpx.AsyncClient,
) -> None:
    detector = ApiDetector()
    with serving("tasks") as s:
        work = await factory_for(s, http, detector, api="chats").ensure(SPEC, may_exist=False)
        auto = factory_for(s, http, detector)
        assert await auto.is_active(work) is True
        s.fake.set_chat_state(work.id, "error", last_error="boom")
        assert await auto.is_active(work) is False


async def test_a_second_route_not_found_is_permanent_in_words(http: httpx.AsyncClient) -> None:
    detector = ApiDetector()
    with serving("chats") as s:
        backend = factory_for(s, http, detector)
        s.fake.fail_next("create_chat", 404, {"message": "Route not found."}, times=2)
        with pytest.raises(RouteNotFound, match="again after the bridge re-checked"):
            await backend.ensure(SPEC, may_exist=False)
        assert s.fake.chats == []
        assert s.probes().count("/api/v2/buildinfo") == 2


async def test_the_factory_uses_the_configured_build_timeout(http: httpx.AsyncClient) -> None:
    slept: list[float] = []
    now = [0.0]

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    with serving("chats") as s:
        config = CoderConfig(url=s.url, api="auto")
        backend = backend_factory(config, http, ApiDetector(), sleep=sleep, clock=lambda: now[0])
        with pytest.raises(PermanentError, match="not running after 10 minutes"):
            await backend(s.token).ensure(_with(template="tasks-docker"), may_exist=False)
        assert sum(slept) == pytest.approx(600.0)
        assert s.fake.chats == []


# --- describe (check-config --online) ----------------------------------------------------------


async def test_describe_with_a_token_probes(http: httpx.AsyncClient) -> None:
    with serving("both") as s:
        text = await describe(CoderConfig(url=s.url + "/"), http, s.token)
        assert text == (
            f"Coder v2.37.2 at {s.url} offers the Chats API at /api/v2/chats (found by probing)"
        )
        forced = await describe(CoderConfig(url=s.url, api="chats"), http, s.token)
        assert forced.endswith("offers the Chats API at /api/v2/chats (coder.api = chats)")


@pytest.mark.parametrize(
    ("mode", "version", "guess"),
    [
        ("tasks-experimental", None, "the Tasks API at /api/experimental/tasks"),
        ("tasks", None, "the Tasks API at /api/v2/tasks"),
        ("chats", None, "the Chats API at /api/v2/chats"),
        ("chats", "v2.38.0-devel+abc", "an API that cannot be told from the version"),
    ],
)
async def test_describe_without_a_token_reads_buildinfo_only(
    http: httpx.AsyncClient, mode: str, version: str | None, guess: str
) -> None:
    with serving(mode, version=version) as s:
        text = await describe(CoderConfig(url=s.url), http, None)
        assert "no user token was available, so the API was not probed" in text
        assert guess in text
        assert s.probes() == ["/api/v2/buildinfo"]


async def test_describe_reports_neither(
    http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(MODES, "bare", ModeSpec("v2.30.0", {"core": ("/api/v2",)}))
    with serving("bare") as s, pytest.raises(PermanentError, match="neither Tasks nor Chats"):
        await describe(CoderConfig(url=s.url), http, s.token)


async def _no_wait(seconds: float) -> None:
    """The workspace poll's sleep in tests: return at once."""


def _with(**changes: str) -> WorkSpec:
    fields = dict(SPEC.__dict__)
    fields.update(changes)
    return WorkSpec(**fields)
