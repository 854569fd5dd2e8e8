"""The assembled app in-process: health, readiness, metrics, logs, unconfigured trackers.

The bridge runs on the test's event loop (``build_services`` + ``create_app``),
against the Coder and GitHub fakes on loopback; requests go through
``httpx.ASGITransport``. Readiness is driven by a clock the test controls.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families

from service.app import Services, build_services, create_app
from service.config import Config, load_config
from service.errors import StoreError
from service.http import InstrumentedTransport, classify_endpoint
from tests.conftest import GITHUB_SECRET, eventually, fixture_bytes, github_headers, sample
from tests.e2e.harness import ENCRYPTION_KEY
from tests.fakes.coder import FakeCoder
from tests.fakes.github import DEFAULT_TOKEN, FakeGitHub
from tests.fakes.server import free_port, serve_in_thread


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fakes() -> Iterator[tuple[FakeCoder, str, FakeGitHub, str]]:
    coder = FakeCoder("tasks")
    coder.add_template("default", "tasks-docker")
    github = FakeGitHub()
    with serve_in_thread(coder.app()) as coder_url, serve_in_thread(github) as github_url:
        yield coder, coder_url, github, github_url


def make_config(tmp_path: Path, coder_url: str, github_url: str, *, github: bool = True,
                sync_interval: float = 15, extra_github: str = "",
                admin_token: str = "") -> Config:
    text = f"""
[storage]
url = "sqlite:///{tmp_path / 'bridge.db'}"
[security]
encryption_keys = ["{ENCRYPTION_KEY}"]
admin_token = "{admin_token}"
[coder]
url = "{coder_url}"
template = "tasks-docker"
[worker]
poll_interval = 0.05
[sync]
interval = {sync_interval}
"""
    if github:
        text += f"""
[github]
webhook_secret = "{GITHUB_SECRET}"
api_url = "{github_url}"
token = "{DEFAULT_TOKEN}"
trigger_label = "bug"
{extra_github}
"""
    path = tmp_path / "config.toml"
    path.write_text(text)
    return load_config(path, {})


@pytest.fixture
async def bridge(
    tmp_path: Path, fakes: tuple[FakeCoder, str, FakeGitHub, str]
) -> AsyncIterator[tuple[Services, httpx.AsyncClient, Clock]]:
    _, coder_url, _, github_url = fakes
    clock = Clock()
    services = await build_services(make_config(tmp_path, coder_url, github_url), clock=clock)
    app = create_app(services)
    await services.start()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bridge") as client:
        yield services, client, clock
    await services.close()


async def deliver(client: httpx.AsyncClient, name: str = "issues__labeled.json",
                  **headers: str) -> httpx.Response:
    sent = github_headers(name) | headers
    return await client.post("/webhooks/github", content=fixture_bytes(f"github/{name}"),
                             headers=sent)


async def test_unconfigured_tracker_answers_404(tmp_path: Path) -> None:
    config = make_config(tmp_path, "http://127.0.0.1:9", "http://127.0.0.1:9", github=False)
    services = await build_services(config, role="web")
    transport = httpx.ASGITransport(app=create_app(services))
    async with httpx.AsyncClient(transport=transport, base_url="http://bridge") as client:
        for tracker in ("github", "linear"):
            response = await client.post(f"/webhooks/{tracker}", content=b"{}")
            assert response.status_code == 404
            assert response.json()["error"] == "not_configured"
        assert (await client.get("/healthz")).status_code == 200
    await services.close()


async def test_deliveries_from_a_repository_not_enabled_do_nothing(tmp_path: Path) -> None:
    config = make_config(tmp_path, "http://127.0.0.1:9", "http://127.0.0.1:9",
                         extra_github='repositories = ["acme/*"]')
    services = await build_services(config, role="web")
    transport = httpx.ASGITransport(app=create_app(services))
    async with httpx.AsyncClient(transport=transport, base_url="http://bridge") as client:
        before = (await client.get("/metrics")).text
        answer = await deliver(client)  # Codertocat/Hello-World is not acme's
        assert answer.status_code == 200
        assert answer.json() == {"status": "ignored", "reason": "repository not enabled"}
        after = (await client.get("/metrics")).text
        assert sample(after, "coder_bridge_deliveries_total", tracker="github",
                      outcome="ignored", reason="not_enabled") - sample(
            before, "coder_bridge_deliveries_total", tracker="github", outcome="ignored",
            reason="not_enabled") == 1
    assert await services.store.list_deliveries(limit=10) == []  # stored nowhere
    await services.close()


async def test_readiness_flips_with_the_database_file_and_back(
    bridge: tuple[Services, httpx.AsyncClient, Clock], tmp_path: Path
) -> None:
    _, client, _ = bridge
    ready = await client.get("/readyz")
    assert ready.status_code == 200, ready.json()
    assert ready.json()["checks"] == {name: {"status": "ok"}
                                      for name in ("storage", "schema", "vault", "worker")}

    db = tmp_path / "bridge.db"
    db.rename(tmp_path / "elsewhere.db")  # the volume went away
    gone = await client.get("/readyz")
    assert gone.status_code == 503
    assert gone.json()["failing"] == ["storage"]
    # the check is named; what the exception said goes to the log, not into the answer
    assert gone.json()["checks"]["storage"]["error"] == "the check failed; the log says why"
    assert str(tmp_path) not in gone.text

    (tmp_path / "elsewhere.db").rename(db)
    assert (await client.get("/readyz")).status_code == 200


async def test_readiness_names_an_outdated_schema_and_recovers(
    bridge: tuple[Services, httpx.AsyncClient, Clock], tmp_path: Path
) -> None:
    _, client, _ = bridge
    db = tmp_path / "bridge.db"
    with sqlite3.connect(db) as conn:  # as if a newer migration had not been applied
        newest = conn.execute("SELECT * FROM schema_migrations ORDER BY version DESC").fetchone()
        conn.execute("DELETE FROM schema_migrations WHERE version = ?", (newest[0],))
    behind = await client.get("/readyz")
    assert behind.status_code == 503 and behind.json()["failing"] == ["schema"]
    assert "coder-bridge migrate" in behind.json()["checks"]["schema"]["error"]
    with sqlite3.connect(db) as conn:
        conn.execute(f"INSERT INTO schema_migrations VALUES ({', '.join('?' * len(newest))})",
                     newest)
    assert (await client.get("/readyz")).status_code == 200


async def test_readiness_fails_when_the_worker_loop_stops_and_recovers(
    bridge: tuple[Services, httpx.AsyncClient, Clock],
) -> None:
    services, client, clock = bridge
    assert services.worker is not None
    await services.worker.stop(grace=1)
    clock.now += 120  # the last heartbeat is now two minutes old
    stopped = await client.get("/readyz")
    assert stopped.status_code == 503 and stopped.json()["failing"] == ["worker"]

    await services.worker.start()

    async def ready() -> bool:
        return (await client.get("/readyz")).status_code == 200

    await eventually(ready, "readiness to recover")


async def test_deliveries_are_answered_503_once_the_writer_has_stopped(
    bridge: tuple[Services, httpx.AsyncClient, Clock],
) -> None:
    services, client, _ = bridge
    assert services.committer is not None
    await services.committer.stop()
    refused = await deliver(client)
    assert refused.status_code == 503 and refused.headers["retry-after"]
    assert refused.json()["error"] == "storage_unavailable"


async def test_the_same_body_under_a_new_delivery_id_is_answered_duplicate(
    bridge: tuple[Services, httpx.AsyncClient, Clock],
) -> None:
    _, client, _ = bridge
    assert (await deliver(client)).json()["status"] == "accepted"
    replay = await deliver(client, **{"X-GitHub-Delivery": "a-brand-new-id"})
    assert replay.status_code == 200 and replay.json()["status"] == "duplicate"


async def test_a_failed_start_closes_the_store_and_the_http_client(
    tmp_path: Path, fakes: tuple[FakeCoder, str, FakeGitHub, str],
) -> None:
    _, coder_url, _, github_url = fakes
    services = await build_services(make_config(tmp_path, coder_url, github_url))
    assert services.worker is not None

    async def broken_start() -> None:
        raise RuntimeError("cannot start")

    services.worker.start = broken_start  # type: ignore[method-assign]
    app = create_app(services)
    with pytest.raises(RuntimeError, match="cannot start"):
        async with app.router.lifespan_context(app):
            pass
    assert services.http.is_closed
    with pytest.raises(StoreError, match="closed"):
        await services.store.ping()


async def test_a_programming_error_fails_the_metrics_scrape_instead_of_hiding(
    bridge: tuple[Services, httpx.AsyncClient, Clock],
) -> None:
    services, client, _ = bridge

    async def broken_stats(*, now: float) -> tuple[int, float]:
        raise TypeError("a bug")

    services.store.queue_stats = broken_stats  # type: ignore[method-assign]
    with pytest.raises(TypeError, match="a bug"):
        await client.get("/metrics")


async def test_metrics_keep_scraping_while_the_store_does_not_answer(
    bridge: tuple[Services, httpx.AsyncClient, Clock],
) -> None:
    services, client, _ = bridge

    async def down(*, now: float) -> tuple[int, float]:
        raise StoreError("database is locked")

    services.store.queue_stats = down  # type: ignore[method-assign]
    assert (await client.get("/metrics")).status_code == 200


async def test_metrics_parse_and_move_as_deliveries_flow(
    bridge: tuple[Services, httpx.AsyncClient, Clock],
) -> None:
    _, client, _ = bridge
    before = (await client.get("/metrics")).text

    assert (await deliver(client)).json()["status"] == "accepted"
    assert (await deliver(client)).json()["status"] == "duplicate"
    # Removing the trigger label is a change the worker acts on (it stops the agent).
    assert (await deliver(client, "issues__unlabeled.json")).json()["status"] == "accepted"
    assert (await deliver(client, "ping.json")).json()["status"] == "pong"
    bad = await deliver(client, **{"X-Hub-Signature-256": "sha256=" + "0" * 64})
    assert bad.status_code == 401

    response = await client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    after = response.text

    def moved(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    total = "coder_bridge_deliveries_total"
    assert moved(total, tracker="github", outcome="accepted", reason="") == 2
    assert moved(total, tracker="github", outcome="duplicate", reason="") == 1
    assert moved(total, tracker="github", outcome="ignored", reason="ping") == 1
    assert moved(total, tracker="github", outcome="rejected", reason="signature") == 1
    assert moved("coder_bridge_signature_failures_total", tracker="github") == 1
    names = {family.name for family in text_string_to_metric_families(after)}
    assert {"coder_bridge_queue_depth", "coder_bridge_queue_oldest_age_seconds",
            "coder_bridge_api_call_seconds", "coder_bridge_jobs"} <= names


async def test_worker_outcomes_and_api_calls_show_in_metrics(
    bridge: tuple[Services, httpx.AsyncClient, Clock],
    fakes: tuple[FakeCoder, str, FakeGitHub, str],
) -> None:
    _, client, _ = bridge
    _, _, github, _ = fakes
    before = (await client.get("/metrics")).text
    await deliver(client)  # nobody linked: the worker posts the "link your account" comment
    after = ""

    def moved(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    async def delegation_counted() -> bool:
        nonlocal after
        after = (await client.get("/metrics")).text
        return moved("coder_bridge_jobs_total", outcome="done") == 1

    await eventually(delegation_counted, "the job to be counted")
    assert len(github.comments("Codertocat/Hello-World", 1)) == 1
    assert moved("coder_bridge_delegations_total", outcome="needs_link") == 1
    assert moved("coder_bridge_api_calls_total", service="github", endpoint="comments",
                 status="2xx") >= 2  # search, then create
    assert moved("coder_bridge_api_call_seconds_count", service="github",
                 endpoint="comments") >= 2


async def test_logs_carry_the_bound_ids_of_delivery_and_job(
    bridge: tuple[Services, httpx.AsyncClient, Clock],
) -> None:
    _, client, _ = bridge
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as entries:
        await deliver(client)
        await eventually(lambda: any(e["event"] == "job_finished" for e in entries),
                         "the job to finish")
    by_event: dict[str, dict[str, Any]] = {e["event"]: e for e in entries}
    delivery = "72d3162e-cc78-11e3-81ab-4c9367dc0958"
    assert by_event["webhook_accepted"]["delivery_id"] == delivery
    assert by_event["webhook_accepted"]["tracker"] == "github"
    for event in ("job_claimed", "comment_posted", "job_finished"):
        entry = by_event[event]
        assert entry["delivery_id"] == delivery and entry["tracker"] == "github"
        assert entry["attempt"] == 1 and isinstance(entry["job_id"], int)


def test_endpoint_kinds_are_a_small_fixed_vocabulary() -> None:
    assert classify_endpoint("/api/v2/tasks/me") == "tasks"
    assert classify_endpoint("/api/experimental/chats") == "chats"
    assert classify_endpoint("/api/v2/templateversions/x/presets") == "presets"
    assert classify_endpoint("/repos/a/b/issues/1/comments") == "comments"
    assert classify_endpoint("/app/installations/1/access_tokens") == "app_token"
    assert classify_endpoint("/graphql") == "graphql"
    assert classify_endpoint("/something/else/42") == "other"


async def test_instrumented_transport_counts_errors_by_service() -> None:
    from service import metrics

    def fail(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("down", request=request)

    transport = InstrumentedTransport(
        httpx.MockTransport(fail),
        [("https://coder.example.com", "coder"), ("https://ghe.example.com/api/v3", "github")])
    counter = metrics.API_CALLS.labels("coder", "tasks", "error")
    before = counter._value.get()
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(httpx.ConnectError):
            await client.post("https://coder.example.com/api/v2/tasks/me")
    assert counter._value.get() == before + 1
    assert transport.service_of(httpx.URL("https://ghe.example.com/api/v3/repos")) == "github"
    assert transport.service_of(httpx.URL("https://ghe.example.com/other")) == "other"


async def test_an_outage_of_coder_and_github_does_not_fail_readiness(tmp_path: Path) -> None:
    dead_coder, dead_github = (f"http://127.0.0.1:{free_port()}" for _ in range(2))
    services = await build_services(make_config(tmp_path, dead_coder, dead_github))
    await services.start()
    transport = httpx.ASGITransport(app=create_app(services))
    async with httpx.AsyncClient(transport=transport, base_url="http://bridge") as client:
        await deliver(client)  # the worker now fails to reach Coder and GitHub, and retries

        async def retrying() -> bool:
            text = (await client.get("/metrics")).text
            return sample(text, "coder_bridge_api_calls_total", service="github",
                          status="error") > 0

        await eventually(retrying, "the worker to hit the outage")
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.json()
    await services.close()
