"""ChatsBackend and WorkspaceCreator: exact requests (respx), then end to end against FakeCoder.

The fake part also checks the fake's own Chats and workspace routes on the wire.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import respx

from service.coder.base import CreatedWork, WorkSpec
from service.coder.chats import (
    LABEL_DELEGATION,
    ChatsBackend,
    delegation_label_value,
    delegation_labels,
)
from service.coder.client import CoderClient
from service.coder.workspaces import WorkspaceCreator
from service.errors import NotFound, PermanentError, TokenRejected, TransientError
from tests.fakes.coder import FakeCoder, FakeTemplate
from tests.fakes.server import serve_in_thread

BASE = "https://coder.example.com"
TOKEN = "abcde12345-AbCdEfGhIjKlMnOpQrStUv"
ORG_ID = "0a0a0a0a-0000-4000-8000-000000000001"
CHAT_ID = "c0c0c0c0-0000-4000-8000-000000000001"
TEMPLATE_ID = "11111111-1111-1111-1111-111111111111"
VERSION_ID = "22222222-2222-2222-2222-222222222222"
LARGE_ID = "44444444-4444-4444-4444-444444444444"
WORKSPACE_ID = "77777777-7777-7777-7777-777777777777"
CREATED = "2026-09-02T10:00:00Z"
RESOURCE_NOT_FOUND = {"message": "Resource not found or you do not have access to this resource"}

SPEC = WorkSpec(
    delegation_key="github:186853002:1#1",
    name="cb-0123456789abcdef",
    prompt="Fix the flaky test in tests/test_io.py",
    display_name="octo/repo#1: Fix the flaky test",
    template="",
    preset="",
    organization="default",
)
LABEL = delegation_label_value(SPEC.delegation_key)


class FakeTime:
    """An injected clock and sleep: sleeping advances the clock at once."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


def chat_body(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": CHAT_ID,
        "organization_id": ORG_ID,
        "owner_id": "u1",
        "owner_username": "alice",
        "title": "Fix the flaky test in tests/test_io.py",
        "status": "running",
        "created_at": CREATED,
        "updated_at": CREATED,
        "archived": False,
        "labels": delegation_labels(SPEC.delegation_key),
        "last_model_config_id": "m1",
        "mcp_server_ids": [],
        "children": [],
    }
    body.update(fields)
    return body


# --- respx: exact requests ---------------------------------------------------------------------


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        yield router


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def clock() -> FakeTime:
    return FakeTime()


def make_backend(
    http: httpx.AsyncClient,
    clock: FakeTime,
    *,
    url: str = BASE,
    base: str = "/api/v2",
    now: datetime | None = None,
) -> ChatsBackend:
    client = CoderClient(url, TOKEN, http=http, timeout=5.0)
    workspaces = WorkspaceCreator(client, sleep=clock.sleep, clock=clock.clock)
    when = now or datetime(2026, 9, 2, 10, 0, 5, tzinfo=UTC)
    return ChatsBackend(client, url + "/", base=base, workspaces=workspaces, now=lambda: when)


@pytest.fixture
def backend(http: httpx.AsyncClient, clock: FakeTime) -> ChatsBackend:
    return make_backend(http, clock)


def serve_lookup(
    mock: respx.MockRouter,
    *,
    live: list[dict[str, Any]] | None = None,
    archived: list[dict[str, Any]] | None = None,
    base: str = "/api/v2",
) -> respx.Route:
    def answer(request: httpx.Request) -> httpx.Response:
        wanted = request.url.params.get("q") == "archived:true"
        return httpx.Response(200, json=(archived if wanted else live) or [])

    return mock.get(f"{base}/chats").mock(side_effect=answer)


def serve_org(mock: respx.MockRouter) -> None:
    mock.get("/api/v2/organizations/default").respond(200, json={"id": ORG_ID, "name": "default"})


def calls(mock: respx.MockRouter) -> list[tuple[str, str]]:
    return [(c.request.method, c.request.url.path) for c in mock.calls]


def sent(mock: respx.MockRouter, method: str, path: str) -> Any:
    [body] = [
        json.loads(c.request.content)
        for c in mock.calls
        if (c.request.method, c.request.url.path) == (method, path)
    ]
    return body


async def test_creates_with_organization_content_and_labels(
    mock: respx.MockRouter, backend: ChatsBackend
) -> None:
    lookup = serve_lookup(mock)
    serve_org(mock)
    mock.post("/api/v2/chats").respond(201, json=chat_body(extra_field=1))

    work = await backend.ensure(SPEC, may_exist=False)

    assert work == CreatedWork("chat", CHAT_ID, f"{BASE}/agents/{CHAT_ID}", "alice", "running")
    assert sent(mock, "POST", "/api/v2/chats") == {
        "organization_id": ORG_ID,
        "content": [{"type": "text", "text": SPEC.prompt}],
        "labels": {
            "coder-bridge": "true",
            "coder-bridge/delegation": LABEL,
            "coder-bridge/key": "github:186853002:1#1",
        },
    }
    assert calls(mock) == [
        ("GET", "/api/v2/chats"),
        ("GET", "/api/v2/chats"),
        ("GET", "/api/v2/organizations/default"),
        ("POST", "/api/v2/chats"),
    ]
    first, second = (dict(c.request.url.params.multi_items()) for c in lookup.calls)
    assert first == {"label": f"{LABEL_DELEGATION}:{LABEL}", "limit": "25"}
    assert second == {**first, "q": "archived:true"}


async def test_lookup_comes_first_even_without_may_exist(
    mock: respx.MockRouter, backend: ChatsBackend
) -> None:
    serve_lookup(mock, live=[chat_body(status="waiting")])
    work = await backend.ensure(SPEC, may_exist=False)
    assert (work.id, work.status) == (CHAT_ID, "waiting")
    assert calls(mock) == [("GET", "/api/v2/chats")]


async def test_an_archived_chat_of_the_delegation_is_reused(
    mock: respx.MockRouter, backend: ChatsBackend
) -> None:
    serve_lookup(mock, archived=[chat_body(archived=True, status="waiting")])
    work = await backend.ensure(SPEC, may_exist=True)
    assert work.id == CHAT_ID
    assert ("POST", "/api/v2/chats") not in calls(mock)


async def test_lookup_rechecks_labels_and_takes_the_oldest(
    mock: respx.MockRouter, backend: ChatsBackend
) -> None:
    stranger = chat_body(id="c0c0c0c0-0000-4000-8000-00000000000f", labels={})
    newer = chat_body(id="c0c0c0c0-0000-4000-8000-000000000002", created_at="2026-09-03T00:00:00Z")
    serve_lookup(mock, live=[stranger, newer, chat_body(), {"no": "id"}])
    work = await backend.ensure(SPEC, may_exist=True)
    assert work.id == CHAT_ID


async def test_a_server_ignoring_the_label_filter_cannot_make_us_adopt_a_stranger(
    mock: respx.MockRouter, backend: ChatsBackend
) -> None:
    serve_lookup(mock, live=[chat_body(id="c0c0c0c0-0000-4000-8000-00000000000f", labels={})])
    serve_org(mock)
    mock.post("/api/v2/chats").respond(201, json=chat_body())
    assert (await backend.ensure(SPEC, may_exist=True)).id == CHAT_ID


async def test_a_list_that_is_not_an_array_stops_before_creating(
    mock: respx.MockRouter, backend: ChatsBackend
) -> None:
    mock.get("/api/v2/chats").respond(200, json={"chats": []})
    with pytest.raises(PermanentError, match="not a JSON array"):
        await backend.ensure(SPEC, may_exist=False)
    assert ("POST", "/api/v2/chats") not in calls(mock)


async def test_experimental_base_is_used_for_every_chat_route(
    mock: respx.MockRouter, http: httpx.AsyncClient, clock: FakeTime
) -> None:
    serve_lookup(mock, base="/api/experimental")
    serve_org(mock)
    mock.post("/api/experimental/chats").respond(201, json=chat_body(status="pending"))
    backend = make_backend(http, clock, base="/api/experimental")
    work = await backend.ensure(SPEC, may_exist=False)
    assert work.status == "pending"
    assert {p for _, p in calls(mock)} == {
        "/api/experimental/chats",
        "/api/v2/organizations/default",
    }


async def test_an_organization_uuid_is_resolved_too(
    mock: respx.MockRouter, backend: ChatsBackend
) -> None:
    serve_lookup(mock)
    mock.get(f"/api/v2/organizations/{ORG_ID}").respond(200, json={"id": ORG_ID})
    mock.post("/api/v2/chats").respond(201, json=chat_body())
    await backend.ensure(_spec(organization=ORG_ID), may_exist=False)
    assert sent(mock, "POST", "/api/v2/chats")["organization_id"] == ORG_ID


async def test_empty_organization_takes_the_users_only_one(
    mock: respx.MockRouter, backend: ChatsBackend
) -> None:
    serve_lookup(mock)
    mock.get("/api/v2/users/me").respond(
        200, json={"id": "u1", "username": "alice", "organization_ids": [ORG_ID]}
    )
    mock.post("/api/v2/chats").respond(201, json=chat_body())
    await backend.ensure(_spec(organization=""), may_exist=False)
    assert sent(mock, "POST", "/api/v2/chats")["organization_id"] == ORG_ID


async def test_empty_organization_with_several_asks_to_configure_it(
    mock: respx.MockRouter, backend: ChatsBackend
) -> None:
    serve_lookup(mock)
    mock.get("/api/v2/users/me").respond(
        200, json={"id": "u1", "username": "alice", "organization_ids": [ORG_ID, "o2"]}
    )
    with pytest.raises(PermanentError, match=r"belongs to 2 organizations.*set coder.organization"):
        await backend.ensure(_spec(organization=""), may_exist=False)


async def test_unknown_organization_is_not_found_in_words(
    mock: respx.MockRouter, backend: ChatsBackend
) -> None:
    serve_lookup(mock)
    mock.get("/api/v2/organizations/default").respond(404, json=RESOURCE_NOT_FOUND)
    with pytest.raises(NotFound, match=r'organization "default" was not found.*coder.organization'):
        await backend.ensure(SPEC, may_exist=False)


USAGE_409 = {
    "message": "Chat usage limit exceeded.",
    "spent_micros": 10_250_000,
    "limit_micros": 10_000_000,
    "resets_at": "2026-10-01T00:00:00Z",
}


@pytest.mark.parametrize(
    ("status", "body", "words"),
    [
        (400, {"message": "organization_id is required."}, "Set coder.organization"),
        (
            403,
            {"message": "You are not a member of the specified organization."},
            "an organization your Coder account belongs to",
        ),
        (
            400,
            {"message": "Content is required.", "detail": "Content cannot be empty."},
            "Content cannot be empty",
        ),
        (
            400,
            {"message": "Invalid input part.", "detail": "content[0].text cannot be empty."},
            "content[0].text cannot be empty",
        ),
        (
            400,
            {
                "message": "Invalid labels.",
                "validations": [{"field": "labels", "detail": "invalid key"}],
            },
            "labels: invalid key",
        ),
        (
            400,
            {"message": "Workspace not found or you do not have access to this resource"},
            "workspace prepared for this chat cannot be used",
        ),
        (400, {"message": "No default chat model config is configured."}, "LLM provider"),
        (
            409,
            USAGE_409,
            "$10.25 of the $10.00 limit has been used. The limit resets at 2026-10-01 00:00 UTC",
        ),
        (403, {"message": "Chat creation denied by hook.", "kind": "hook_denied"}, "denied"),
        (413, {"message": "Request body too large."}, "too long for a Coder chat"),
    ],
)
async def test_each_refusal_is_a_plain_permanent_error(
    mock: respx.MockRouter, backend: ChatsBackend, status: int, body: Any, words: str
) -> None:
    serve_lookup(mock)
    serve_org(mock)
    mock.post("/api/v2/chats").respond(status, json=body)
    with pytest.raises(PermanentError) as caught:
        await backend.ensure(SPEC, may_exist=False)
    assert type(caught.value) is PermanentError
    assert caught.value.message.startswith("Coder did not start the chat: ")
    assert words in caught.value.message
    assert TOKEN not in caught.value.message


@pytest.mark.parametrize(
    ("last_error", "words"),
    [
        ("No API key for provider anthropic", "No API key for provider anthropic"),
        (
            {"message": "Budget exhausted", "kind": "usage_limit", "retryable": False},
            "usage budget is used up",
        ),
    ],
)
async def test_a_chat_created_in_error_is_a_permanent_error(
    mock: respx.MockRouter, backend: ChatsBackend, last_error: Any, words: str
) -> None:
    serve_lookup(mock)
    serve_org(mock)
    mock.post("/api/v2/chats").respond(201, json=chat_body(status="error", last_error=last_error))
    with pytest.raises(PermanentError, match="failed at once") as caught:
        await backend.ensure(SPEC, may_exist=False)
    assert words in caught.value.message
    assert f"{BASE}/agents/{CHAT_ID}" in caught.value.message


async def test_transient_and_token_failures_pass_through(
    mock: respx.MockRouter, backend: ChatsBackend
) -> None:
    serve_lookup(mock)
    serve_org(mock)
    mock.post("/api/v2/chats").respond(502, json={"message": "Bad gateway"})
    with pytest.raises(TransientError):
        await backend.ensure(SPEC, may_exist=False)
    mock.post("/api/v2/chats").respond(401, json={"message": "signed out"})
    with pytest.raises(TokenRejected):
        await backend.ensure(SPEC, may_exist=True)


# --- respx: is_active --------------------------------------------------------------------------

WORK = CreatedWork("chat", CHAT_ID, f"{BASE}/agents/{CHAT_ID}", "alice", "running")
LATER = "2026-09-02T10:05:00Z"


@pytest.mark.parametrize(
    ("fields", "active"),
    [
        ({"status": "running"}, True),
        ({"status": "pending"}, True),
        ({"status": "interrupting"}, True),
        ({"status": "paused"}, True),
        ({"status": "requires_action"}, True),
        ({"status": "brand-new-status"}, True),
        ({"status": "error", "last_error": "boom"}, False),
        ({"status": "error", "last_error": {"message": "boom", "kind": "generic"}}, False),
        ({"status": "running", "archived": True}, False),
        ({"status": "waiting"}, True),  # right after creation: not finished yet
        ({"status": "completed"}, True),
        ({"status": "waiting", "last_turn_summary": "Opened a PR"}, False),
        ({"status": "waiting", "diff_status": {"url": "https://x/pull/1"}}, False),
        ({"status": "waiting", "updated_at": LATER}, False),
        ({"status": "waiting", "created_at": "garbage"}, True),
    ],
)
async def test_is_active_reads_the_chat(
    mock: respx.MockRouter, backend: ChatsBackend, fields: dict[str, Any], active: bool
) -> None:
    mock.get(f"/api/v2/chats/{CHAT_ID}").respond(200, json=chat_body(**fields))
    assert await backend.is_active(WORK) is active


async def test_a_chat_idle_since_creation_ends_after_the_idle_bound(
    mock: respx.MockRouter, http: httpx.AsyncClient, clock: FakeTime
) -> None:
    mock.get(f"/api/v2/chats/{CHAT_ID}").respond(200, json=chat_body(status="waiting"))
    created = datetime(2026, 9, 2, 10, 0, tzinfo=UTC)
    soon = make_backend(http, clock, now=created + timedelta(minutes=2))
    late = make_backend(http, clock, now=created + timedelta(minutes=16))
    assert await soon.is_active(WORK) is True
    assert await late.is_active(WORK) is False


async def test_a_gone_chat_is_not_active(mock: respx.MockRouter, backend: ChatsBackend) -> None:
    mock.get(f"/api/v2/chats/{CHAT_ID}").respond(404, json=RESOURCE_NOT_FOUND)
    assert await backend.is_active(WORK) is False


# --- respx: workspace creation -----------------------------------------------------------------


def workspace_body(status: str = "pending", **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": WORKSPACE_ID,
        "name": SPEC.name,
        "template_id": TEMPLATE_ID,
        "latest_build": {
            "status": status,
            "job": {"status": status, "error": ""},
            "matched_provisioners": {"count": 1},
        },
    }
    body.update(fields)
    return body


def serve_template(mock: respx.MockRouter, presets: list[dict[str, Any]]) -> None:
    mock.get("/api/v2/organizations/default/templates/docker").respond(
        200, json={"id": TEMPLATE_ID, "name": "docker", "active_version_id": VERSION_ID}
    )
    mock.get(f"/api/v2/templateversions/{VERSION_ID}/presets").respond(200, json=presets)


def large_preset(default: bool = False) -> dict[str, Any]:
    return {"ID": LARGE_ID, "Name": "large", "Parameters": [], "Default": default}


async def test_template_route_creates_the_workspace_then_pins_the_chat(
    mock: respx.MockRouter, backend: ChatsBackend, clock: FakeTime
) -> None:
    serve_lookup(mock)
    serve_org(mock)
    serve_template(mock, [large_preset()])
    mock.post("/api/v2/users/me/workspaces").respond(201, json=workspace_body("pending"))
    mock.get(f"/api/v2/workspaces/{WORKSPACE_ID}").mock(
        side_effect=[
            httpx.Response(200, json=workspace_body("starting")),
            httpx.Response(200, json=workspace_body("running")),
        ]
    )
    mock.post("/api/v2/chats").respond(201, json=chat_body(workspace_id=WORKSPACE_ID))

    await backend.ensure(_spec(template="docker", preset="large"), may_exist=False)

    assert sent(mock, "POST", "/api/v2/users/me/workspaces") == {
        "name": SPEC.name,
        "template_version_id": VERSION_ID,
        "template_version_preset_id": LARGE_ID,
    }
    assert sent(mock, "POST", "/api/v2/chats")["workspace_id"] == WORKSPACE_ID
    assert clock.sleeps == [5.0, 5.0]


async def test_without_a_preset_the_template_id_is_sent(
    mock: respx.MockRouter, backend: ChatsBackend
) -> None:
    serve_lookup(mock)
    serve_org(mock)
    serve_template(mock, [])
    mock.post("/api/v2/users/me/workspaces").respond(201, json=workspace_body("running"))
    mock.post("/api/v2/chats").respond(201, json=chat_body())
    await backend.ensure(_spec(template="docker"), may_exist=False)
    assert sent(mock, "POST", "/api/v2/users/me/workspaces") == {
        "name": SPEC.name,
        "template_id": TEMPLATE_ID,
    }


async def test_a_conflict_adopts_the_workspace_of_the_same_template(
    mock: respx.MockRouter, backend: ChatsBackend
) -> None:
    serve_lookup(mock)
    serve_org(mock)
    serve_template(mock, [])
    mock.post("/api/v2/users/me/workspaces").respond(
        409, json={"message": f'Workspace "{SPEC.name}" already exists.'}
    )
    mock.get(f"/api/v2/users/me/workspace/{SPEC.name}").respond(200, json=workspace_body("running"))
    mock.post("/api/v2/chats").respond(201, json=chat_body())
    await backend.ensure(_spec(template="docker"), may_exist=True)
    assert sent(mock, "POST", "/api/v2/chats")["workspace_id"] == WORKSPACE_ID


async def test_a_same_named_workspace_of_another_template_is_refused(
    mock: respx.MockRouter, backend: ChatsBackend
) -> None:
    serve_lookup(mock)
    serve_org(mock)
    serve_template(mock, [])
    mock.post("/api/v2/users/me/workspaces").respond(409, json={"message": "exists"})
    mock.get(f"/api/v2/users/me/workspace/{SPEC.name}").respond(
        200, json=workspace_body("running", template_id="other")
    )
    with pytest.raises(PermanentError, match="made from another template"):
        await backend.ensure(_spec(template="docker"), may_exist=True)
    assert ("POST", "/api/v2/chats") not in calls(mock)


async def test_a_lost_create_answer_is_resolved_by_name_or_retried(
    mock: respx.MockRouter, backend: ChatsBackend
) -> None:
    serve_lookup(mock)
    serve_org(mock)
    serve_template(mock, [])
    mock.post("/api/v2/users/me/workspaces").respond(504, json={"message": "Gateway timeout"})
    by_name = mock.get(f"/api/v2/users/me/workspace/{SPEC.name}")
    by_name.respond(404, json=RESOURCE_NOT_FOUND)
    with pytest.raises(TransientError):
        await backend.ensure(_spec(template="docker"), may_exist=False)

    by_name.respond(200, json=workspace_body("running"))
    mock.post("/api/v2/chats").respond(201, json=chat_body())
    await backend.ensure(_spec(template="docker"), may_exist=True)
    assert sent(mock, "POST", "/api/v2/chats")["workspace_id"] == WORKSPACE_ID


@pytest.mark.parametrize(
    ("status", "words"),
    [
        ("failed", 'workspace "cb-0123456789abcdef" for this chat failed to build: no disk'),
        ("canceled", "had its build canceled"),
        ("deleted", "is being deleted"),
    ],
)
async def test_a_failed_build_stops_before_the_chat(
    mock: respx.MockRouter, backend: ChatsBackend, status: str, words: str
) -> None:
    serve_lookup(mock)
    serve_org(mock)
    serve_template(mock, [])
    mock.post("/api/v2/users/me/workspaces").respond(201, json=workspace_body("pending"))
    failed = workspace_body(status)
    failed["latest_build"]["job"]["error"] = "no disk" if status == "failed" else ""
    mock.get(f"/api/v2/workspaces/{WORKSPACE_ID}").respond(200, json=failed)
    with pytest.raises(PermanentError, match="no chat was started") as caught:
        await backend.ensure(_spec(template="docker"), may_exist=False)
    assert words in caught.value.message
    assert ("POST", "/api/v2/chats") not in calls(mock)


async def test_a_build_that_never_finishes_times_out_naming_the_cause(
    mock: respx.MockRouter, backend: ChatsBackend, clock: FakeTime
) -> None:
    serve_lookup(mock)
    serve_org(mock)
    serve_template(mock, [])
    stuck = workspace_body("pending")
    stuck["latest_build"]["matched_provisioners"] = {"count": 0}
    mock.post("/api/v2/users/me/workspaces").respond(201, json=stuck)
    mock.get(f"/api/v2/workspaces/{WORKSPACE_ID}").respond(200, json=stuck)
    with pytest.raises(PermanentError) as caught:
        await backend.ensure(_spec(template="docker"), may_exist=False)
    assert "was not running after 10 minutes" in caught.value.message
    assert "no provisioner can take its build" in caught.value.message
    assert clock.now == pytest.approx(600.0)
    assert ("POST", "/api/v2/chats") not in calls(mock)


async def test_a_refused_workspace_create_is_explained(
    mock: respx.MockRouter, backend: ChatsBackend
) -> None:
    serve_lookup(mock)
    serve_org(mock)
    serve_template(mock, [])
    mock.post("/api/v2/users/me/workspaces").respond(
        400, json={"message": 'Unable to validate parameter "region"'}
    )
    with pytest.raises(PermanentError, match=r'could not create the workspace .*"region"'):
        await backend.ensure(_spec(template="docker"), may_exist=False)


# --- against FakeCoder on loopback -------------------------------------------------------------


class Deployment:
    """A served fake (Chats mode) with alice and a template with two presets."""

    def __init__(self, fake: FakeCoder, url: str, token: str, template: FakeTemplate) -> None:
        self.fake, self.url, self.token, self.template = fake, url, token, template


@pytest.fixture
def deployment() -> Iterator[Deployment]:
    fake = FakeCoder(mode="chats")
    token = fake.add_user("alice")
    fake.add_user("bob", organizations=("default", "research"))
    template = fake.add_template("default", "docker", presets=["small", "large"])
    fake.configure_workspaces(auto_advance_after=2)
    with serve_in_thread(fake.app()) as url:
        yield Deployment(fake, url, token, template)


def fake_backend(
    d: Deployment, http: httpx.AsyncClient, clock: FakeTime, *, base: str = "/api/v2"
) -> ChatsBackend:
    client = CoderClient(d.url, d.token, http=http, timeout=5.0)
    workspaces = WorkspaceCreator(client, sleep=clock.sleep, clock=clock.clock)
    return ChatsBackend(client, d.url, base=base, workspaces=workspaces)


async def test_repeated_ensure_yields_one_chat(
    deployment: Deployment, http: httpx.AsyncClient, clock: FakeTime
) -> None:
    backend = fake_backend(deployment, http, clock)
    first = await backend.ensure(SPEC, may_exist=False)
    second = await backend.ensure(SPEC, may_exist=False)
    [chat] = deployment.fake.chats_of("alice")
    assert first == second
    assert first.url == f"{deployment.url}/agents/{chat['id']}"
    assert (first.owner_name, first.status) == ("alice", "running")
    assert chat["organization_id"] == deployment.fake.default_org_id
    assert chat["labels"] == delegation_labels(SPEC.delegation_key)
    assert chat["workspace_id"] is None  # no template: the agent chooses


async def test_502_after_the_chat_was_created_then_retry_yields_one_chat(
    deployment: Deployment, http: httpx.AsyncClient, clock: FakeTime
) -> None:
    backend = fake_backend(deployment, http, clock)
    deployment.fake.fail_next("create_chat", 502, after_acting=True)
    with pytest.raises(TransientError):
        await backend.ensure(SPEC, may_exist=False)
    work = await backend.ensure(SPEC, may_exist=True)
    [chat] = deployment.fake.chats_of("alice")
    assert work.id == chat["id"]


async def test_another_delegation_gets_its_own_chat(
    deployment: Deployment, http: httpx.AsyncClient, clock: FakeTime
) -> None:
    backend = fake_backend(deployment, http, clock)
    a = await backend.ensure(SPEC, may_exist=False)
    b = await backend.ensure(_spec(delegation_key="github:186853002:1#2"), may_exist=False)
    assert a.id != b.id
    assert len(deployment.fake.chats_of("alice")) == 2


async def test_template_and_preset_pin_the_chat_to_a_running_workspace(
    deployment: Deployment, http: httpx.AsyncClient, clock: FakeTime
) -> None:
    backend = fake_backend(deployment, http, clock)
    spec = _spec(template="docker", preset="large")
    await backend.ensure(spec, may_exist=False)
    await backend.ensure(spec, may_exist=True)

    [workspace] = deployment.fake.workspaces
    [chat] = deployment.fake.chats_of("alice")
    assert workspace["name"] == SPEC.name
    assert workspace["latest_build"]["status"] == "running"
    assert deployment.fake.workspace_preset_of(SPEC.name) == "large"
    assert chat["workspace_id"] == workspace["id"]
    polls = [p for m, p in deployment.fake.requests if p.startswith("/api/v2/workspaces/")]
    assert len(polls) == 2


async def test_a_failed_build_creates_no_chat(
    deployment: Deployment, http: httpx.AsyncClient, clock: FakeTime
) -> None:
    deployment.fake.configure_workspaces(
        auto_advance_after=3, final_status="failed", build_error="terraform: quota exceeded"
    )
    backend = fake_backend(deployment, http, clock)
    with pytest.raises(PermanentError, match="failed to build: terraform: quota exceeded"):
        await backend.ensure(_spec(template="docker"), may_exist=False)
    assert deployment.fake.chats == []


async def test_a_workspace_left_by_an_earlier_attempt_is_reused(
    deployment: Deployment, http: httpx.AsyncClient, clock: FakeTime
) -> None:
    backend = fake_backend(deployment, http, clock)
    deployment.fake.configure_chats(model_configured=False)
    with pytest.raises(PermanentError, match="LLM provider"):
        await backend.ensure(_spec(template="docker"), may_exist=False)
    deployment.fake.configure_chats(model_configured=True)
    await backend.ensure(_spec(template="docker"), may_exist=True)
    [workspace] = deployment.fake.workspaces
    [chat] = deployment.fake.chats_of("alice")
    assert chat["workspace_id"] == workspace["id"]


async def test_a_workspace_502_after_acting_is_adopted_in_the_same_call(
    deployment: Deployment, http: httpx.AsyncClient, clock: FakeTime
) -> None:
    deployment.fake.fail_next("create_workspace", 502, after_acting=True)
    backend = fake_backend(deployment, http, clock)
    await backend.ensure(_spec(template="docker"), may_exist=False)
    assert len(deployment.fake.workspaces) == 1
    assert len(deployment.fake.chats) == 1


async def test_an_unknown_template_is_not_found(
    deployment: Deployment, http: httpx.AsyncClient, clock: FakeTime
) -> None:
    backend = fake_backend(deployment, http, clock)
    with pytest.raises(NotFound, match='template "nope" was not found'):
        await backend.ensure(_spec(template="nope"), may_exist=False)


async def test_an_organization_the_user_is_not_in_is_explained(
    deployment: Deployment, http: httpx.AsyncClient, clock: FakeTime
) -> None:
    backend = fake_backend(deployment, http, clock)
    with pytest.raises(NotFound, match='organization "research" was not found'):
        await backend.ensure(_spec(organization="research"), may_exist=False)


@pytest.mark.parametrize(
    ("switches", "words"),
    [
        ({"model_configured": False}, "No default chat model config is configured."),
        (
            {"usage_limit": (5_000_000, 5_000_000, "2026-10-01T00:00:00Z")},
            "Chat usage limit exceeded. $5.00 of the $5.00 limit has been used.",
        ),
        (
            {"fail_new_chats": "Provider anthropic has no API key.", "last_error_kind": "config"},
            "failed at once: Provider anthropic has no API key.",
        ),
    ],
)
async def test_server_conditions_become_plain_errors(
    deployment: Deployment,
    http: httpx.AsyncClient,
    clock: FakeTime,
    switches: dict[str, Any],
    words: str,
) -> None:
    deployment.fake.configure_chats(**switches)
    with pytest.raises(PermanentError) as caught:
        await fake_backend(deployment, http, clock).ensure(SPEC, may_exist=False)
    assert words in caught.value.message


async def test_is_active_follows_the_chat(
    deployment: Deployment, http: httpx.AsyncClient, clock: FakeTime
) -> None:
    backend = fake_backend(deployment, http, clock)
    work = await backend.ensure(SPEC, may_exist=False)
    fake = deployment.fake
    assert await backend.is_active(work) is True
    fake.set_chat_state(work.id, "waiting")  # an idle chat right after creation
    assert await backend.is_active(work) is True
    fake.set_chat_state(work.id, "waiting", summary="Opened PR #7")
    assert await backend.is_active(work) is False
    fake.set_chat_state(work.id, "running")
    assert await backend.is_active(work) is True
    fake.set_chat_state(work.id, "error", last_error="provider overloaded")
    assert await backend.is_active(work) is False
    fake.set_chat_state(work.id, "waiting", updated_at=datetime.now(UTC) + timedelta(minutes=5))
    assert await backend.is_active(work) is False
    fake.set_chat_state(work.id, "running", archived=True)
    assert await backend.is_active(work) is False


async def test_legacy_experimental_era_on_the_experimental_base(
    http: httpx.AsyncClient, clock: FakeTime
) -> None:
    fake = FakeCoder(mode="tasks-gated")
    fake.enable_experiment("agents")
    token = fake.add_user("alice")
    with serve_in_thread(fake.app()) as url:
        client = CoderClient(url, token, http=http, timeout=5.0)
        backend = ChatsBackend(client, url, base="/api/experimental", workspaces=None)
        work = await backend.ensure(SPEC, may_exist=False)
        assert work.status == "pending"
        assert work.owner_name == ""  # the legacy object has no owner name
        fake.set_chat_state(work.id, "error", last_error="boom")
        [chat] = fake.chats
        assert chat["last_error"] == "boom"
        assert "organization_id" not in chat
        assert await backend.is_active(work) is False
        assert await backend.ensure(SPEC, may_exist=True) == CreatedWork(
            "chat", work.id, work.url, "", "error"
        )


# --- the fake's Chats and workspace routes on the wire -----------------------------------------


@pytest.fixture
async def raw(deployment: Deployment) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Coder-Session-Token": deployment.token}
    async with httpx.AsyncClient(base_url=deployment.url, headers=headers) as client:
        yield client


def new_chat(d: Deployment, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "organization_id": d.fake.default_org_id,
        "content": [{"type": "text", "text": "hello there"}],
    }
    body.update(changes)
    return body


async def test_fake_create_chat_validation(deployment: Deployment, raw: httpx.AsyncClient) -> None:
    research = deployment.fake.add_org("research")
    cases: list[tuple[dict[str, Any], int, dict[str, str]]] = [
        ({"organization_id": None}, 400, {"message": "organization_id is required."}),
        (
            {"organization_id": research},
            403,
            {"message": "You are not a member of the specified organization."},
        ),
        (
            {"content": []},
            400,
            {"message": "Content is required.", "detail": "Content cannot be empty."},
        ),
        (
            {"content": [{"type": "text", "text": "  "}]},
            400,
            {"message": "Invalid input part.", "detail": "content[0].text cannot be empty."},
        ),
        (
            {"workspace_id": WORKSPACE_ID},
            400,
            {"message": "Workspace not found or you do not have access to this resource"},
        ),
    ]
    for changes, status, body in cases:
        answer = await raw.post("/api/v2/chats", json=new_chat(deployment, **changes))
        assert (answer.status_code, answer.json()) == (status, body), changes
    bad_labels = await raw.post(
        "/api/v2/chats", json=new_chat(deployment, labels={"bad:key": "x", "ok": ""})
    )
    assert bad_labels.status_code == 400
    assert bad_labels.json()["message"] == "Invalid labels."
    assert {v["field"] for v in bad_labels.json()["validations"]} == {"labels"}
    assert deployment.fake.chats == []


async def test_fake_chat_shape_list_filters_and_patch(
    deployment: Deployment, raw: httpx.AsyncClient
) -> None:
    one = await raw.post(
        "/api/v2/chats", json=new_chat(deployment, labels={"a": "1", "b": "x:y#z"})
    )
    two = await raw.post("/api/v2/chats", json=new_chat(deployment, labels={"a": "1"}))
    assert one.status_code == 201
    created = one.json()
    assert created["status"] == "running"
    assert "last_error" not in created
    assert created["title"] == "hello there"
    assert created["owner_username"] == "alice"

    both = (await raw.get("/api/v2/chats", params={"label": "a:1"})).json()
    anded = (await raw.get("/api/v2/chats", params=[("label", "a:1"), ("label", "b:x:y#z")])).json()
    limited = (await raw.get("/api/v2/chats", params={"limit": "1"})).json()
    bad = await raw.get("/api/v2/chats", params={"label": "nocolon"})
    assert [c["id"] for c in both] == [two.json()["id"], created["id"]]  # newest first
    assert [c["id"] for c in anded] == [created["id"]]
    assert len(limited) == 1
    assert "files" not in both[0]
    assert bad.status_code == 400
    assert bad.json()["message"].startswith('Invalid label filter: "nocolon"')

    patched = await raw.patch(f"/api/v2/chats/{created['id']}", json={"archived": True})
    assert (patched.status_code, patched.content) == (204, b"")
    hidden = (await raw.get("/api/v2/chats", params={"label": "b:x:y#z"})).json()
    shown = await raw.get("/api/v2/chats", params={"label": "b:x:y#z", "q": "archived:true"})
    assert hidden == []
    assert [c["id"] for c in shown.json()] == [created["id"]]
    assert (await raw.get("/api/v2/chats/not-a-uuid")).status_code == 400
    missing = await raw.get(f"/api/v2/chats/{CHAT_ID}")
    assert (missing.status_code, missing.json()) == (404, RESOURCE_NOT_FOUND)


async def test_fake_chat_routes_accept_injected_faults(
    deployment: Deployment, raw: httpx.AsyncClient
) -> None:
    deployment.fake.fail_next("list_chats", 503)
    assert (await raw.get("/api/v2/chats")).status_code == 503
    assert (await raw.get("/api/v2/chats")).status_code == 200


async def test_fake_chats_are_per_mode_and_gated(http: httpx.AsyncClient) -> None:
    fake = FakeCoder(mode="tasks-gated")
    token = fake.add_user("alice")
    with serve_in_thread(fake.app()) as url:
        headers = {"Coder-Session-Token": token}
        gated = await http.get(f"{url}/api/experimental/chats", headers=headers)
        unauthenticated = await http.get(f"{url}/api/experimental/chats")
        v2 = await http.get(f"{url}/api/v2/chats", headers=headers)
        fake.enable_experiment("agents")
        opened = await http.get(f"{url}/api/experimental/chats", headers=headers)
    assert gated.status_code == 403
    assert gated.json()["message"].endswith("requires enabling the 'agents' experiment.")
    assert unauthenticated.status_code == 401
    assert (v2.status_code, v2.json()) == (404, {"message": "Route not found."})
    assert (opened.status_code, opened.json()) == (200, [])


async def test_fake_workspace_routes(deployment: Deployment, raw: httpx.AsyncClient) -> None:
    template = deployment.template
    body = {"template_id": template.id, "name": "My-WS"}
    created = await raw.post("/api/v2/users/me/workspaces", json=body)
    again = await raw.post(
        "/api/v2/users/alice/workspaces", json={"template_id": template.id, "name": "my-ws"}
    )
    both = await raw.post(
        "/api/v2/users/me/workspaces",
        json={
            "template_id": template.id,
            "template_version_id": template.active_version_id,
            "name": "x",
        },
    )
    neither = await raw.post("/api/v2/users/me/workspaces", json={"name": "x"})
    bad_name = await raw.post(
        "/api/v2/users/me/workspaces", json={"template_id": template.id, "name": "bad_name"}
    )
    unknown = await raw.post(
        "/api/v2/users/me/workspaces", json={"template_id": WORKSPACE_ID, "name": "x"}
    )
    other_user = await raw.post(
        "/api/v2/users/bob/workspaces", json={"template_id": template.id, "name": "x"}
    )

    assert created.status_code == 201
    workspace = created.json()
    assert workspace["latest_build"]["status"] == "pending"
    assert workspace["latest_build"]["job"]["status"] == "pending"
    assert workspace["template_id"] == template.id
    assert again.status_code == 409
    assert again.json() == {
        "message": 'Workspace "my-ws" already exists.',
        "validations": [
            {"field": "name", "detail": "This value is already in use and should be unique."}
        ],
    }
    assert both.json()["message"] == "Validation failed."
    assert "excluded_with" in both.json()["validations"][0]["detail"]
    assert "required_without" in neither.json()["validations"][0]["detail"]
    assert bad_name.json()["validations"] == [
        {
            "field": "name",
            "detail": 'Validation failed for tag "workspace_name" with value: "bad_name"',
        }
    ]
    assert unknown.status_code == 400
    assert unknown.json()["message"] == f'Template "{WORKSPACE_ID}" doesn\'t exist.'
    assert other_user.status_code == 403

    by_name = await raw.get("/api/v2/users/me/workspace/my-ws")
    assert by_name.json()["id"] == workspace["id"]
    assert (await raw.get("/api/v2/users/me/workspace/none")).status_code == 404
    deployment.fake.configure_workspaces(auto_advance_after=None)
    deployment.fake.set_workspace_build("My-WS", "failed", error="boom")
    polled = (await raw.get(f"/api/v2/workspaces/{workspace['id']}")).json()
    assert polled["latest_build"]["status"] == "failed"
    assert polled["latest_build"]["job"] == {**polled["latest_build"]["job"], "error": "boom"}


def _spec(**changes: str) -> WorkSpec:
    fields = {
        "delegation_key": SPEC.delegation_key,
        "name": SPEC.name,
        "prompt": SPEC.prompt,
        "display_name": SPEC.display_name,
        "template": SPEC.template,
        "preset": SPEC.preset,
        "organization": SPEC.organization,
    }
    fields.update(changes)
    return WorkSpec(**fields)
