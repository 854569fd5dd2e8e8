"""End to end on PostgreSQL: separate web and worker processes share one database."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
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
                    worker.kill()


def replica(first: Bridge, name: str) -> Bridge:
    """Another bridge process on the same fakes, settings and database."""
    workdir = first.workdir / name
    workdir.mkdir()
    return Bridge(workdir, first.coder, first.github, first.linear, first.coder_url,
                  first.github_url, first.linear_url, free_port(), settings=first.settings)


def test_two_web_and_two_worker_replicas_lose_nothing_when_a_worker_is_killed(
    tmp_path: Path, postgres_url: str,
) -> None:
    issues = range(21, 51)
    with running_bridge(tmp_path, start=False, storage_url=postgres_url, lease_seconds=120,
                        comments_per_minute=0, comments_per_hour=0) as web:
        web.link_author()
        web.start("--role", "web")
        others = [replica(web, name) for name in ("web2", "worker1", "worker2")]
        web2, worker1, worker2 = others
        try:
            web2.start("--role", "web")
            worker1.start("--role", "worker")
            worker2.start("--role", "worker")
            web.coder.delay_next("create_task", 0.4, times=len(issues))
            for index, number in enumerate(issues):
                front = (web, web2)[index % 2]
                assert front.deliver_issue(number).json()["status"] == "accepted"
                # GitHub redelivers the same delivery, here through the other replica.
                again = (web2, web)[index % 2].deliver_issue(number)
                assert again.json()["status"] == "duplicate"
                if index == len(issues) // 2:
                    wait_for(lambda: web.coder.in_flight > 0, what="a create in flight")
                    worker1.kill()  # mid-burst, holding jobs
            killed = time.monotonic()
            wait_for(lambda: all(len(web.comments(n)) == 1 for n in issues), timeout=60,
                     what="every issue's comment")
            assert time.monotonic() - killed < 40  # taken over in seconds, not the 120 s lease
            assert "jobs_taken_back" in worker2.logs()
            worker1.start("--role", "worker")  # back, and nothing more happens
            wait_for(lambda: len(web.coder.tasks) >= len(issues), what="every task")
            assert len(web.coder.tasks) == len(issues)  # none twice
            assert all(len(web.comments(n)) == 1 for n in issues)
            names = [task["name"] for task in web.coder.tasks]
            assert len(set(names)) == len(names)
            assert all(bridge.stop() == 0 for bridge in (worker1, worker2, web2, web))
        finally:
            for bridge in others:
                if bridge.process is not None and bridge.process.poll() is None:
                    bridge.kill()


def test_two_workers_share_one_github_content_budget(tmp_path: Path, postgres_url: str) -> None:
    """GitHub counts writes per token: two workers together stay under the limit."""
    issues = range(61, 73)
    with running_bridge(tmp_path, start=False, storage_url=postgres_url,
                        comments_per_minute=5, comments_per_hour=500) as web:
        web.link_author()
        web.start("--role", "web")
        workers = [replica(web, name) for name in ("w1", "w2")]
        try:
            for worker in workers:
                worker.start("--role", "worker")
            web.coder.delay_next("create_task", 0.3, times=len(issues))  # both get some
            for number in issues:
                assert web.deliver_issue(number).json()["status"] == "accepted"
            wait_for(lambda: len(web.coder.tasks) == len(issues), timeout=30,
                     what="every task (tasks are not held back by GitHub's limit)")
            # Every job beyond the budget was told to wait, by one worker or the other...
            wait_for(lambda: sum(w.logs().count("job_deferred_by_pacing") for w in workers)
                     >= len(issues) - 5, what="the jobs beyond the budget to be deferred")
            assert all("task_created" in w.logs() for w in workers)  # both were writing
            # ... so the two wrote five comments together: one budget, not five each.
            writes = [r for r in web.github.timed_requests
                      if r[1] in ("POST", "PATCH") and "/comments" in r[2]]
            assert len(writes) == 5
        finally:
            for worker in workers:
                if worker.process is not None and worker.process.poll() is None:
                    worker.kill()
