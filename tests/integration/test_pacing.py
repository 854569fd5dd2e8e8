"""A burst beyond GitHub's content limits: tasks at once, comments as the limits allow.

The assembled bridge runs in-process against the Coder and GitHub fakes on loopback,
with a GitHub client whose limiter allows 2 comments per 1.5 s (GitHub's own limits are
80 a minute and 500 an hour) and defers a job rather than wait more than 0.2 s.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from service.app import Services, build_services, create_app
from service.coder.client import CoderClient
from service.store.base import Identity
from service.trackers.github.api import GitHubClient, TokenAuth
from service.trackers.github.ratelimit import ContentRateLimiter
from tests.conftest import eventually, fixture_bytes, github_headers, sample, sign_github
from tests.fakes.coder import FakeCoder
from tests.fakes.github import DEFAULT_TOKEN, FakeGitHub
from tests.fakes.server import serve_in_thread
from tests.integration.test_app import make_config

REPO = "Codertocat/Hello-World"
ISSUES = range(1, 9)  # twice the worker slots (4)
AUTHOR_ID = "21031067"  # Codertocat, the fixture's issue author


def labeled_delivery(number: int) -> tuple[bytes, dict[str, str]]:
    """The fixture's ``issues``/``labeled`` delivery for issue ``number``, signed."""
    payload = json.loads(fixture_bytes("github/issues__labeled.json"))
    issue = payload["issue"]
    issue["number"], issue["id"] = number, 1000 + number
    issue["html_url"] = f"https://github.com/{REPO}/issues/{number}"
    body = json.dumps(payload).encode()
    headers = github_headers("issues__labeled.json") | {
        "X-GitHub-Delivery": str(uuid.uuid4()), "X-Hub-Signature-256": sign_github(body)}
    return body, headers


@pytest.fixture
async def bridge(tmp_path: Path) -> AsyncIterator[tuple[Services, httpx.AsyncClient,
                                                         FakeCoder, FakeGitHub]]:
    coder = FakeCoder("tasks")
    coder.add_template("default", "tasks-docker")
    coder_token = coder.add_user("codertocat")
    github = FakeGitHub(issues=[(REPO, n) for n in ISSUES])
    with serve_in_thread(coder.app()) as coder_url, serve_in_thread(github) as github_url:
        # No status sync: this test counts the trigger jobs and their comments alone.
        config = make_config(tmp_path, coder_url, github_url, sync_interval=0)
        async with httpx.AsyncClient() as http:
            limiter = ContentRateLimiter([(2, 1.5)])
            commenter = GitHubClient(github_url, TokenAuth(DEFAULT_TOKEN), http=http,
                                     limiter=limiter, max_pacing_wait=0.2)
            services = await build_services(config, trackers={"github": commenter})
            user = await CoderClient(coder_url, coder_token, http=http, timeout=10).fetch_me()
            key_id, ciphertext = services.vault.encrypt(coder_token, owner=user.id)
            await services.store.link_account(
                coder_user_id=user.id, coder_username=user.username, key_id=key_id,
                ciphertext=ciphertext, identities=[Identity("github", AUTHOR_ID, "Codertocat")])
            await services.start()
            transport = httpx.ASGITransport(app=create_app(services))
            async with httpx.AsyncClient(transport=transport, base_url="http://bridge") as client:
                yield services, client, coder, github
            await services.close()


async def test_a_burst_gets_every_task_at_once_and_its_comments_as_pacing_allows(
    bridge: tuple[Services, httpx.AsyncClient, FakeCoder, FakeGitHub], tmp_path: Path,
) -> None:
    _, client, coder, github = bridge
    before = (await client.get("/metrics")).text  # the registry is shared by the test process
    started = time.monotonic()
    for number in ISSUES:
        body, headers = labeled_delivery(number)
        answer = await client.post("/webhooks/github", content=body, headers=headers)
        assert answer.json()["status"] == "accepted"

    await eventually(lambda: len(coder.tasks) == len(ISSUES), "every task to be created")
    tasks_took = time.monotonic() - started
    commented = [n for n in ISSUES if github.comments(REPO, n)]
    assert tasks_took < 1.5 and len(commented) == 2  # the rest wait for the window, not a slot

    def all_commented() -> bool:
        return all(len(github.comments(REPO, n)) == 1 for n in ISSUES)

    await eventually(all_commented, "every issue's comment")
    links = {github.comments(REPO, n)[0]["body"].count("/tasks/") for n in ISSUES}
    assert links == {1}  # each comment links its task
    assert len(coder.tasks) == len(ISSUES)  # the re-runs found their tasks, made none
    after = ""

    def moved(outcome: str) -> float:
        return (sample(after, "coder_bridge_jobs_total", outcome=outcome)
                - sample(before, "coder_bridge_jobs_total", outcome=outcome))

    async def all_recorded() -> bool:  # a job is recorded just after its comment lands
        nonlocal after
        after = (await client.get("/metrics")).text
        return moved("done") == len(ISSUES)

    await eventually(all_recorded, "every job to be recorded as done")
    assert moved("deferred") >= len(ISSUES) - 2 and moved("done") == len(ISSUES)
    with sqlite3.connect(tmp_path / "bridge.db") as db:
        jobs = db.execute("SELECT status, attempts FROM jobs").fetchall()
    assert jobs == [("done", 1)] * len(ISSUES)  # deferrals are not attempts
