"""Lenient parsing of Chats API answers, labels, versions and error wording (no I/O)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
from structlog.testing import capture_logs

from service.coder.base import WorkSpec
from service.coder.chats import (
    LABEL_BRIDGE,
    LABEL_DELEGATION,
    LABEL_KEY,
    Chat,
    ChatError,
    create_body,
    delegation_label_value,
    delegation_labels,
    explain_create_failure,
    failed_chat_error,
    parse_chat,
    parse_chat_error,
)
from service.coder.client import describe_usage_limit
from service.coder.detect import Detected, parse_version
from service.coder.workspaces import parse_workspace
from service.errors import Conflict, PermanentError

LABEL_KEY_RULE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._/-]*$")
CHAT_ID = "0f6c1b5e-3c1d-4a8e-9b7e-1d2c3b4a5f60"


def chat(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": CHAT_ID,
        "owner_id": "u1",
        "title": "Fix the flaky test …",
        "status": "running",
        "created_at": "2026-09-02T10:00:00.123456Z",
        "updated_at": "2026-09-02T10:00:00.123456Z",
        "archived": False,
        "labels": {"coder-bridge": "true"},
    }
    body.update(fields)
    return body


# --- parse_chat --------------------------------------------------------------------------------


def test_a_current_chat_is_read() -> None:
    parsed = parse_chat(
        chat(
            owner_username="alice",
            owner_name="Alice A.",
            workspace_id="w1",
            last_turn_summary="Opened PR #7",
            diff_status={"url": "https://github.com/o/r/pull/7"},
        )
    )
    assert parsed == Chat(
        id=CHAT_ID,
        status="running",
        owner_name="alice",
        title="Fix the flaky test …",
        archived=False,
        labels={"coder-bridge": "true"},
        last_error=None,
        workspace_id="w1",
        created_at=datetime(2026, 9, 2, 10, 0, 0, 123456, tzinfo=UTC),
        updated_at=datetime(2026, 9, 2, 10, 0, 0, 123456, tzinfo=UTC),
        summary="Opened PR #7",
        has_diff=True,
        pr_url="https://github.com/o/r/pull/7",
    )


def test_owner_name_is_the_fallback_and_absent_owner_reads_empty() -> None:
    assert parse_chat(chat(owner_name="bob")).owner_name == "bob"
    assert parse_chat(chat()).owner_name == ""


def test_unknown_status_is_kept_and_logged() -> None:
    with capture_logs() as logs:
        parsed = parse_chat(chat(status="hibernating"))
    assert parsed.status == "hibernating"
    assert any(e["event"] == "chat_status_unknown" for e in logs)


def test_extra_fields_are_ignored_and_logged() -> None:
    with capture_logs() as logs:
        parsed = parse_chat(chat(some_future_field={"x": 1}, children=[chat()], files=[]))
    assert parsed.id == CHAT_ID
    [entry] = [e for e in logs if e["event"] == "chat_fields_unknown"]
    assert entry["fields"] == ["some_future_field"]


def test_missing_and_mistyped_fields_read_as_absent() -> None:
    parsed = parse_chat(
        {"id": CHAT_ID, "labels": ["x"], "created_at": "yesterday", "archived": "yes"}
    )
    assert parsed.status == "unknown"
    assert parsed.labels == {}
    assert parsed.created_at is None
    assert parsed.archived is False
    assert parsed.summary == ""


def test_summary_falls_back_to_the_summary_field() -> None:
    assert parse_chat(chat(last_turn_summary=None, summary="Done.")).summary == "Done."


@pytest.mark.parametrize("body", [None, [], "chat", {"status": "running"}, {"id": ""}])
def test_a_chat_without_an_id_is_a_permanent_error(body: Any) -> None:
    with pytest.raises(PermanentError, match="lacks its id"):
        parse_chat(body)


# --- last_error shapes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("  provider   timed out ", ChatError(message="provider timed out")),
        (
            {"message": "Budget exhausted.", "kind": "usage_limit", "retryable": False},
            ChatError(message="Budget exhausted.", kind="usage_limit"),
        ),
        (
            {
                "message": "Overloaded",
                "detail": "529 from provider",
                "kind": "overloaded",
                "provider": "anthropic",
                "retryable": True,
                "status_code": 529,
            },
            ChatError(
                message="Overloaded", kind="overloaded", detail="529 from provider", retryable=True
            ),
        ),
        ({"message": "legacy row", "kind": "generic"}, ChatError(message="legacy row")),
        ({}, ChatError(message="")),
        (42, ChatError(message="")),
    ],
)
def test_last_error_every_shape(value: Any, expected: ChatError | None) -> None:
    assert parse_chat_error(value) == expected


def test_last_error_absent_string_and_object_in_a_chat() -> None:
    assert parse_chat(chat()).last_error is None
    assert parse_chat(chat(status="error", last_error="boom")).last_error == ChatError("boom")
    obj = parse_chat(chat(status="error", last_error={"message": "no key", "kind": "missing_key"}))
    assert obj.last_error == ChatError("no key", kind="missing_key")


# --- labels and the create body ----------------------------------------------------------------


def test_labels_satisfy_coders_rules_for_keys_with_colon_and_hash() -> None:
    key = "github:186853002:1#1"
    labels = delegation_labels(key)
    assert labels[LABEL_BRIDGE] == "true"
    assert labels[LABEL_KEY] == key
    assert re.fullmatch(r"[0-9a-f]{32}", labels[LABEL_DELEGATION])
    assert labels[LABEL_DELEGATION] == delegation_label_value(key)
    for k, v in labels.items():
        assert LABEL_KEY_RULE.match(k) and len(k.encode()) <= 64
        assert 0 < len(v.encode()) <= 256


def test_label_values_differ_per_delegation_and_long_keys_are_clipped() -> None:
    assert delegation_label_value("a#1") != delegation_label_value("a#2")
    long_key = "linear:" + "é" * 300 + "#1"
    readable = delegation_labels(long_key)[LABEL_KEY]
    assert len(readable.encode()) <= 256
    assert long_key.startswith(readable)


def test_create_body_has_organization_content_labels_and_optional_workspace() -> None:
    spec = WorkSpec("github:1:2#1", "cb-0123456789abcdef", "Do it", "x", "", "", "default")
    assert create_body(spec, "org-1", None) == {
        "organization_id": "org-1",
        "content": [{"type": "text", "text": "Do it"}],
        "labels": delegation_labels("github:1:2#1"),
    }
    assert create_body(spec, "org-1", "ws-1")["workspace_id"] == "ws-1"


# --- error wording -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "message", "words"),
    [
        (403, "You are not a member of the specified organization.", "Set coder.organization"),
        (400, "No default chat model config is configured.", "add an LLM provider"),
        (400, "Invalid labels. Invalid fields: labels: bad key.", "labels coder-bridge sent"),
        (400, "Workspace not found or you do not have access to this resource.", "workspace"),
        (400, "organization_id is required.", "Set coder.organization"),
        (409, "Chat usage limit exceeded.", "usage limit has been reached"),
        (413, "Request body too large.", "too long"),
    ],
)
def test_refused_creates_become_plain_permanent_errors(
    status: int, message: str, words: str
) -> None:
    cls = Conflict if status == 409 else PermanentError
    explained = explain_create_failure(cls("coder", message, status=status))
    assert type(explained) is PermanentError
    assert explained.status == status
    assert explained.message.startswith(f"Coder did not start the chat: {message}")
    assert words in explained.message


def test_a_chat_failed_at_once_names_reason_hint_and_link() -> None:
    failed = Chat(
        id="c1",
        status="error",
        last_error=ChatError("Budget exhausted", kind="usage_limit",
                             detail="postgres://coder:hunter2@db.internal/coder"),
    )
    error = failed_chat_error(failed, "https://coder.example.com/agents/c1")
    assert error.public.startswith("Coder started the chat but it failed at once: "
                                   "Budget exhausted.")
    assert "usage budget is used up" in error.public
    assert error.public.endswith("See https://coder.example.com/agents/c1")
    assert "hunter2" not in error.public  # Coder's detail stays out of the issue ...
    assert "db.internal" in error.message  # ... and goes to the log
    silent = failed_chat_error(Chat(id="c1", status="error"), "u")
    assert "Coder gave no reason" in silent.public


def test_only_coders_short_message_of_a_known_refusal_is_public() -> None:
    refused = PermanentError("coder", "You are not a member of the organization. detail: "
                             "internal host 10.1.2.3", status=403,
                             server_message="You are not a member of the organization.")
    explained = explain_create_failure(refused)
    assert explained.public.startswith(
        "Coder did not start the chat: You are not a member of the organization.")
    assert "10.1.2.3" not in explained.public and "10.1.2.3" in explained.message
    broken = explain_create_failure(PermanentError("coder", "weird", status=422,
                                                   server_message="weird"))
    assert broken.public == ""  # not a refusal Coder is known to send: category only


def test_usage_limit_body_in_words() -> None:
    body = {
        "message": "Chat usage limit exceeded.",
        "spent_micros": 12_345_678,
        "limit_micros": 10_000_000,
        "resets_at": "2026-08-01T00:00:00Z",
    }
    assert describe_usage_limit(body) == (
        "$12.35 of the $10.00 limit has been used. The limit resets at 2026-08-01 00:00 UTC."
    )
    assert describe_usage_limit({"resets_at": "next month"}) == "The limit resets at next month."
    assert describe_usage_limit({"message": "x", "spent_micros": True, "limit_micros": 1}) == ""


# --- versions and workspaces -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "release", "dev"),
    [
        ("v2.37.1", (2, 37, 1), False),
        ("v2.38.0-devel+abc123", (2, 38, 0), True),
        ("2.28.3", (2, 28, 3), False),
        ("v2.37.0-rc.1", (2, 37, 0), False),
    ],
)
def test_parse_version(text: str, release: tuple[int, int, int], dev: bool) -> None:
    version = parse_version(text)
    assert version is not None
    assert (version.release, version.dev) == (release, dev)


@pytest.mark.parametrize("text", [None, "", "devel", "v2"])
def test_unreadable_versions_are_none(text: str | None) -> None:
    assert parse_version(text) is None


def test_detected_describes_itself() -> None:
    assert Detected("chats", "/api/v2").describe() == "the Chats API at /api/v2/chats"
    assert Detected("tasks", "/api/experimental").describe() == (
        "the Tasks API at /api/experimental/tasks"
    )


def test_parse_workspace_is_lenient() -> None:
    parsed = parse_workspace(
        {
            "id": "w1",
            "name": "cb-1",
            "template_id": "t1",
            "latest_build": {
                "status": "pending",
                "job": {"error": ""},
                "matched_provisioners": {"count": 0},
            },
        }
    )
    assert (parsed.status, parsed.provisioners) == ("pending", 0)
    assert parse_workspace({"id": "w1"}).status == "unknown"
    with pytest.raises(PermanentError):
        parse_workspace({"name": "x"})
