"""End to end: the issue follows the agent's work, and people talk to it from the issue.

The real bridge runs against the fakes with status checks every second. Each test
scripts a task's or chat's life on the Coder fake and reads what people on the issue
see: the one status comment going through its states, reactions, replies, labels.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import sample
from tests.e2e.harness import REPOSITORY, Bridge, running_bridge, wait_for

PR = "https://github.com/Codertocat/Hello-World/pull/2"


def patches(bridge: Bridge) -> int:
    """Comment edits the bridge sent to GitHub so far."""
    return len([r for r in bridge.github.requests if r[0] == "PATCH"])


def start_task(bridge: Bridge) -> dict[str, Any]:
    """Label the fixture's issue and wait for its task and **Starting** comment."""
    bridge.deliver()
    bridge.wait_for_status("Starting", contains="/tasks/codertocat/")
    [task] = bridge.coder.tasks
    return task


def seen_working(bridge: Bridge, task: dict[str, Any]) -> None:
    """Wait until a status check has read the task after now (its turn lasts that long)."""
    path = f"/api/v2/tasks/codertocat/{task['id']}"
    before = bridge.coder.requests.count(("GET", path))
    wait_for(lambda: bridge.coder.requests.count(("GET", path)) > before,
             what="a status check to read the task")


def eyes_on(bridge: Bridge, comment_id: int) -> bool:
    return any(r["content"] == "eyes" for r in bridge.github.reactions(comment_id))


def metric(bridge: Bridge, name: str, **labels: str) -> float:
    return sample(httpx.get(f"{bridge.url}/metrics", timeout=5).text, name, **labels)


def test_a_tasks_life_shows_on_the_issue_to_its_end(tmp_path: Path) -> None:
    with running_bridge(tmp_path, status_labels=True) as bridge:
        bridge.link_author()
        task = start_task(bridge)
        wait_for(lambda: bridge.github.labels(REPOSITORY, 1) == ["agent: starting"],
                 what="the status label")

        bridge.coder.set_task_state(task["id"], status="active", state="working",
                                    message="Reading the README")
        working = bridge.wait_for_status("Working", contains="Reading the README")
        assert re.search(r"since 20\d\d-\d\d-\d\d \d\d:\d\d UTC", working["body"])
        bridge.coder.set_task_state(task["id"], status="active", state="idle",
                                    message="Fixed the spelling")
        bridge.wait_for_status("Done", contains="Fixed the spelling")
        # Coder learns of the pull request after the turn ended: it still shows.
        bridge.coder.set_task_state(task["id"], status="active", state="idle",
                                    message="Fixed the spelling", uri=PR)
        bridge.wait_for_status("Done", contains=f"Pull request: {PR}")
        wait_for(lambda: bridge.github.labels(REPOSITORY, 1) == ["agent: done"],
                 what="the label to follow")

        # A follow-up by the acting user reaches the task with their own token.
        said = bridge.say("/agent please also add a test for it")
        wait_for(lambda: bridge.coder.task_inputs(task["id"])
                 == [("codertocat", "please also add a test for it")], what="the follow-up")
        wait_for(lambda: eyes_on(bridge, said), what="👀 on the command")
        bridge.wait_for_status("Working")
        seen_working(bridge, task)
        bridge.coder.set_task_state(task["id"], status="active", state="idle",
                                    message="Added a test", uri=PR)
        done = bridge.wait_for_status("Done", contains="Added a test")

        assert len(bridge.bridge_comments()) == 1  # one comment, edited along the way
        assert f"Pull request: {PR}" in done["body"]
        # One edit per change people can see: Working, Done, the PR, Working, Done.
        assert patches(bridge) == 5
        wait_for(lambda: bridge.github.labels(REPOSITORY, 1) == ["agent: done"],
                 what="the label to end at done")
        listing = bridge.cli("delegations", "list", "--state", "done").stdout
        assert f"{REPOSITORY}#1\tcodertocat\ttask\t{bridge.coder_url}/tasks/codertocat/" in listing


def test_a_chats_life_from_a_building_workspace_to_archived(tmp_path: Path) -> None:
    with running_bridge(tmp_path, coder_mode="chats", template="tasks-docker") as bridge:
        bridge.link_author()
        bridge.deliver()
        # The workspace builds first: the issue says Starting at once, without a link yet.
        first = bridge.wait_for_status("Starting", contains="appears here as soon as it exists")
        [workspace] = wait_for(lambda: bridge.coder.workspaces, what="the workspace")
        bridge.coder.set_workspace_build(workspace["id"], "running")
        bridge.wait_for_status("Working", contains="/agents/")
        [chat] = bridge.coder.chats
        assert [c["id"] for c in bridge.bridge_comments()] == [first["id"]]

        bridge.coder.set_chat_state(chat["id"], "requires_action")
        bridge.wait_for_status("Needs input")
        bridge.coder.set_chat_state(chat["id"], "waiting", summary="Submitted PR", pr_url=PR)
        bridge.wait_for_status("Done", contains="Submitted PR")
        assert f"Pull request: {PR}" in bridge.bridge_comments()[0]["body"]

        bridge.say("/agent also update the changelog")
        wait_for(lambda: [m["content"][0]["text"] for m in bridge.coder.chat_messages(chat["id"])
                          if m["role"] == "user"][-1:] == ["also update the changelog"],
                 what="the follow-up message in the chat")
        bridge.wait_for_status("Working")
        bridge.coder.set_chat_state(chat["id"], "error", last_error={
            "message": "The model provider is overloaded.", "kind": "overloaded",
            "detail": "upstream 10.0.3.7:443 said 529"})
        failed = bridge.wait_for_status("Failed", contains="The model provider is overloaded.")
        assert "10.0.3.7" not in failed["body"]  # never Coder's detail

        bridge.say("/agent try again please")  # a new message resumes a failed chat
        bridge.wait_for_status("Working")
        bridge.coder.set_chat_state(chat["id"], "waiting", archived=True)  # archived in Coder
        bridge.wait_for_status("Stopped", contains="in Coder (archived)")
        assert len(bridge.bridge_comments()) == 1


def test_stop_by_command_and_who_may_give_it(tmp_path: Path) -> None:
    with running_bridge(tmp_path) as bridge:
        bridge.link_author()
        task = start_task(bridge)
        bridge.coder.set_task_state(task["id"], status="active", state="working")
        bridge.wait_for_status("Working")

        stranger = bridge.say("/agent stop", user_id=555, login="mallory")
        wait_for(lambda: any("Only @Codertocat" in c["body"] for c in bridge.bridge_comments()),
                 what="the reply to the stranger")
        assert bridge.coder.stops == []
        bridge.say("/agent do something else entirely", user_id=555, login="mallory")
        wait_for(lambda: len(bridge.bridge_comments()) == 3, what="the second reply")
        assert bridge.coder.task_inputs(task["id"]) == []
        assert not eyes_on(bridge, stranger)

        bridge.say("/agent stop")
        bridge.wait_for_status("Stopped", contains="by @Codertocat")
        assert bridge.coder.stops == [("pause", task["id"], "codertocat")]
        assert metric(bridge, "coder_bridge_commands_total", command="stop",
                      outcome="done") == 1
        assert metric(bridge, "coder_bridge_commands_total", command="stop",
                      outcome="refused") == 1
        assert metric(bridge, "coder_bridge_stops_total", cause="command") == 1
        bridge.say("/agent one more thing")
        wait_for(lambda: any("is not running (Stopped)" in c["body"]
                             for c in bridge.bridge_comments()), what="the not-running reply")
        assert bridge.coder.task_inputs(task["id"]) == []
        # On an issue without an agent, a command is told so.
        bridge.github.add_issue(REPOSITORY, 2)
        bridge.say("/agent stop", number=2)
        wait_for(lambda: any("No agent works on this issue" in c["body"]
                             for c in bridge.bridge_comments(2)), what="the reply on issue 2")
        # A bot's command never runs, whoever it names.
        bridge.say("/agent stop", user_id=41, login="dependabot[bot]", user_type="Bot")
        assert "comments by bots never run commands" in bridge.logs()  # answered "ignored"
        assert len(bridge.bridge_comments()) == 4


def test_removing_the_label_or_closing_the_issue_stops_the_agent(tmp_path: Path) -> None:
    with running_bridge(tmp_path) as bridge:
        bridge.link_author()
        task = start_task(bridge)
        bridge.coder.set_task_state(task["id"], status="active", state="working")
        bridge.wait_for_status("Working")
        assert bridge.unlabel("unlabel-1").json()["status"] == "accepted"
        bridge.wait_for_status("Stopped", contains="because the trigger label was removed "
                                                   "by @Codertocat")
        assert bridge.coder.stops == [("pause", task["id"], "codertocat")]

    (tmp_path / "closed").mkdir()
    with running_bridge(tmp_path / "closed", stop_on_unlabel=False) as bridge:
        bridge.link_author()
        task = start_task(bridge)
        bridge.unlabel("unlabel-2")  # switched off: the agent goes on
        wait_for(lambda: "unlabeled_ignored" in bridge.logs(), what="the unlabel job")
        assert bridge.coder.stops == []
        bridge.close_issue("close-1")
        bridge.wait_for_status("Stopped", contains="because the issue was closed")
        assert bridge.coder.stops == [("pause", task["id"], "codertocat")]


def test_the_runtime_limit_stops_the_agent(tmp_path: Path) -> None:
    with running_bridge(tmp_path, max_runtime=2) as bridge:
        bridge.link_author()
        task = start_task(bridge)
        bridge.coder.set_task_state(task["id"], status="active", state="working")
        stopped = bridge.wait_for_status("Stopped", contains="after running for more than "
                                                             "2 seconds")
        assert bridge.coder.stops == [("pause", task["id"], "codertocat")]
        assert "/agent" not in stopped["body"].split("\n", 1)[1]


def test_a_message_for_a_busy_task_is_held_and_sent_when_it_is_ready(tmp_path: Path) -> None:
    with running_bridge(tmp_path) as bridge:
        bridge.link_author()
        task = start_task(bridge)
        bridge.coder.set_task_state(task["id"], status="active", state="working")
        bridge.wait_for_status("Working")
        said = bridge.say("/agent and please keep the old behaviour")
        wait_for(lambda: eyes_on(bridge, said), what="👀 on the held command")
        bridge.wait_for_status("Working", contains="1 message waits for the agent")
        assert bridge.coder.task_inputs(task["id"]) == []  # Tasks answered 502: no queue

        bridge.coder.set_task_state(task["id"], status="active", state="idle", message="Done")
        wait_for(lambda: bridge.coder.task_inputs(task["id"])
                 == [("codertocat", "and please keep the old behaviour")],
                 what="the held message to be sent")
        wait_for(lambda: "waits for the agent" not in bridge.bridge_comments()[0]["body"],
                 what="the comment to drop the held message")
        assert bridge.status().startswith("**Working**")


def test_a_restart_in_the_middle_of_a_life_carries_on(tmp_path: Path) -> None:
    with running_bridge(tmp_path) as bridge:
        bridge.link_author()
        task = start_task(bridge)
        bridge.coder.set_task_state(task["id"], status="active", state="working")
        bridge.wait_for_status("Working")
        assert bridge.stop() == 0
        bridge.coder.set_task_state(task["id"], status="active", state="complete",
                                    message="All done", uri=PR)
        bridge.start()
        bridge.wait_for_status("Done", contains=PR)
        assert len(bridge.bridge_comments()) == 1


def test_an_outage_of_coder_keeps_the_last_state_and_recovers(tmp_path: Path) -> None:
    with running_bridge(tmp_path) as bridge:
        bridge.link_author()
        task = start_task(bridge)
        bridge.coder.set_task_state(task["id"], status="active", state="working")
        bridge.wait_for_status("Working")
        edits = patches(bridge)
        bridge.coder.fail_next("list_tasks", 503, times=3)
        bridge.coder.fail_next("get_task", 503, times=3)
        bridge.coder.set_task_state(task["id"], status="active", state="idle", message="Done")
        wait_for(lambda: metric(bridge, "coder_bridge_status_checks_total", outcome="outage") >= 2,
                 what="the outage to be counted")
        assert bridge.status().startswith("**Working**")  # never marked failed
        assert patches(bridge) == edits
        bridge.wait_for_status("Done", timeout=40)  # recovered, with backoff


def test_a_task_deleted_under_us_shows_stopped(tmp_path: Path) -> None:
    with running_bridge(tmp_path) as bridge:
        bridge.link_author()
        task = start_task(bridge)
        bridge.coder.set_task_state(task["id"], status="active", state="working")
        bridge.wait_for_status("Working")
        bridge.coder.delete_task_now(task["id"])
        bridge.wait_for_status("Stopped", contains="in Coder (deleted)")


def test_consent_nothing_runs_until_the_author_approves(tmp_path: Path) -> None:
    with running_bridge(tmp_path) as bridge:
        bridge.link_author()
        bridge.relabel("labelled-by-hubot", sender_id=555, sender_login="hubot")
        waiting = bridge.wait_for_comment("Waiting for approval")
        assert "@hubot asked for an AI coding agent" in waiting["body"]
        assert "@Codertocat: comment `/agent approve`" in waiting["body"]
        assert "https://bridge.example.test/connect" in waiting["body"]
        assert bridge.coder.tasks == []

        bridge.say("/agent approve", user_id=555, login="hubot")
        wait_for(lambda: any("Only @Codertocat, the issue's author, can approve" in c["body"]
                             for c in bridge.bridge_comments()), what="the refusal")
        assert bridge.coder.tasks == []
        waiting_list = bridge.cli("delegations", "list", "--state", "awaiting_consent").stdout
        # It would run as the author's Coder user, who has not agreed yet.
        assert f"{REPOSITORY}#1\tcodertocat\t-\t-\tawaiting_consent" in waiting_list

        approval = bridge.say("/agent approve")
        bridge.wait_for_status("Starting", contains="/tasks/codertocat/")
        [task] = bridge.coder.tasks
        assert "Issue author: @Codertocat" in task["initial_prompt"]
        assert "Requested by: @hubot" in task["initial_prompt"]
        wait_for(lambda: eyes_on(bridge, approval), what="👀 on the approval")
        bridge.say("/agent approve")  # again: nothing more to approve, still one task
        wait_for(lambda: any("Nothing on this issue is waiting for approval" in c["body"]
                             for c in bridge.bridge_comments()), what="the second reply")
        assert len(bridge.coder.tasks) == 1

        # Allowed for good: the next labelling by someone else starts at once.
        result = bridge.cli("users", "allow-others", "--github-id", "21031067", "--on")
        assert result.returncode == 0, result.stderr
        assert "others may delegate" in bridge.cli("users", "list").stdout
        bridge.github.add_issue(REPOSITORY, 2)
        bridge.deliver_issue(2, delivery_id="issue-2-by-hubot", sender=(555, "hubot"))
        wait_for(lambda: len(bridge.coder.tasks) == 2, what="the second task")


def test_an_outsiders_issue_opened_with_the_label_is_ignored_silently(tmp_path: Path) -> None:
    with running_bridge(tmp_path) as bridge:
        bridge.link_author()
        answer = bridge.open_issue_as_outsider("outsider-1")
        assert answer.json()["status"] == "ignored"
        assert metric(bridge, "coder_bridge_deliveries_total", tracker="github",
                      outcome="ignored", reason="outsider") == 1
        assert bridge.comments() == [] and bridge.coder.tasks == []


def test_a_pasted_marker_never_makes_the_bridge_edit_someone_elses_comment(
    tmp_path: Path,
) -> None:
    with running_bridge(tmp_path) as bridge:
        bridge.link_author()
        task = start_task(bridge)
        [ours] = bridge.bridge_comments()
        marker = ours["body"].rsplit("\n", 1)[1]
        copied = bridge.github.add_comment(REPOSITORY, 1, f"Looks good! {marker}", login="eve")
        bridge.github.delete_comment(ours["id"])  # the bridge's own comment is gone
        bridge.coder.set_task_state(task["id"], status="active", state="working")
        bridge.wait_for_status("Working")
        [theirs] = [c for c in bridge.comments() if c["id"] == copied]
        assert theirs["body"] == f"Looks good! {marker}"  # untouched
        assert len(bridge.bridge_comments()) == 1


def test_linear_commands_and_a_completed_issue(tmp_path: Path) -> None:
    with running_bridge(tmp_path) as bridge:
        bridge.link_author()
        bridge.deliver_linear()
        wait_for(lambda: bridge.coder.tasks, what="the task")
        [task] = bridge.coder.tasks
        bridge.coder.set_task_state(task["id"], status="active", state="working")
        wait_for(lambda: any(c["body"].startswith("**Working**")
                             for c in bridge.linear_comments()), what="Working on Linear")
        bridge.coder.set_task_state(task["id"], status="active", state="idle", message="Ready")
        wait_for(lambda: any(c["body"].startswith("**Done**") for c in bridge.linear_comments()),
                 what="Done on Linear")
        said = bridge.say_on_linear("/agent add a CSV header row too")
        wait_for(lambda: bridge.coder.task_inputs(task["id"])
                 == [("codertocat", "add a CSV header row too")], what="the follow-up")
        wait_for(lambda: bridge.linear.reactions(said) == ["👀"], what="👀 on Linear")
        assert bridge.change_linear_issue("completed-1", state_type="completed").json()[
            "status"] == "accepted"
        wait_for(lambda: any(c["body"].startswith("**Stopped** because the issue was closed")
                             for c in bridge.linear_comments()), what="Stopped on Linear")
        assert bridge.coder.stops == [("pause", task["id"], "codertocat")]
