"""TasksBackend against respx: exact paths and bodies, prefix fallback, idempotency."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import respx

from service.coder.base import CreatedWork, WorkSpec
from service.coder.client import CoderClient
from service.coder.tasks import TasksBackend, clip_display_name
from service.errors import Conflict, NotFound, PermanentError, RouteNotFound, TransientError

BASE = "https://coder.example.com"
TOKEN = "abcde12345-AbCdEfGhIjKlMnOpQrStUv"
TEMPLATE_ID = "11111111-1111-1111-1111-111111111111"
VERSION_ID = "22222222-2222-2222-2222-222222222222"
SMALL_ID = "33333333-3333-3333-3333-333333333333"
LARGE_ID = "44444444-4444-4444-4444-444444444444"
TASK_ID = "55555555-5555-5555-5555-555555555555"
ROUTE_NOT_FOUND = {"message": "Route not found."}
RESOURCE_NOT_FOUND = {"message": "Resource not found or you do not have access to this resource"}

SPEC = WorkSpec(
    delegation_key="github:octo/repo#42",
    name="cb-0123456789abcdef",
    prompt="Fix the flaky test in tests/test_io.py",
    display_name="octo/repo#42: Fix the flaky test",
    template="tasks-docker",
    preset="",
    organization="default",
)


def preset(preset_id: str, name: str, *, default: bool = False) -> dict[str, Any]:
    return {
        "ID": preset_id,
        "Name": name,
        "Parameters": [{"Name": "cpu", "Value": "4"}],
        "Default": default,
        "DesiredPrebuildInstances": None,
        "Description": "",
        "Icon": "",
    }


def task(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": TASK_ID,
        "organization_id": "o1",
        "owner_id": "u1",
        "owner_name": "alice",
        "name": SPEC.name,
        "display_name": SPEC.display_name,
        "template_version_id": VERSION_ID,
        "workspace_id": None,
        "initial_prompt": SPEC.prompt,
        "status": "pending",
        "current_state": None,
        "some_future_field": {"x": 1},
    }
    body.update(overrides)
    return body


EXPECTED = CreatedWork(
    kind="task",
    id=TASK_ID,
    url=f"{BASE}/tasks/alice/{TASK_ID}",
    owner_name="alice",
    status="pending",
)


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        yield router


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def cache() -> dict[str, str]:
    return {}


@pytest.fixture
def backend(http: httpx.AsyncClient, cache: dict[str, str]) -> TasksBackend:
    client = CoderClient(BASE, TOKEN, http=http, timeout=5.0)
    return TasksBackend(client, BASE + "/", prefix_cache=cache)


def serve_template(mock: respx.MockRouter, presets: list[dict[str, Any]]) -> None:
    mock.get("/api/v2/organizations/default/templates/tasks-docker").respond(
        200,
        json={"id": TEMPLATE_ID, "name": "tasks-docker", "active_version_id": VERSION_ID},
    )
    mock.get(f"/api/v2/templateversions/{VERSION_ID}/presets").respond(200, json=presets)


def calls(mock: respx.MockRouter) -> list[tuple[str, str]]:
    return [(c.request.method, c.request.url.path) for c in mock.calls]


def sent_body(mock: respx.MockRouter, path: str) -> Any:
    bodies = [json.loads(c.request.content) for c in mock.calls if c.request.url.path == path]
    assert len(bodies) == 1
    return bodies[0]


# --- create ------------------------------------------------------------------------------------


async def test_creates_with_the_preset_named_in_the_spec(
    mock: respx.MockRouter, backend: TasksBackend, cache: dict[str, str]
) -> None:
    serve_template(mock, [preset(SMALL_ID, "small", default=True), preset(LARGE_ID, "large")])
    mock.post("/api/v2/tasks/me").respond(201, json=task())

    assert await backend.ensure(_spec(preset="large"), may_exist=False) == EXPECTED

    assert calls(mock) == [
        ("GET", "/api/v2/organizations/default/templates/tasks-docker"),
        ("GET", f"/api/v2/templateversions/{VERSION_ID}/presets"),
        ("POST", "/api/v2/tasks/me"),
    ]
    assert sent_body(mock, "/api/v2/tasks/me") == {
        "template_version_id": VERSION_ID,
        "template_version_preset_id": LARGE_ID,
        "input": SPEC.prompt,
        "name": SPEC.name,
        "display_name": SPEC.display_name,
    }
    assert cache == {BASE: "/api/v2"}


async def test_empty_preset_takes_the_default_one(
    mock: respx.MockRouter, backend: TasksBackend
) -> None:
    serve_template(mock, [preset(SMALL_ID, "small"), preset(LARGE_ID, "large", default=True)])
    mock.post("/api/v2/tasks/me").respond(201, json=task())

    await backend.ensure(_spec(preset=""), may_exist=False)

    assert sent_body(mock, "/api/v2/tasks/me")["template_version_preset_id"] == LARGE_ID


@pytest.mark.parametrize("presets", [[], [preset(SMALL_ID, "small")]])
async def test_no_preset_key_without_a_default(
    mock: respx.MockRouter, backend: TasksBackend, presets: list[dict[str, Any]]
) -> None:
    serve_template(mock, presets)
    mock.post("/api/v2/tasks/me").respond(201, json=task())

    await backend.ensure(_spec(preset=""), may_exist=False)

    assert "template_version_preset_id" not in sent_body(mock, "/api/v2/tasks/me")


async def test_unknown_preset_is_permanent_and_lists_the_names(
    mock: respx.MockRouter, backend: TasksBackend
) -> None:
    serve_template(mock, [preset(SMALL_ID, "small"), preset(LARGE_ID, "Large")])
    create = mock.post("/api/v2/tasks/me").respond(201, json=task())

    with pytest.raises(PermanentError) as info:
        await backend.ensure(_spec(preset="large"), may_exist=False)

    assert info.value.message == (
        'preset "large" does not exist for template "tasks-docker"; '
        'available presets: "small", "Large"'
    )
    assert not create.called


async def test_unknown_preset_on_a_template_without_presets_says_none(
    mock: respx.MockRouter, backend: TasksBackend
) -> None:
    serve_template(mock, [])
    with pytest.raises(PermanentError, match="available presets: none"):
        await backend.ensure(_spec(preset="large"), may_exist=False)


async def test_no_template_configured_is_permanent_without_any_request(
    mock: respx.MockRouter, backend: TasksBackend
) -> None:
    with pytest.raises(PermanentError, match="no template configured"):
        await backend.ensure(_spec(template=" "), may_exist=True)
    assert calls(mock) == []


async def test_unknown_template_is_not_found_naming_template_and_org(
    mock: respx.MockRouter, backend: TasksBackend
) -> None:
    mock.get("/api/v2/organizations/eng/templates/tasks-docker").respond(
        404, json=RESOURCE_NOT_FOUND
    )
    with pytest.raises(NotFound) as info:
        await backend.ensure(_spec(organization="eng"), may_exist=False)
    assert '"tasks-docker"' in info.value.message
    assert '"eng"' in info.value.message


async def test_empty_organization_means_default(
    mock: respx.MockRouter, backend: TasksBackend
) -> None:
    serve_template(mock, [])
    mock.post("/api/v2/tasks/me").respond(201, json=task())
    assert await backend.ensure(_spec(organization=""), may_exist=False) == EXPECTED


async def test_display_name_is_clipped_to_64_bytes(
    mock: respx.MockRouter, backend: TasksBackend
) -> None:
    serve_template(mock, [])
    mock.post("/api/v2/tasks/me").respond(201, json=task())

    await backend.ensure(_spec(display_name="  " + "é" * 40 + "  "), may_exist=False)

    sent = sent_body(mock, "/api/v2/tasks/me")["display_name"]
    assert sent == "é" * 32
    assert len(sent.encode()) == 64


def test_clip_display_name_keeps_short_ascii_and_never_splits_characters() -> None:
    assert clip_display_name("Fix it") == "Fix it"
    assert clip_display_name("a" * 70) == "a" * 64
    assert clip_display_name("a" * 63 + "€") == "a" * 63


async def test_empty_display_name_is_left_out(
    mock: respx.MockRouter, backend: TasksBackend
) -> None:
    serve_template(mock, [])
    mock.post("/api/v2/tasks/me").respond(201, json=task())
    await backend.ensure(_spec(display_name=""), may_exist=False)
    assert "display_name" not in sent_body(mock, "/api/v2/tasks/me")


async def test_created_task_without_owner_name_is_a_clear_error(
    mock: respx.MockRouter, backend: TasksBackend
) -> None:
    serve_template(mock, [])
    mock.post("/api/v2/tasks/me").respond(201, json={"id": TASK_ID, "status": "pending"})
    with pytest.raises(PermanentError, match="lacks its id or owner name"):
        await backend.ensure(SPEC, may_exist=False)


async def test_missing_status_reads_unknown(mock: respx.MockRouter, backend: TasksBackend) -> None:
    serve_template(mock, [])
    body = task()
    del body["status"], body["current_state"], body["workspace_id"]
    mock.post("/api/v2/tasks/me").respond(201, json=body)
    work = await backend.ensure(SPEC, may_exist=False)
    assert work.status == "unknown"


# --- prefixes -----------------------------------------------------------------------------------


async def test_falls_back_to_experimental_and_remembers_it(
    mock: respx.MockRouter, http: httpx.AsyncClient, backend: TasksBackend, cache: dict[str, str]
) -> None:
    serve_template(mock, [])
    mock.post("/api/v2/tasks/me").respond(404, json=ROUTE_NOT_FOUND)
    mock.post("/api/experimental/tasks/me").respond(201, json=task())

    assert await backend.ensure(SPEC, may_exist=False) == EXPECTED
    assert cache == {BASE: "/api/experimental"}

    other = TasksBackend(CoderClient(BASE, TOKEN, http=http, timeout=5.0), BASE, prefix_cache=cache)
    mock.reset()
    await other.ensure(SPEC, may_exist=False)
    assert ("POST", "/api/v2/tasks/me") not in calls(mock)
    assert calls(mock)[-1] == ("POST", "/api/experimental/tasks/me")
    assert sent_body(mock, "/api/experimental/tasks/me")["name"] == SPEC.name


async def test_a_stale_cached_prefix_is_rechecked(
    mock: respx.MockRouter, backend: TasksBackend, cache: dict[str, str]
) -> None:
    cache[BASE] = "/api/experimental"
    mock.get(f"/api/experimental/tasks/me/{SPEC.name}").respond(404, json=ROUTE_NOT_FOUND)
    mock.get(f"/api/v2/tasks/me/{SPEC.name}").respond(200, json=task())

    assert await backend.ensure(SPEC, may_exist=True) == EXPECTED
    assert cache == {BASE: "/api/v2"}


async def test_no_tasks_api_on_either_prefix_is_route_not_found(
    mock: respx.MockRouter, backend: TasksBackend, cache: dict[str, str]
) -> None:
    cache[BASE] = "/api/v2"
    serve_template(mock, [])
    mock.post("/api/v2/tasks/me").respond(404, json=ROUTE_NOT_FOUND)
    mock.post("/api/experimental/tasks/me").respond(404, json=ROUTE_NOT_FOUND)

    with pytest.raises(RouteNotFound, match="does not serve the Tasks API"):
        await backend.ensure(SPEC, may_exist=False)
    assert cache == {}


async def test_an_object_404_never_switches_prefix(
    mock: respx.MockRouter, backend: TasksBackend, cache: dict[str, str]
) -> None:
    mock.get(f"/api/v2/tasks/me/{SPEC.name}").respond(404, json=RESOURCE_NOT_FOUND)
    serve_template(mock, [])
    mock.post("/api/v2/tasks/me").respond(201, json=task())

    await backend.ensure(SPEC, may_exist=True)

    assert not any(path.startswith("/api/experimental") for _, path in calls(mock))
    assert cache == {BASE: "/api/v2"}


# --- idempotency --------------------------------------------------------------------------------


async def test_may_exist_returns_the_task_found_by_name_without_creating(
    mock: respx.MockRouter, backend: TasksBackend
) -> None:
    mock.get(f"/api/v2/tasks/me/{SPEC.name}").respond(200, json=task(status="active"))

    work = await backend.ensure(SPEC, may_exist=True)

    assert work.status == "active"
    assert calls(mock) == [("GET", f"/api/v2/tasks/me/{SPEC.name}")]


async def test_may_exist_creates_when_the_name_is_free(
    mock: respx.MockRouter, backend: TasksBackend
) -> None:
    mock.get(f"/api/v2/tasks/me/{SPEC.name}").respond(404, json=RESOURCE_NOT_FOUND)
    serve_template(mock, [])
    mock.post("/api/v2/tasks/me").respond(201, json=task())

    assert await backend.ensure(SPEC, may_exist=True) == EXPECTED
    assert calls(mock)[0] == ("GET", f"/api/v2/tasks/me/{SPEC.name}")
    assert calls(mock)[-1] == ("POST", "/api/v2/tasks/me")


async def test_without_may_exist_no_lookup_happens_first(
    mock: respx.MockRouter, backend: TasksBackend
) -> None:
    serve_template(mock, [])
    mock.post("/api/v2/tasks/me").respond(201, json=task())
    await backend.ensure(SPEC, may_exist=False)
    assert calls(mock)[0][1].startswith("/api/v2/organizations/")


CONFLICT = {
    "message": f'Workspace "{SPEC.name}" already exists.',
    "validations": [
        {"field": "name", "detail": "This value is already in use and should be unique."}
    ],
}


async def test_name_conflict_adopts_the_existing_task(
    mock: respx.MockRouter, backend: TasksBackend
) -> None:
    serve_template(mock, [])
    mock.post("/api/v2/tasks/me").respond(409, json=CONFLICT)
    mock.get(f"/api/v2/tasks/me/{SPEC.name}").respond(200, json=task(status="initializing"))

    work = await backend.ensure(SPEC, may_exist=False)

    assert work == CreatedWork("task", TASK_ID, EXPECTED.url, "alice", "initializing")
    assert calls(mock)[-2:] == [
        ("POST", "/api/v2/tasks/me"),
        ("GET", f"/api/v2/tasks/me/{SPEC.name}"),
    ]


async def test_conflict_with_a_plain_workspace_is_a_clear_conflict(
    mock: respx.MockRouter, backend: TasksBackend
) -> None:
    serve_template(mock, [])
    mock.post("/api/v2/tasks/me").respond(409, json=CONFLICT)
    mock.get(f"/api/v2/tasks/me/{SPEC.name}").respond(404, json=RESOURCE_NOT_FOUND)

    with pytest.raises(Conflict, match="is not a task"):
        await backend.ensure(SPEC, may_exist=False)


async def test_transient_failure_on_create_propagates(
    mock: respx.MockRouter, backend: TasksBackend
) -> None:
    serve_template(mock, [])
    mock.post("/api/v2/tasks/me").respond(502, json={"message": "Bad Gateway."})
    with pytest.raises(TransientError):
        await backend.ensure(SPEC, may_exist=False)


async def test_task_name_is_quoted_as_one_path_segment(
    mock: respx.MockRouter, backend: TasksBackend
) -> None:
    route = mock.get("/api/v2/tasks/me/a%2Fb").respond(200, json=task())
    await backend.ensure(_spec(name="a/b"), may_exist=True)
    assert route.called


# --- is_active ----------------------------------------------------------------------------------

WORK = CreatedWork("task", TASK_ID, f"{BASE}/tasks/alice/{TASK_ID}", "alice", "pending")


@pytest.mark.parametrize(
    ("status", "state", "active"),
    [
        ("pending", None, True),
        ("initializing", {"state": "working", "message": "Workspace is starting"}, True),
        ("active", {"state": "idle"}, True),
        ("unknown", None, True),
        ("something-new", None, True),
        ("paused", None, False),
        ("error", None, False),
        ("active", {"state": "complete"}, False),
        ("active", {"state": "failed"}, False),
        ("active", {"state": "failure"}, False),
    ],
)
async def test_is_active_reads_status_and_state(
    mock: respx.MockRouter,
    backend: TasksBackend,
    status: str,
    state: dict[str, str] | None,
    active: bool,
) -> None:
    mock.get(f"/api/v2/tasks/alice/{TASK_ID}").respond(
        200, json=task(status=status, current_state=state)
    )
    assert await backend.is_active(WORK) is active


async def test_a_deleted_task_is_not_active(mock: respx.MockRouter, backend: TasksBackend) -> None:
    mock.get(f"/api/v2/tasks/alice/{TASK_ID}").respond(404, json=RESOURCE_NOT_FOUND)
    assert await backend.is_active(WORK) is False


async def test_is_active_uses_the_experimental_prefix_when_needed(
    mock: respx.MockRouter, backend: TasksBackend
) -> None:
    mock.get(f"/api/v2/tasks/alice/{TASK_ID}").respond(404, json=ROUTE_NOT_FOUND)
    mock.get(f"/api/experimental/tasks/alice/{TASK_ID}").respond(200, json=task(status="paused"))
    assert await backend.is_active(WORK) is False


def _spec(**changes: str) -> WorkSpec:
    values = {**SPEC.__dict__, **changes}
    return WorkSpec(**values)


# --- a template updated while its version is remembered ----------------------------------------

NEW_VERSION_ID = "66666666-6666-6666-6666-666666666666"
VERSION_GONE = {"message": "Template version not found or you do not have access to this "
                           "resource"}


async def test_a_remembered_version_that_is_gone_is_looked_up_again_once(
    mock: respx.MockRouter, backend: TasksBackend
) -> None:
    """The template is updated in Coder (its old version archived) within the minute the
    bridge remembers the version: the create answers 400, the bridge forgets the version,
    reads the template again and creates with the new version."""
    serve_template(mock, [])
    mock.post("/api/v2/tasks/me").respond(201, json=task())
    await backend.ensure(SPEC, may_exist=False)  # the version is remembered

    mock.get("/api/v2/organizations/default/templates/tasks-docker").respond(
        200, json={"id": TEMPLATE_ID, "name": "tasks-docker",
                   "active_version_id": NEW_VERSION_ID})
    mock.get(f"/api/v2/templateversions/{NEW_VERSION_ID}/presets").respond(200, json=[])

    def create(request: httpx.Request) -> httpx.Response:
        version = json.loads(request.content)["template_version_id"]
        if version == VERSION_ID:
            return httpx.Response(400, json=VERSION_GONE)
        return httpx.Response(201, json=task(template_version_id=version))

    mock.post("/api/v2/tasks/me").mock(side_effect=create)
    mock.reset()
    assert await backend.ensure(SPEC, may_exist=False) == EXPECTED
    assert calls(mock) == [
        ("POST", "/api/v2/tasks/me"),
        ("GET", "/api/v2/organizations/default/templates/tasks-docker"),
        ("GET", f"/api/v2/templateversions/{NEW_VERSION_ID}/presets"),
        ("POST", "/api/v2/tasks/me"),
    ]


async def test_a_400_with_the_current_version_is_not_retried(
    mock: respx.MockRouter, backend: TasksBackend
) -> None:
    serve_template(mock, [])
    mock.post("/api/v2/tasks/me").respond(201, json=task())
    await backend.ensure(SPEC, may_exist=False)
    mock.post("/api/v2/tasks/me").respond(
        400, json={"message": 'Template does not have a valid "coder_ai_task" resource.'})
    mock.reset()
    with pytest.raises(PermanentError) as caught:
        await backend.ensure(SPEC, may_exist=False)
    assert caught.value.status == 400
    assert [c for c in calls(mock) if c[0] == "POST"] == [("POST", "/api/v2/tasks/me")]
