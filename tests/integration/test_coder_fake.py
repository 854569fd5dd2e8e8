"""TasksBackend against FakeCoder over real loopback HTTP, and the fake's own wire fidelity."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from service.coder.base import WorkSpec
from service.coder.client import CoderClient
from service.coder.tasks import TasksBackend
from service.errors import (
    NotFound,
    PermanentError,
    RateLimited,
    RouteNotFound,
    TokenRejected,
    TransientError,
)
from tests.fakes.coder import MODES, FakeCoder, FakeTemplate, ModeSpec, new_token
from tests.fakes.server import serve_in_thread

SIGNED_OUT = "You are signed out or your session has expired. Please sign in again to continue."
RESOURCE_NOT_FOUND = "Resource not found or you do not have access to this resource"

SPEC = WorkSpec(
    delegation_key="github:octo/repo#42",
    name="cb-0123456789abcdef",
    prompt="Fix the flaky test",
    display_name="octo/repo#42: Fix the flaky test",
    template="tasks-docker",
    preset="",
    organization="default",
)


class Deployment:
    """A served fake with one user (alice) and one task-capable template."""

    def __init__(self, fake: FakeCoder, url: str, token: str, template: FakeTemplate) -> None:
        self.fake, self.url, self.token, self.template = fake, url, token, template


@pytest.fixture(params=["tasks", "tasks-experimental"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def deployment(mode: str) -> Iterator[Deployment]:
    fake = FakeCoder(mode=mode)
    token = fake.add_user("alice")
    template = fake.add_template(
        "default", "tasks-docker", presets=["small", {"Name": "large", "Default": True}]
    )
    with serve_in_thread(fake.app()) as url:
        yield Deployment(fake, url, token, template)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def backend_for(
    d: Deployment, http: httpx.AsyncClient, *, token: str | None = None, timeout: float = 5.0
) -> TasksBackend:
    client = CoderClient(d.url, token or d.token, http=http, timeout=timeout)
    return TasksBackend(client, d.url, prefix_cache={})


def wait_idle(fake: FakeCoder, seconds: float = 5.0) -> None:
    """Poll until the fake has no request in progress (a delayed one has finished)."""
    deadline = time.monotonic() + seconds
    while fake.in_flight:
        assert time.monotonic() < deadline, "fake still busy"
        time.sleep(0.01)


# --- TasksBackend end to end --------------------------------------------------------------------


async def test_creates_one_task_in_each_mode(
    deployment: Deployment, http: httpx.AsyncClient, mode: str
) -> None:
    work = await backend_for(deployment, http).ensure(SPEC, may_exist=False)

    [task] = deployment.fake.tasks_of("alice")
    assert work.id == task["id"]
    assert work.url == f"{deployment.url}/tasks/alice/{task['id']}"
    assert (work.owner_name, work.status) == ("alice", "pending")
    assert task["name"] == SPEC.name
    assert task["initial_prompt"] == SPEC.prompt
    assert task["display_name"] == SPEC.display_name
    assert task["template_version_id"] == deployment.template.active_version_id
    creates = [p for m, p in deployment.fake.requests if m == "POST"]
    if mode == "tasks":
        assert creates == ["/api/v2/tasks/me"]
    else:
        assert creates == ["/api/v2/tasks/me", "/api/experimental/tasks/me"]


async def test_client_learns_the_build_version(
    deployment: Deployment, http: httpx.AsyncClient, mode: str
) -> None:
    client = CoderClient(deployment.url, deployment.token, http=http, timeout=5.0)
    user = await client.fetch_me()
    assert user.username == "alice"
    assert user.organization_ids == (deployment.fake.default_org_id,)
    assert client.build_version == MODES[mode].version


async def test_502_after_the_server_acted_then_retry_yields_one_task(
    deployment: Deployment, http: httpx.AsyncClient
) -> None:
    backend = backend_for(deployment, http)
    deployment.fake.fail_next("create_task", 502, after_acting=True)

    with pytest.raises(TransientError):
        await backend.ensure(SPEC, may_exist=False)
    work = await backend.ensure(SPEC, may_exist=True)

    [task] = deployment.fake.tasks_of("alice")
    assert work.id == task["id"]


async def test_retry_without_may_exist_adopts_the_task_on_conflict(
    deployment: Deployment, http: httpx.AsyncClient
) -> None:
    backend = backend_for(deployment, http)
    deployment.fake.fail_next("create_task", 502, after_acting=True)
    with pytest.raises(TransientError):
        await backend.ensure(SPEC, may_exist=False)

    work = await backend.ensure(SPEC, may_exist=False)

    [task] = deployment.fake.tasks_of("alice")
    assert work.id == task["id"]


async def test_timeout_after_the_server_acted_then_retry_yields_one_task(
    deployment: Deployment, http: httpx.AsyncClient
) -> None:
    deployment.fake.delay_next("create_task", 0.6, after_acting=True)
    impatient = backend_for(deployment, http, timeout=0.2)

    with pytest.raises(TransientError, match="did not answer in time"):
        await impatient.ensure(SPEC, may_exist=False)
    work = await backend_for(deployment, http).ensure(SPEC, may_exist=True)

    wait_idle(deployment.fake)
    [task] = deployment.fake.tasks_of("alice")
    assert work.id == task["id"]


async def test_timeout_before_the_server_acted_then_retry_yields_one_task(
    deployment: Deployment, http: httpx.AsyncClient
) -> None:
    deployment.fake.delay_next("create_task", 0.6)
    impatient = backend_for(deployment, http, timeout=0.2)

    with pytest.raises(TransientError):
        await impatient.ensure(SPEC, may_exist=False)
    work = await backend_for(deployment, http).ensure(SPEC, may_exist=True)

    wait_idle(deployment.fake)  # the slow first create has now run into a name conflict
    [task] = deployment.fake.tasks_of("alice")
    assert work.id == task["id"]


async def test_default_preset_is_used_without_a_configured_one(
    deployment: Deployment, http: httpx.AsyncClient
) -> None:
    work = await backend_for(deployment, http).ensure(SPEC, may_exist=False)
    assert deployment.fake.preset_of(work.id) == "large"


async def test_configured_preset_is_used_by_name(
    deployment: Deployment, http: httpx.AsyncClient
) -> None:
    spec = WorkSpec(**{**SPEC.__dict__, "preset": "small"})
    work = await backend_for(deployment, http).ensure(spec, may_exist=False)
    assert deployment.fake.preset_of(work.id) == "small"


async def test_unknown_preset_creates_nothing(
    deployment: Deployment, http: httpx.AsyncClient
) -> None:
    spec = WorkSpec(**{**SPEC.__dict__, "preset": "huge"})
    with pytest.raises(PermanentError, match='available presets: "small", "large"'):
        await backend_for(deployment, http).ensure(spec, may_exist=False)
    assert deployment.fake.tasks == []


@pytest.mark.parametrize("spoil", ["revoke", "expire", "unknown", "malformed"])
async def test_bad_token_is_token_rejected(
    deployment: Deployment, http: httpx.AsyncClient, spoil: str
) -> None:
    token = deployment.token
    if spoil == "revoke":
        deployment.fake.revoke_token(token)
    elif spoil == "expire":
        deployment.fake.expire_token(token)
    elif spoil == "unknown":
        token = new_token()
    else:
        token = "not-a-token-at-all"

    with pytest.raises(TokenRejected) as info:
        await backend_for(deployment, http, token=token).ensure(SPEC, may_exist=True)

    assert SIGNED_OUT in info.value.message
    assert token not in str(info.value)
    assert deployment.fake.tasks == []


async def test_rate_limit_carries_retry_after(
    deployment: Deployment, http: httpx.AsyncClient
) -> None:
    deployment.fake.fail_next("get_template", 429, retry_after=30)
    with pytest.raises(RateLimited) as info:
        await backend_for(deployment, http).ensure(SPEC, may_exist=False)
    assert info.value.retry_after == 30.0
    assert "rate limited" in info.value.message


async def test_template_that_is_not_task_capable_is_permanent(
    deployment: Deployment, http: httpx.AsyncClient
) -> None:
    deployment.fake.add_template("default", "plain", task_capable=False)
    spec = WorkSpec(**{**SPEC.__dict__, "template": "plain"})
    with pytest.raises(PermanentError, match='does not have a valid "coder_ai_task"'):
        await backend_for(deployment, http).ensure(spec, may_exist=False)


async def test_invalid_name_is_permanent_with_coders_reason(
    deployment: Deployment, http: httpx.AsyncClient
) -> None:
    spec = WorkSpec(**{**SPEC.__dict__, "name": "cb--bad"})
    with pytest.raises(PermanentError, match="must be alphanumeric with hyphens"):
        await backend_for(deployment, http).ensure(spec, may_exist=False)


async def test_template_in_an_org_the_user_is_not_in_is_not_found(
    deployment: Deployment, http: httpx.AsyncClient
) -> None:
    deployment.fake.add_template("research", "tasks-docker")
    spec = WorkSpec(**{**SPEC.__dict__, "organization": "research"})
    with pytest.raises(NotFound, match='"research"'):
        await backend_for(deployment, http).ensure(spec, may_exist=False)


async def test_is_active_follows_the_task(deployment: Deployment, http: httpx.AsyncClient) -> None:
    backend = backend_for(deployment, http)
    work = await backend.ensure(SPEC, may_exist=False)
    assert await backend.is_active(work) is True

    deployment.fake.set_task_state(work.id, status="active", state="complete")
    assert await backend.is_active(work) is False

    deployment.fake.set_task_state(work.id, status="active", state="working")
    assert await backend.is_active(work) is True

    async with httpx.AsyncClient() as raw:
        gone = await raw.delete(
            f"{deployment.url}/api/experimental/tasks/alice/{work.id}",
            headers={"Coder-Session-Token": deployment.token},
        )
    assert gone.status_code == 202
    assert await backend.is_active(work) is False


async def test_server_without_tasks_is_route_not_found(
    http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(MODES, "no-tasks", ModeSpec("v2.38.0", {"core": ("/api/v2",)}))
    fake = FakeCoder(mode="no-tasks")
    token = fake.add_user("alice")
    fake.add_template("default", "tasks-docker")
    with serve_in_thread(fake.app()) as url:
        client = CoderClient(url, token, http=http, timeout=5.0)
        with pytest.raises(RouteNotFound, match="does not serve the Tasks API"):
            await TasksBackend(client, url).ensure(SPEC, may_exist=True)


# --- the fake on the wire -----------------------------------------------------------------------


@pytest.fixture
def served() -> Iterator[Deployment]:
    fake = FakeCoder(mode="tasks")
    token = fake.add_user("alice")
    fake.add_user("bob", organizations=("default", "research"))
    template = fake.add_template("default", "tasks-docker", presets=["small"])
    with serve_in_thread(fake.app()) as url:
        yield Deployment(fake, url, token, template)


@pytest.fixture
async def raw(served: Deployment) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Coder-Session-Token": served.token}
    async with httpx.AsyncClient(base_url=served.url, headers=headers) as client:
        yield client


def create_body(d: Deployment, **changes: Any) -> dict[str, Any]:
    body = {
        "template_version_id": d.template.active_version_id,
        "input": "do it",
        "name": "task-one",
    }
    body.update(changes)
    return body


async def test_unknown_route_is_route_not_found_with_version(raw: httpx.AsyncClient) -> None:
    answer = await raw.get("/api/v2/chats")
    assert answer.status_code == 404
    assert answer.json() == {"message": "Route not found."}
    assert answer.headers["X-Coder-Build-Version"] == "v2.36.1"


async def test_buildinfo_needs_no_token(served: Deployment) -> None:
    async with httpx.AsyncClient() as anonymous:
        answer = await anonymous.get(f"{served.url}/api/v2/buildinfo")
    assert answer.status_code == 200
    assert answer.json()["version"] == "v2.36.1"


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({}, 'Cookie "coder_session_token" or query parameter must be provided.'),
        (
            {"Coder-Session-Token": "abc"},
            "Invalid API key format: incorrect amount of API key parts, expected 2 got 1",
        ),
        (
            {"Coder-Session-Token": "abc-def"},
            "Invalid API key format: invalid API key ID length, expected 10 got 3",
        ),
        ({"Coder-Session-Token": "abcde12345-AbCdEfGhIjKlMnOpQrStUv"}, "API key is invalid."),
    ],
)
async def test_401_bodies_match_coder(
    served: Deployment, headers: dict[str, str], detail: str
) -> None:
    async with httpx.AsyncClient() as client:
        answer = await client.get(f"{served.url}/api/v2/users/me", headers=headers)
    assert answer.status_code == 401
    assert answer.json() == {"message": SIGNED_OUT, "detail": detail}


async def test_wrong_secret_and_bearer_path(served: Deployment) -> None:
    wrong = served.token.split("-")[0] + "-" + "x" * 22
    async with httpx.AsyncClient() as client:
        answer = await client.get(
            f"{served.url}/api/v2/users/me", headers={"Authorization": f"Bearer {wrong}"}
        )
        good = await client.get(
            f"{served.url}/api/v2/users/me", headers={"Authorization": f"Bearer {served.token}"}
        )
    assert answer.status_code == 401
    assert answer.json()["detail"] == "API key secret is invalid."
    assert answer.headers["WWW-Authenticate"].startswith('Bearer realm="coder"')
    assert good.json()["username"] == "alice"


async def test_suspended_user_gets_not_active(served: Deployment, raw: httpx.AsyncClient) -> None:
    served.fake.suspend_user("alice")
    answer = await raw.get("/api/v2/users/me")
    assert answer.status_code == 401
    assert answer.json()["message"].startswith("User is not active (status = ")


async def test_template_by_name_and_pascal_case_presets(
    served: Deployment, raw: httpx.AsyncClient
) -> None:
    template = (await raw.get("/api/v2/organizations/default/templates/tasks-docker")).json()
    presets = await raw.get(f"/api/v2/templateversions/{template['active_version_id']}/presets")
    missing = await raw.get("/api/v2/organizations/default/templates/nope")
    assert template["active_version_id"] == served.template.active_version_id
    assert set(presets.json()[0]) == {
        "ID",
        "Name",
        "Parameters",
        "Default",
        "DesiredPrebuildInstances",
        "Description",
        "Icon",
    }
    assert missing.status_code == 404
    assert missing.json() == {"message": RESOURCE_NOT_FOUND}


async def test_created_task_has_the_real_shape(served: Deployment, raw: httpx.AsyncClient) -> None:
    answer = await raw.post("/api/v2/tasks/me", json=create_body(served))
    assert answer.status_code == 201
    task = answer.json()
    assert task["status"] == "pending"
    assert task["current_state"] is None
    assert isinstance(task["workspace_id"], str)
    assert task["owner_name"] == "alice"
    assert "owner_avatar_url" not in task


@pytest.mark.parametrize(
    ("name", "detail"),
    [
        ("x" * 33, "must be <= 32 characters"),
        ("new", 'cannot use "new" as a name'),
        ("create", 'cannot use "create" as a name'),
        ("bad_name", "must be alphanumeric with hyphens"),
        ("-lead", "must be alphanumeric with hyphens"),
    ],
)
async def test_name_rules(
    served: Deployment, raw: httpx.AsyncClient, name: str, detail: str
) -> None:
    answer = await raw.post("/api/v2/tasks/me", json=create_body(served, name=name))
    assert answer.status_code == 400
    assert answer.json() == {
        "message": "Unable to create a Task with the provided name.",
        "detail": detail,
    }


async def test_create_errors(served: Deployment, raw: httpx.AsyncClient) -> None:
    unknown = await raw.post(
        "/api/v2/tasks/me",
        json={"template_version_id": "99999999-9999-9999-9999-999999999999", "input": "x"},
    )
    long_display = await raw.post(
        "/api/v2/tasks/me", json=create_body(served, display_name="é" * 33)
    )
    assert unknown.status_code == 400
    assert unknown.json() == {
        "message": "Template version not found or you do not have access to this resource"
    }
    assert long_display.status_code == 400
    assert long_display.json() == {"message": "Display name must be 64 characters or less."}


async def test_user_outside_the_templates_org_gets_404(served: Deployment) -> None:
    other = served.fake.add_template("research", "research-tasks")
    outsider = served.fake.add_user("carol", organizations=("research",))
    async with httpx.AsyncClient(base_url=served.url) as client:
        answer = await client.post(
            "/api/v2/tasks/me",
            headers={"Coder-Session-Token": served.token},
            json={"template_version_id": other.active_version_id, "input": "x"},
        )
        inside = await client.post(
            "/api/v2/tasks/carol",
            headers={"Coder-Session-Token": outsider},
            json={"template_version_id": other.active_version_id, "input": "x"},
        )
    assert answer.status_code == 404
    assert answer.json() == {"message": RESOURCE_NOT_FOUND}
    assert inside.status_code == 201


async def test_duplicate_name_is_409_with_validation(
    served: Deployment, raw: httpx.AsyncClient
) -> None:
    first = await raw.post("/api/v2/tasks/me", json=create_body(served))
    second = await raw.post("/api/experimental/tasks/me", json=create_body(served))
    assert first.status_code == 201
    assert second.status_code == 409
    assert second.json() == {
        "message": 'Workspace "task-one" already exists.',
        "validations": [
            {"field": "name", "detail": "This value is already in use and should be unique."}
        ],
    }


async def test_list_get_and_delete(served: Deployment, raw: httpx.AsyncClient) -> None:
    task = (await raw.post("/api/v2/tasks/me", json=create_body(served))).json()
    bob = served.fake.add_token("bob")

    mine = (await raw.get("/api/v2/tasks", params={"q": "owner:me"})).json()
    by_name = await raw.get("/api/v2/tasks/alice/task-one")
    by_id = await raw.get(f"/api/v2/tasks/anyone/{task['id']}")
    scoped = await raw.get("/api/v2/tasks/bob/task-one")
    bobs_view = await raw.get(
        f"/api/v2/tasks/alice/{task['id']}", headers={"Coder-Session-Token": bob}
    )
    bad_query = await raw.get("/api/v2/tasks", params={"q": "colour:red"})
    deleted = await raw.delete(f"/api/v2/tasks/me/{task['id']}")

    assert mine["count"] == 1
    assert mine["tasks"][0]["id"] == task["id"]
    assert by_name.json()["id"] == task["id"]
    assert by_id.json()["id"] == task["id"]
    assert scoped.status_code == 404
    assert bobs_view.status_code == 404
    assert bad_query.status_code == 400
    assert bad_query.json()["message"] == "Invalid task search query."
    assert (deleted.status_code, deleted.content) == (202, b"")
    assert served.fake.tasks == []


async def test_requests_log_never_holds_tokens(served: Deployment, raw: httpx.AsyncClient) -> None:
    await raw.get("/api/v2/users/me", params={"coder_session_token": served.token})
    assert served.fake.requests == [("GET", "/api/v2/users/me")]
    assert served.token not in repr(served.fake.requests)


async def test_injected_html_error_and_times(served: Deployment, raw: httpx.AsyncClient) -> None:
    served.fake.fail_next("*", 503, "<html>down</html>", times=2)
    first = await raw.get("/api/v2/users/me")
    second = await raw.get("/api/v2/buildinfo")
    third = await raw.get("/api/v2/users/me")
    assert (first.status_code, second.status_code, third.status_code) == (503, 503, 200)
    assert first.headers["content-type"].startswith("text/html")


def test_fault_on_an_unknown_route_name_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown route name"):
        FakeCoder().fail_next("create_tsk", 500)


def test_tokens_have_the_real_format() -> None:
    key_id, secret = new_token().split("-")
    assert (len(key_id), len(secret)) == (10, 22)


async def test_template_lookups_are_shared_for_a_minute_then_refreshed() -> None:
    from service.coder.base import WorkSpec
    from service.coder.client import CoderClient
    from service.coder.tasks import TasksBackend
    from service.coder.templates import TemplateCache

    fake = FakeCoder("tasks")
    fake.add_template("default", "tasks-docker", presets=[{"Name": "small", "Default": True}])
    alice, bob = fake.add_user("alice"), fake.add_user("bob")
    now = [0.0]
    cache = TemplateCache(ttl=60.0, clock=lambda: now[0])
    with serve_in_thread(fake.app()) as url:
        async with httpx.AsyncClient() as http:
            def backend(token: str) -> TasksBackend:
                client = CoderClient(url, token, http=http, timeout=5)
                return TasksBackend(client, url, templates=cache)

            def spec(name: str) -> WorkSpec:
                return WorkSpec(delegation_key=name, name=name, prompt="p", display_name=name,
                                template="tasks-docker", preset="", organization="default")

            await backend(alice).ensure(spec("cb-one"), may_exist=False)
            await backend(bob).ensure(spec("cb-two"), may_exist=False)
            now[0] = 61.0
            await backend(alice).ensure(spec("cb-three"), may_exist=False)

    lookups = [path for method, path in fake.requests
               if method == "GET" and ("/templates/" in path or path.endswith("/presets"))]
    assert len(lookups) == 4  # template + presets, then again only after the minute
    assert [fake.preset_of(t["id"]) for t in fake.tasks] == ["small", "small", "small"]
