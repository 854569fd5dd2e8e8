"""End to end on Coder v2.37+: the same GitHub delivery becomes a Coder Agents chat.

Detection is automatic (``coder.api = "auto"``): the bridge probes the fake,
finds the Chats API and never touches a Tasks route afterwards.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import fixture_bytes, sign_github
from tests.e2e.harness import Bridge, running_bridge, wait_for

CHAT_LINK = re.compile(r"\((?P<url>http://127\.0\.0\.1:\d+/agents/(?P<id>[0-9a-f-]{36}))\)")


def chat_link(bridge: Bridge) -> tuple[str, str]:
    comment = bridge.wait_for_comment("/agents/")
    match = CHAT_LINK.search(comment["body"])
    assert match, comment["body"]
    return match.group("url"), match.group("id")


def tasks_routes_called(bridge: Bridge) -> list[tuple[str, str]]:
    return [(m, p) for m, p in bridge.coder.requests if "/tasks" in p]


@pytest.mark.parametrize(("mode", "base"), [("chats", "/api/v2"), ("both", "/api/v2")])
def test_labelled_issue_becomes_one_chat_on_current_coder(
    tmp_path: Path, mode: str, base: str
) -> None:
    with running_bridge(tmp_path, coder_mode=mode, template="") as bridge:
        bridge.link_author()
        bridge.deliver()
        url, chat_id = chat_link(bridge)
        [chat] = bridge.coder.chats
        assert chat["id"] == chat_id and url == f"{bridge.coder_url}/agents/{chat_id}"
        assert ("POST", f"{base}/chats") in bridge.coder.requests
        assert chat["labels"]["coder-bridge"] == "true"
        assert chat.get("workspace_id") is None  # no template: the agent chooses

        # More deliveries for the same issue after detection: still one chat, no Tasks call.
        tasks_calls = len(tasks_routes_called(bridge))
        assert bridge.deliver().json()["status"] == "duplicate"
        bridge.relabel("eeeeeeee-0000-0000-0000-000000000005")
        wait_for(lambda: bridge.logs().count("job_finished") >= 2, what="both jobs")
        assert len(bridge.coder.chats) == 1 and len(bridge.comments()) == 1
        assert len(tasks_routes_called(bridge)) == tasks_calls


def test_failure_after_the_chat_was_created_still_leaves_one_chat(tmp_path: Path) -> None:
    with running_bridge(tmp_path, coder_mode="chats", template="") as bridge:
        bridge.link_author()
        bridge.coder.fail_next("create_chat", 502, after_acting=True, retry_after=1)
        bridge.deliver()
        _, chat_id = chat_link(bridge)
        [chat] = bridge.coder.chats
        assert chat["id"] == chat_id
        assert "job_retry_scheduled" in bridge.logs()


def test_route_with_a_template_pins_the_chat_to_a_new_workspace(tmp_path: Path) -> None:
    with running_bridge(tmp_path, coder_mode="chats", template="tasks-docker",
                        presets=[{"Name": "small", "Default": True}]) as bridge:
        bridge.coder.configure_workspaces(auto_advance_after=1)
        bridge.link_author()
        bridge.deliver()
        chat_link(bridge)
        [workspace] = bridge.coder.workspaces
        [chat] = bridge.coder.chats
        assert chat["workspace_id"] == workspace["id"]
        assert workspace["template_name"] == "tasks-docker"
        assert bridge.coder.workspace_preset_of(workspace["id"]) == "small"


def test_no_model_configured_is_explained_on_the_issue(tmp_path: Path) -> None:
    with running_bridge(tmp_path, coder_mode="chats", template="") as bridge:
        bridge.coder.configure_chats(model_configured=False)
        bridge.link_author()
        bridge.deliver()
        comment = bridge.wait_for_comment("could not start an agent")
        assert "model" in comment["body"].lower()
        assert bridge.coder.chats == []


def test_server_upgraded_under_the_bridge_switches_from_tasks_to_chats(tmp_path: Path) -> None:
    with running_bridge(tmp_path, coder_mode="tasks", template="tasks-docker") as bridge:
        bridge.link_author()
        bridge.deliver()
        bridge.wait_for_comment("/tasks/codertocat/")
        assert len(bridge.coder.tasks) == 1

        bridge.coder.set_mode("chats")  # Coder upgraded to v2.38: Tasks routes now 404
        bridge.coder.configure_workspaces(auto_advance_after=1)
        bridge.github.add_issue("Codertocat/Hello-World", 2)
        body = fixture_bytes("github/issues__labeled.json").replace(b'"number": 1,',
                                                                  b'"number": 2,')
        bridge.deliver(body=body, delivery_id="ffffffff-0000-0000-0000-000000000006",
                       headers={"X-Hub-Signature-256": sign_github(body)})
        wait_for(lambda: "/agents/" in "".join(
            c["body"] for c in bridge.github.comments("Codertocat/Hello-World", 2)),
            timeout=30, what="the second issue's comment to link the chat")
        [comment] = bridge.github.comments("Codertocat/Hello-World", 2)  # one, edited
        assert comment["body"].startswith("**Starting** · [open the Coder Agents chat]")
        [chat] = bridge.coder.chats
        [workspace] = bridge.coder.workspaces  # the route's template still means something
        assert chat["workspace_id"] == workspace["id"]
        assert len(bridge.coder.tasks) == 1  # the first issue's task is untouched
