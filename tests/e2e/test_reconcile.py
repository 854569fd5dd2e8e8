"""End to end: labelled issues whose webhook never arrived are found again."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.e2e.harness import (
    AUTHOR_GITHUB_ID,
    AUTHOR_LINEAR_ID,
    REPOSITORY,
    github_delivery,
    running_bridge,
    wait_for,
)

AUTHOR = (int(AUTHOR_GITHUB_ID), "Codertocat")
TRIGGER = "bug"
LINEAR_LABEL = ("d4c3b2a1-0f9e-4d8c-9b7a-6f5e4d3c2b1a", "delegate-to-agent")


def recently(seconds_ago: float = 60) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - seconds_ago))


def test_a_bridge_down_while_issues_were_labelled_finds_them_on_restart(
    tmp_path: Path,
) -> None:
    with running_bridge(tmp_path, start=False, repositories=["Codertocat/*"],
                        reconcile_interval=0) as bridge:
        bridge.link_author()
        bridge.start()
        bridge.deliver()  # issue 1 arrives as usual
        bridge.wait_for_comment("/tasks/codertocat/")
        assert bridge.stop() == 0

        # While the bridge is down: five more issues are labelled, and the label is added
        # again on issue 1 (whose delegation must stay the only one).
        for number in range(2, 7):
            bridge.github.add_labelled_issue(REPOSITORY, number, label=TRIGGER, author=AUTHOR,
                                             labeler=AUTHOR, updated_at=recently())
        bridge.github.add_labelled_issue(REPOSITORY, 1, label=TRIGGER, author=AUTHOR,
                                         labeler=AUTHOR, updated_at=recently())
        bridge.github.add_labelled_issue(REPOSITORY, 7, label=TRIGGER, author=AUTHOR,
                                         labeler=AUTHOR, updated_at=recently(3 * 86400))
        bridge.github.add_labelled_issue(REPOSITORY, 8, label=TRIGGER, author=AUTHOR,
                                         labeler=AUTHOR, updated_at=recently(), state="closed")
        bridge.github.add_labelled_issue(REPOSITORY, 9, label=TRIGGER, author=AUTHOR,
                                         labeler=(555, "hubot"), updated_at=recently())
        bridge.linear.add_user("Ada Lovelace", AUTHOR_LINEAR_ID)
        bridge.linear.add_labelled_issue(
            "6c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f", "ENG-124", creator="Ada Lovelace",
            labeler="Ada Lovelace", label=LINEAR_LABEL, updated_at=recently())

        bridge.settings["reconcile_interval"] = 60
        bridge.start()  # the first sweep runs at start (none has finished for 60 s)
        wait_for(lambda: len(bridge.coder.tasks) == 7, timeout=30, what="six more tasks")
        for number in range(1, 7):
            wait_for(lambda n=number: len(bridge.comments(n)) == 1,
                     what=f"issue {number}'s comment")
        assert bridge.comments(7) == [] and bridge.comments(8) == []  # too old; closed
        # Labelled by someone else: consent holds as for a live delivery.
        asked = bridge.wait_for_comment("Waiting for approval", number=9)
        assert "@hubot asked" in asked["body"]
        wait_for(lambda: bridge.linear.comments("6c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"),
                 what="the Linear issue's comment")
        assert "reconcile_done" in bridge.logs()

        # On demand, twice at once: nothing doubles; every issue has its delegation.
        runs = [subprocess.Popen(
            [sys.executable, "-m", "service", "reconcile", "--config", str(bridge.config_path)],
            cwd=bridge.workdir, env=bridge.env(), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True) for _ in range(2)]
        outputs = [run.communicate(timeout=60)[0] for run in runs]
        assert all(run.returncode == 0 for run in runs)
        assert any("has a delegation already: left alone" in out for out in outputs)
        assert all("queued as if" not in out for out in outputs)
        assert len(bridge.coder.tasks) == 7
        assert all(len(bridge.comments(n)) == 1 for n in range(1, 7))


def test_a_github_apps_failed_deliveries_are_sent_again_and_acted_on(tmp_path: Path) -> None:
    """With a GitHub App, a sweep asks GitHub to send again the deliveries that failed
    while the bridge was down and that no search finds: here `/agent stop`, which then
    stops the running task. A failed label is left to the search, a delivery that never
    succeeded in three attempts is not asked for again, and one that succeeded is not."""
    with running_bridge(tmp_path, github_app=True, reconcile_interval=0) as bridge:
        bridge.link_author()
        bridge.deliver()
        bridge.wait_for_comment("/tasks/codertocat/")
        [task] = bridge.coder.tasks
        bridge.coder.set_task_state(task["id"], status="active", state="working")
        bridge.wait_for_status("Working")
        assert bridge.stop() == 0

        # While the bridge is down, the author comments `/agent stop`: GitHub's delivery
        # fails (and so do others).
        comment_id, payload = bridge.comment("/agent stop")
        body, headers = github_delivery("issue_comment", payload, "stop-while-down")
        history = bridge.github
        history.record_hook_delivery("stop-while-down", event="issue_comment",
                                     action="created", status_code=502, payload=body,
                                     headers=headers)
        history.record_hook_delivery("label-while-down", event="issues", action="labeled",
                                     status_code=502)
        for _ in range(3):
            history.record_hook_delivery("never-verifies", event="issue_comment",
                                         action="created", status_code=401)
        history.record_hook_delivery("went-fine", event="issue_comment", action="created",
                                     status_code=200)
        history.record_hook_delivery("an-edit", event="issue_comment", action="edited",
                                     status_code=502)  # the bridge acts on new comments only
        history.hook_target = lambda sent, sent_headers: bridge.post_github(
            sent, sent_headers).status_code

        bridge.settings["reconcile_interval"] = 60
        bridge.start()  # the first sweep runs at start
        stopped = bridge.wait_for_status("Stopped", timeout=30)
        assert "by @Codertocat" in stopped["body"]
        assert len(bridge.coder.stops) == 1
        assert history.hook_attempts("stop-while-down") == [502, 200]
        assert len(history.hook_redeliveries) == 1
        assert history.hook_attempts("label-while-down") == [502]
        assert history.hook_attempts("an-edit") == [502]
        assert history.hook_attempts("never-verifies") == [401, 401, 401]
        assert "reconcile_redelivered" in bridge.logs()
        assert comment_id in [c["id"] for c in bridge.comments()]
