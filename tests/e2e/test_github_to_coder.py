"""End to end: a signed GitHub delivery → the real bridge process → fake Coder and GitHub.

Each test proves an outcome people would see: tasks on the Coder fake,
comments on the GitHub fake, answers to the tracker, the CLI's view.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from tests.conftest import fixture_bytes, sign_github
from tests.e2e.harness import AUTHOR_GITHUB_ID, running_bridge, wait_for

TASK_LINK = re.compile(r"\((?P<url>http://127\.0\.0\.1:\d+/tasks/codertocat/[0-9a-f-]{36})\)")


def task_link(comment: dict[str, object]) -> str:
    match = TASK_LINK.search(str(comment["body"]))
    assert match, comment["body"]
    return match.group("url")


def test_labelled_issue_becomes_one_task_and_one_comment(tmp_path: Path) -> None:
    with running_bridge(tmp_path, presets=[{"Name": "small", "Default": True}]) as bridge:
        bridge.link_author()
        response = bridge.deliver()
        assert response.status_code == 200
        assert response.json() == {"status": "accepted",
                                   "delivery_id": "72d3162e-cc78-11e3-81ab-4c9367dc0958"}

        comment = bridge.wait_for_comment("/tasks/codertocat/")
        [task] = bridge.coder.tasks
        assert task_link(comment) == f"{bridge.coder_url}/tasks/codertocat/{task['id']}"
        assert re.search(r"<!-- coder-bridge:[0-9a-f]{32} -->$", comment["body"])
        assert "github:186853002" not in comment["body"]  # the marker gives nothing away
        assert task["name"].startswith("cb-")
        assert "Spelling error in the README file" in task["initial_prompt"]
        assert "https://github.com/Codertocat/Hello-World/issues/1" in task["initial_prompt"]
        assert bridge.coder.preset_of(task["id"]) == "small"  # the default preset was chosen

        listing = bridge.cli("deliveries", "list")
        assert "72d3162e-cc78-11e3-81ab-4c9367dc0958" in listing.stdout
        assert "\ttrigger\tdone\tcreated\t1\t" in listing.stdout
        assert bridge.stop() == 0


def test_redelivered_webhook_creates_one_task(tmp_path: Path) -> None:
    with running_bridge(tmp_path) as bridge:
        bridge.link_author()
        answers = [bridge.deliver().json()["status"] for _ in range(3)]
        assert answers == ["accepted", "duplicate", "duplicate"]
        bridge.wait_for_comment("/tasks/codertocat/")
        wait_for(lambda: "job_finished" in bridge.logs(), what="the job to finish")
        assert len(bridge.coder.tasks) == 1
        assert len(bridge.comments()) == 1


@pytest.mark.parametrize("first", ["issues__opened.json", "issues__labeled.json"])
def test_opened_and_labeled_deliveries_for_one_issue_make_one_task(
    tmp_path: Path, first: str,
) -> None:
    """An issue created with the label sends both, in no fixed order: one request."""
    second = "issues__labeled.json" if first == "issues__opened.json" else "issues__opened.json"
    with running_bridge(tmp_path) as bridge:
        bridge.link_author()
        assert bridge.deliver(first).json()["status"] == "accepted"
        assert bridge.deliver(second).json()["status"] == "accepted"
        wait_for(lambda: bridge.logs().count("job_finished") >= 2, what="both jobs")
        assert len(bridge.coder.tasks) == 1
        [comment] = bridge.comments()
        assert task_link(comment)
        assert "already has" not in comment["body"]  # the comment stays as it was
        assert [r for r in bridge.github.requests if r[0] == "PATCH"] == []  # no second edit
        assert "trigger_joined" in bridge.logs()
        assert not [r for r in bridge.coder.requests  # nor a look at the task's state
                    if r[0] == "GET" and "/tasks/codertocat/" in r[1]]


def test_transient_coder_failures_end_in_one_task(tmp_path: Path) -> None:
    with running_bridge(tmp_path) as bridge:
        bridge.link_author()
        bridge.coder.fail_next("create_task", 503, retry_after=1, times=2)
        bridge.deliver()
        bridge.wait_for_comment("/tasks/codertocat/", timeout=30)
        assert len(bridge.coder.tasks) == 1
        assert bridge.logs().count("job_retry_scheduled") == 2


def test_failure_after_coder_created_the_task_still_one_task(tmp_path: Path) -> None:
    with running_bridge(tmp_path) as bridge:
        bridge.link_author()
        bridge.coder.fail_next("create_task", 502, after_acting=True, retry_after=1)
        bridge.deliver()
        comment = bridge.wait_for_comment("/tasks/codertocat/", timeout=30)
        [task] = bridge.coder.tasks
        assert task_link(comment).endswith(task["id"])


def test_timeout_after_coder_acted_still_one_task(tmp_path: Path) -> None:
    with running_bridge(tmp_path, coder_timeout=0.5) as bridge:
        bridge.link_author()
        bridge.coder.delay_next("create_task", 1.5, after_acting=True)
        bridge.deliver()
        bridge.wait_for_comment("/tasks/codertocat/", timeout=30)
        assert len(bridge.coder.tasks) == 1


def test_unlinked_author_is_told_how_to_link(tmp_path: Path) -> None:
    with running_bridge(tmp_path) as bridge:
        bridge.deliver()
        comment = bridge.wait_for_comment("has not connected a Coder account")
        assert "https://bridge.example.test/connect" in comment["body"]
        assert f"users link --github-id {AUTHOR_GITHUB_ID} --coder-token-stdin" in comment["body"]
        assert "https://bridge.example.test" in comment["body"]
        assert bridge.coder.tasks == []

        # Once linked, the request goes on by itself: the same comment becomes the link.
        bridge.link_author()
        bridge.wait_for_comment("/tasks/codertocat/", timeout=10)
        assert len(bridge.comments()) == 1
        assert len(bridge.coder.tasks) == 1


def test_revoked_token_is_marked_invalid_and_the_issue_says_relink(tmp_path: Path) -> None:
    with running_bridge(tmp_path) as bridge:
        token = bridge.link_author()
        bridge.coder.revoke_token(token)
        bridge.deliver()
        comment = bridge.wait_for_comment("rejected the token")
        assert "users link --github-id 21031067" in comment["body"]
        listing = bridge.cli("users", "list")
        assert "token invalid" in listing.stdout
        assert bridge.coder.tasks == []


def test_permanent_coder_error_is_explained_in_plain_words(tmp_path: Path) -> None:
    with running_bridge(tmp_path, template="no-such-template") as bridge:
        bridge.link_author()
        bridge.deliver()
        comment = bridge.wait_for_comment("could not start an agent")
        assert "Reason:" in comment["body"]
        assert "not found" in comment["body"].lower()
        assert bridge.coder.tasks == []


def test_gives_up_after_max_attempts_and_says_why(tmp_path: Path) -> None:
    with running_bridge(tmp_path, max_attempts=2) as bridge:
        bridge.link_author()
        bridge.coder.fail_next("create_task", 500, retry_after=1, times=2)
        bridge.deliver()
        comment = bridge.wait_for_comment("gave up", timeout=30)
        assert "after 2 attempts" in comment["body"]
        wait_for(lambda: "\tfailed\tgave_up\t2\t" in bridge.cli("deliveries", "list").stdout,
                 what="the job to be recorded as failed")
        assert bridge.coder.tasks == []

        # An operator re-runs it once Coder is healthy again: same comment, now the link.
        result = bridge.cli("deliveries", "retry", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
        assert result.returncode == 0, result.stderr
        bridge.wait_for_comment("/tasks/codertocat/")
        assert len(bridge.comments()) == 1 and len(bridge.coder.tasks) == 1


def test_github_rate_limit_is_honoured_then_the_comment_lands(tmp_path: Path) -> None:
    with running_bridge(tmp_path) as bridge:
        bridge.link_author()
        bridge.github.fail_secondary_rate_limit("create_comment", retry_after=1)
        bridge.deliver()
        bridge.wait_for_comment("/tasks/codertocat/", timeout=30)
        assert len(bridge.comments()) == 1
        assert len(bridge.coder.tasks) == 1
        assert "job_retry_scheduled" in bridge.logs()


def test_coder_2_28_uses_the_experimental_tasks_path(tmp_path: Path) -> None:
    with running_bridge(tmp_path, coder_mode="tasks-experimental") as bridge:
        bridge.link_author()
        bridge.deliver()
        bridge.wait_for_comment("/tasks/codertocat/")
        assert ("POST", "/api/experimental/tasks/me") in bridge.coder.requests


def test_new_trigger_points_to_active_task_and_starts_anew_after_it_ended(tmp_path: Path) -> None:
    with running_bridge(tmp_path) as bridge:
        bridge.link_author()
        bridge.deliver()
        first = bridge.wait_for_comment("/tasks/codertocat/")
        [task] = bridge.coder.tasks

        bridge.coder.set_task_state(task["id"], status="active", state="working")
        bridge.wait_for_status("Working")
        edits = [r for r in bridge.github.requests if r[0] == "PATCH"]
        bridge.relabel("bbbbbbbb-0000-0000-0000-000000000002")
        bridge.relabel("bbbbbbbb-0000-0000-0000-00000000000b")  # and again
        wait_for(lambda: bridge.logs().count("delegation_shown") >= 3, what="the third trigger")
        # Both point to the running task: the comment already shows it; nothing changes.
        assert len(bridge.coder.tasks) == 1 and len(bridge.comments()) == 1
        assert [r for r in bridge.github.requests if r[0] == "PATCH"] == edits

        bridge.coder.set_task_state(task["id"], status="active", state="complete")
        bridge.relabel("cccccccc-0000-0000-0000-000000000003")
        wait_for(lambda: len(bridge.coder.tasks) == 2, what="a second task")
        wait_for(lambda: len(bridge.comments()) == 2, what="a second comment")
        assert first["id"] == bridge.comments()[0]["id"]
        markers = {c["body"].rsplit("<!--", 1)[1] for c in bridge.comments()}
        assert len(markers) == 2  # each delegation has its own marker


def test_process_killed_after_acknowledging_runs_the_job_after_restart(tmp_path: Path) -> None:
    with running_bridge(tmp_path, lease_seconds=5) as bridge:
        bridge.link_author()
        bridge.coder.delay_next("create_task", 3.0)  # the job is in flight when we kill
        assert bridge.deliver().json()["status"] == "accepted"
        wait_for(lambda: bridge.coder.in_flight > 0, what="the worker to call Coder")
        bridge.kill()
        assert bridge.comments() == []

        bridge.start()
        bridge.wait_for_comment("/tasks/codertocat/", timeout=30)
        assert len(bridge.coder.tasks) == 1
        assert len(bridge.comments()) == 1


def test_acknowledged_delivery_survives_sigkill_before_any_work(tmp_path: Path) -> None:
    with running_bridge(tmp_path, start=False) as bridge:
        bridge.link_author()
        bridge.start("--role", "web")
        assert bridge.deliver().json()["status"] == "accepted"
        bridge.kill()
        bridge.start()
        bridge.wait_for_comment("/tasks/codertocat/")
        assert len(bridge.coder.tasks) == 1


def test_token_never_leaks_to_database_logs_or_comments(tmp_path: Path) -> None:
    with running_bridge(tmp_path) as bridge:
        token = bridge.link_author()
        bridge.deliver()
        bridge.wait_for_comment("/tasks/codertocat/")
        bridge.coder.revoke_token(token)  # also exercise the 401 path's logging
        bridge.coder.set_task_state(bridge.coder.tasks[0]["id"], status="error")
        bridge.relabel("dddddddd-0000-0000-0000-000000000004")
        bridge.wait_for_comment("rejected the token")
        bridge.say("/agent this reaches nobody: the token is gone")
        bridge.wait_for_comment("its owner must connect their Coder account again")
        assert bridge.stop() == 0

        secret_part = token.split("-")[1]
        for path in tmp_path.glob("bridge.db*"):
            data = path.read_bytes()
            assert token.encode() not in data and secret_part.encode() not in data, path
        logs = bridge.logs()
        assert token not in logs and secret_part not in logs
        for comment in bridge.comments():
            assert secret_part not in comment["body"]
        listing = bridge.cli("users", "list")
        assert secret_part not in listing.stdout + listing.stderr


def test_bad_input_gets_clear_errors_and_stores_nothing(tmp_path: Path) -> None:
    with running_bridge(tmp_path, max_body_bytes=20000) as bridge:
        body = fixture_bytes("github/issues__labeled.json")
        wrong = bridge.deliver(headers={"X-Hub-Signature-256": sign_github(body, "wrong")})
        assert wrong.status_code == 401 and wrong.json()["error"] == "signature"
        missing = httpx.post(f"{bridge.url}/webhooks/github", content=body,
                             headers={"X-GitHub-Event": "issues", "X-GitHub-Delivery": "x"})
        assert missing.status_code == 401

        garbage = b"{not json"
        malformed = bridge.deliver(body=garbage, headers={"X-Hub-Signature-256":
                                                          sign_github(garbage)})
        assert malformed.status_code == 400 and malformed.json()["error"] == "malformed"

        huge = json.dumps({"padding": "x" * 30000}).encode()
        too_large = bridge.deliver(body=huge, headers={"X-Hub-Signature-256": sign_github(huge)})
        assert too_large.status_code == 413

        assert httpx.post(f"{bridge.url}/webhooks/linear", content=b"{}").status_code == 401
        assert bridge.deliver("ping.json").json() == {"status": "pong"}

        assert "no deliveries" in bridge.cli("deliveries", "list").stdout
        assert bridge.logs().count("webhook_rejected") == 5


def test_labeler_acts_when_configured(tmp_path: Path) -> None:
    with running_bridge(tmp_path, acting_user='["labeler"]') as bridge:
        bridge.link_author()  # the fixture's labeler is the author (Codertocat) too
        bridge.deliver()
        comment = bridge.wait_for_comment("/tasks/codertocat/")
        assert "Requested by: @Codertocat" in bridge.coder.tasks[0]["initial_prompt"]
        assert comment


def test_sigterm_during_a_burst_loses_nothing(tmp_path: Path) -> None:
    issues = range(1, 31)
    with running_bridge(tmp_path) as bridge:
        bridge.link_author()
        for number in issues:
            bridge.github.add_issue("Codertocat/Hello-World", number)
        # Slow enough that 30 tasks (4 at a time) outlast sending the burst even on a slow VM,
        # so the SIGTERM lands while jobs are queued and running.
        bridge.coder.delay_next("create_task", 1.0, times=len(issues))
        template = fixture_bytes("github/issues__labeled.json")
        for number in issues:
            body = template.replace(b'"number": 1,', b'"number": %d,' % number)
            answer = bridge.deliver(body=body, delivery_id=f"burst-{number}",
                                    headers={"X-Hub-Signature-256": sign_github(body)})
            assert answer.json()["status"] == "accepted"

        assert bridge.stop() == 0  # SIGTERM right after the last acknowledgement
        logs = bridge.logs()
        assert "worker_draining" in logs or "worker_stopped" in logs
        done_before_restart = len(bridge.coder.tasks)
        assert done_before_restart < len(issues)

        bridge.start()
        wait_for(lambda: len(bridge.coder.tasks) == len(issues), timeout=60,
                 what="every issue's task")
        for number in issues:
            wait_for(lambda n=number: len(bridge.github.comments("Codertocat/Hello-World", n))
                     == 1, what=f"the comment on issue {number}")
        names = {task["name"] for task in bridge.coder.tasks}
        assert len(names) == len(issues)


def test_nothing_from_inside_coder_reaches_the_issue_verbatim(tmp_path: Path) -> None:
    """A Coder error's ``detail`` and a failed build's log may carry hosts and secrets:
    the issue gets a category and a reference, the log the details under it."""
    leak = "postgres://coder:hunter2@db.internal:5432/coder AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI"
    with running_bridge(tmp_path) as bridge:
        bridge.link_author()
        bridge.coder.fail_next("create_task", 400, {"message": "Internal validation failed.",
                                                    "detail": leak})
        bridge.deliver()
        comment = bridge.wait_for_comment("could not start an agent")
        body = comment["body"]
        assert "hunter2" not in body and "db.internal" not in body and "wJalr" not in body
        assert "Internal validation failed" not in body  # not a refusal known to be safe
        reference = re.search(r"coder-bridge's log under ([0-9a-f]{10})", body)
        assert reference, body
        assert "Coder refused the request (HTTP 400)" in body
        logged = [line for line in bridge.logs().splitlines() if reference.group(1) in line]
        assert logged and "db.internal" in logged[0]

    (tmp_path / "chats").mkdir()
    with running_bridge(tmp_path / "chats", coder_mode="chats") as bridge:
        bridge.link_author()
        bridge.coder.configure_workspaces(auto_advance_after=1, final_status="failed",
                                          build_error=f"terraform apply: {leak}")
        bridge.deliver()
        comment = bridge.wait_for_comment("failed to build")
        assert "hunter2" not in comment["body"] and "terraform" not in comment["body"]
        assert "for this chat failed to build; no chat was started" in comment["body"]


def test_unlinking_and_relabelling_while_the_task_runs_adds_no_second_comment(
    tmp_path: Path,
) -> None:
    with running_bridge(tmp_path) as bridge:
        bridge.link_author()
        bridge.deliver()
        bridge.wait_for_comment("/tasks/codertocat/")
        [task] = bridge.coder.tasks
        bridge.coder.set_task_state(task["id"], status="active", state="working")
        bridge.wait_for_status("Working")
        assert bridge.cli("users", "unlink", "--github-id", "21031067").returncode == 0
        bridge.relabel("eeeeeeee-0000-0000-0000-000000000005")
        wait_for(lambda: bridge.logs().count("delegation_shown") >= 2, what="the relabel")
        assert len(bridge.comments()) == 1 and len(bridge.coder.tasks) == 1
        assert bridge.status().startswith("**Working**")  # I2: it points to the running task
