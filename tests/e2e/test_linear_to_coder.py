"""End to end: a signed Linear delivery → the real bridge → fake Coder and Linear."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.e2e.harness import AUTHOR_LINEAR_ID, Bridge, running_bridge, wait_for


def wait_for_linear_comment(bridge: Bridge, contains: str) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        matching = [c for c in bridge.linear_comments() if contains in c["body"]]
        return matching[0] if matching else None

    return wait_for(found, what=f"a Linear comment containing {contains!r}")


def test_labelled_linear_issue_becomes_one_task_and_one_comment(tmp_path: Path) -> None:
    with running_bridge(tmp_path) as bridge:
        bridge.link_author()
        response = bridge.deliver_linear()
        assert response.status_code == 200
        assert response.json()["status"] == "accepted"

        comment = wait_for_linear_comment(bridge, "/tasks/codertocat/")
        [task] = bridge.coder.tasks
        assert f"{bridge.coder_url}/tasks/codertocat/{task['id']}" in comment["body"]
        assert "ENG-123" in task["initial_prompt"]
        assert "Team: ENG" in task["initial_prompt"]
        assert comment["body"].startswith("**Starting**")
        assert "9b2f6c1d" not in comment["body"]  # the marker names nothing guessable


def test_same_linear_delivery_three_times_makes_one_task(tmp_path: Path) -> None:
    with running_bridge(tmp_path) as bridge:
        bridge.link_author()
        answers = [bridge.deliver_linear().json()["status"] for _ in range(3)]
        assert answers == ["accepted", "duplicate", "duplicate"]
        wait_for_linear_comment(bridge, "/tasks/codertocat/")
        wait_for(lambda: "job_finished" in bridge.logs(), what="the job to finish")
        assert len(bridge.coder.tasks) == 1
        assert len(bridge.linear_comments()) == 1


def test_stale_linear_delivery_is_refused_and_creates_nothing(tmp_path: Path) -> None:
    with running_bridge(tmp_path) as bridge:
        bridge.link_author()
        stale = bridge.deliver_linear(sent_at=time.time() - 61)
        assert stale.status_code == 401
        future = bridge.deliver_linear(sent_at=time.time() + 120)
        assert future.status_code == 401
        assert "no deliveries" in bridge.cli("deliveries", "list").stdout
        assert bridge.coder.tasks == [] and bridge.linear_comments() == []


def test_unlinked_linear_author_gets_one_comment_on_how_to_link(tmp_path: Path) -> None:
    with running_bridge(tmp_path) as bridge:
        bridge.deliver_linear()
        comment = wait_for_linear_comment(bridge, "has not connected a Coder account")
        assert f"users link --linear-id {AUTHOR_LINEAR_ID} --coder-token-stdin" in comment["body"]
        wait_for(lambda: "job_finished" in bridge.logs(), what="the job to finish")
        assert len(bridge.linear_comments()) == 1
        assert bridge.coder.tasks == []


def test_linear_rate_limit_on_http_400_is_retried(tmp_path: Path) -> None:
    with running_bridge(tmp_path) as bridge:
        bridge.link_author()
        bridge.linear.fail_ratelimited("commentCreate", retry_after=1)
        bridge.deliver_linear()
        wait_for_linear_comment(bridge, "/tasks/codertocat/")
        assert "job_retry_scheduled" in bridge.logs()
        assert len(bridge.linear_comments()) == 1 and len(bridge.coder.tasks) == 1
