"""End to end on PostgreSQL: separate web and worker processes share one database."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.e2e.harness import Bridge, running_bridge, wait_for
from tests.fakes.server import free_port

POSTGRES_URL = os.environ.get("CODER_BRIDGE_TEST_POSTGRES_URL",
                              "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh schema on the test server, dropped afterwards; yields a URL selecting it."""
    schema = f"e2e_{secrets.token_hex(6)}"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(POSTGRES_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{POSTGRES_URL}?search_path={schema}"
    finally:
        asyncio.run(run(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))


def test_web_and_worker_roles_on_postgres_make_one_task(tmp_path: Path, postgres_url: str) -> None:
    with running_bridge(tmp_path, start=False, storage_url=postgres_url) as web:
        web.link_author()
        web.start("--role", "web")
        worker_dir = tmp_path / "worker"
        worker_dir.mkdir()
        worker = Bridge(worker_dir, web.coder, web.github, web.linear, web.coder_url,
                        web.github_url, web.linear_url, free_port(), settings=web.settings)
        try:
            answers = [web.deliver().json()["status"] for _ in range(3)]
            assert answers == ["accepted", "duplicate", "duplicate"]
            assert web.comments() == []  # the web role never runs jobs

            worker.start("--role", "worker")
            web.wait_for_comment("/tasks/codertocat/")
            wait_for(lambda: "job_finished" in worker.logs(), what="the job to finish")
            assert len(web.coder.tasks) == 1 and len(web.comments()) == 1
            assert "72d3162e-cc78-11e3-81ab-4c9367dc0958" in web.cli("deliveries", "list").stdout
            assert worker.stop() == 0 and web.stop() == 0
        finally:
            if worker.process is not None and worker.process.poll() is None:
                worker.process.kill()


def test_two_worker_replicas_follow_the_work_and_edit_each_change_once(
    tmp_path: Path, postgres_url: str,
) -> None:
    """Status rounds are claimed per account and check jobs run in the issue's turn, so
    two replicas never check one account twice at once nor edit one comment twice."""
    with running_bridge(tmp_path, start=False, storage_url=postgres_url) as web:
        web.link_author()
        web.start("--role", "web")
        workers = []
        for name in ("w1", "w2"):
            workdir = tmp_path / name
            workdir.mkdir()
            workers.append(Bridge(workdir, web.coder, web.github, web.linear, web.coder_url,
                                  web.github_url, web.linear_url, free_port(),
                                  settings=web.settings))
        try:
            for worker in workers:
                worker.start("--role", "worker")
            web.deliver()
            web.wait_for_status("Starting", contains="/tasks/codertocat/")
            [task] = web.coder.tasks
            for state in ("working", "idle"):
                web.coder.set_task_state(task["id"], status="active", state=state,
                                         message=f"now {state}")
                web.wait_for_status("Working" if state == "working" else "Done",
                                    contains=f"now {state}")
            lists_before = web.coder.requests.count(("GET", "/api/v2/tasks"))
            wait_for(lambda: web.coder.requests.count(("GET", "/api/v2/tasks"))
                     >= lists_before + 3, what="three more status rounds")
            assert len(web.comments()) == 1
            edits = [r for r in web.github.requests if r[0] == "PATCH"]
            assert len(edits) == 2  # Working, Done: one edit per change, not one per replica
            assert all(w.stop() == 0 for w in workers) and web.stop() == 0
        finally:
            for worker in workers:
                if worker.process is not None and worker.process.poll() is None:
                    worker.process.kill()
