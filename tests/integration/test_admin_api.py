"""The admin API in process: bearer token, rate limit, JSON shapes, retry, reconcile."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from service.app import Services, build_services, create_app
from tests.conftest import eventually, fixture_bytes, github_headers, sample
from tests.integration.test_app import make_config

TOKEN = "admin-token-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[tuple[Services, httpx.AsyncClient]]:
    config = make_config(tmp_path, "http://127.0.0.1:9", "http://127.0.0.1:9",
                         admin_token=TOKEN)
    services = await build_services(config, role="web")
    await services.start()
    transport = httpx.ASGITransport(app=create_app(services))
    async with httpx.AsyncClient(transport=transport, base_url="http://bridge") as client:
        yield services, client
    await services.close()


async def test_every_admin_path_is_404_without_a_configured_token(tmp_path: Path) -> None:
    config = make_config(tmp_path, "http://127.0.0.1:9", "http://127.0.0.1:9")
    services = await build_services(config, role="web")
    transport = httpx.ASGITransport(app=create_app(services))
    async with httpx.AsyncClient(transport=transport, base_url="http://bridge") as client:
        for method, path in (("GET", "/admin/delegations"), ("GET", "/admin/deliveries"),
                             ("POST", "/admin/deliveries/x/retry"),
                             ("POST", "/admin/reconcile")):
            assert (await client.request(method, path, headers=AUTH)).status_code == 404
    await services.close()


async def test_a_missing_or_wrong_token_is_401_and_counted(
    admin: tuple[Services, httpx.AsyncClient],
) -> None:
    _, client = admin
    before = (await client.get("/metrics")).text
    missing = await client.get("/admin/delegations")
    wrong = await client.get("/admin/delegations", headers={"Authorization": "Bearer nope"})
    basic = await client.get("/admin/delegations", headers={"Authorization": f"Basic {TOKEN}"})
    assert [r.status_code for r in (missing, wrong, basic)] == [401] * 3
    assert missing.json() == {"error": "unauthorized",
                              "message": "a valid admin bearer token is required"}
    assert TOKEN not in missing.text
    after = (await client.get("/metrics")).text
    moved = (sample(after, "coder_bridge_admin_requests_total", outcome="unauthorized")
             - sample(before, "coder_bridge_admin_requests_total", outcome="unauthorized"))
    assert moved == 3


async def test_more_than_60_requests_a_minute_are_429_with_retry_after(
    admin: tuple[Services, httpx.AsyncClient],
) -> None:
    _, client = admin
    answers = [(await client.get("/admin/deliveries", headers=AUTH)).status_code
               for _ in range(61)]
    assert answers[:60] == [200] * 60 and answers[60] == 429
    limited = await client.get("/admin/deliveries", headers={"Authorization": "Bearer x"})
    assert limited.status_code == 429  # before the token is even looked at
    assert 1 <= int(limited.headers["retry-after"]) <= 60


async def test_delegations_deliveries_and_retry_as_documented(
    admin: tuple[Services, httpx.AsyncClient],
) -> None:
    services, client = admin
    assert (await client.post("/webhooks/github",
                              content=fixture_bytes("github/issues__labeled.json"),
                              headers=github_headers("issues__labeled.json"))).status_code == 200
    [delivery] = (await client.get("/admin/deliveries", headers=AUTH)).json()["deliveries"]
    assert set(delivery) == {"tracker", "delivery_id", "issue", "issue_key", "kind",
                             "received_at", "job_status", "outcome", "attempts", "last_error",
                             "delegation_state", "task_url"}
    assert (delivery["tracker"], delivery["job_status"]) == ("github", "queued")
    assert (delivery["issue"], delivery["kind"]) == ("Codertocat/Hello-World#1", "trigger")
    assert delivery["outcome"] is None
    assert delivery["received_at"].endswith("Z")

    busy = await client.post(f"/admin/deliveries/{delivery['delivery_id']}/retry",
                             headers=AUTH)
    assert busy.status_code == 409  # its job is still queued (this process runs no worker)
    unknown = await client.post("/admin/deliveries/no-such-id/retry", headers=AUTH)
    assert unknown.status_code == 404 and unknown.json()["error"] == "not_found"
    [job] = await services.store.claim("w", now=9e9, lease_seconds=30, limit=1)
    await services.store.fail_job(job.id, "w", error="coder: 500")
    again = await client.post(f"/admin/deliveries/{delivery['delivery_id']}/retry",
                              headers=AUTH)
    assert again.status_code == 202
    assert again.json() == {"status": "queued", "delivery_id": delivery["delivery_id"]}

    created = await services.store.create_delegation(
        issue_key="github:1:1", tracker="github", delivery_id="d", generation=1, now=1e9)
    listed = (await client.get("/admin/delegations", headers=AUTH)).json()["delegations"]
    assert [d["issue_key"] for d in listed] == ["github:1:1"]
    assert set(listed[0]) == {"issue", "issue_key", "issue_url", "tracker", "generation",
                              "state", "coder_user", "kind", "url", "created_at",
                              "updated_at"}
    assert listed[0]["state"] == created.state == "pending"
    none = await client.get("/admin/delegations?state=active", headers=AUTH)
    assert none.json() == {"delegations": []}
    for bad in ("state=bogus", "limit=0", "limit=1001", "limit=x"):
        assert (await client.get(f"/admin/delegations?{bad}", headers=AUTH)).status_code == 400


async def test_reconcile_starts_a_sweep(admin: tuple[Services, httpx.AsyncClient]) -> None:
    services, client = admin
    started = await client.post("/admin/reconcile", headers=AUTH)
    assert started.status_code == 202 and started.json() == {"status": "started"}

    async def swept() -> bool:
        return await services.store.last_sweep("reconcile") is not None

    await eventually(swept, "the sweep to finish")
