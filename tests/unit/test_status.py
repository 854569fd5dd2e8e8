"""What the issue shows about running work: the state tables for Tasks and Chats."""

from __future__ import annotations

import msgspec
import pytest

from service.core.status import (
    QUIET_SECONDS,
    SETTLE_SECONDS,
    ChatSnapshot,
    Progress,
    Shown,
    TaskSnapshot,
    fingerprint,
    is_settling,
    is_web_link,
    observe_chat,
    observe_task,
)

NOW = 1_800_000_000.0
SENT = NOW - 30
FRESH = Progress(started_at=SENT, sent_at=SENT)  # the prompt went out half a minute ago
WORKED = Progress(started_at=SENT, sent_at=SENT, worked=True)


def task(status: str, state: str | None = None, **fields: object) -> TaskSnapshot:
    return TaskSnapshot(exists=True, status=status, state=state, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(("snapshot", "progress", "shown"), [
    (task("pending"), FRESH, "starting"),
    (task("initializing"), FRESH, "starting"),
    (task("active"), FRESH, "working"),  # the agent has not reported yet
    (task("active", "working"), FRESH, "working"),
    (task("active", "idle"), FRESH, "working"),  # idle before its turn began
    (task("active", "idle"), WORKED, "done"),
    (task("active", "complete"), WORKED, "done"),
    (task("active", "failed", message="tests do not pass"), FRESH, "failed"),
    (task("active", "failure"), FRESH, "failed"),
    (task("paused"), WORKED, "stopped"),
    (task("error"), FRESH, "failed"),
    (TaskSnapshot(exists=False), WORKED, "stopped"),
])
def test_the_tasks_table(snapshot: TaskSnapshot, progress: Progress, shown: Shown) -> None:
    assert observe_task(snapshot, "working", progress, now=NOW).shown == shown


def test_an_unknown_task_status_keeps_what_was_shown() -> None:
    for before in ("starting", "working", "done"):
        assert observe_task(task("frobnicating"), before, FRESH, now=NOW).shown == before


def test_a_turn_too_quick_to_be_seen_working_is_done_once_it_reported_later() -> None:
    quick = task("active", "idle", state_at=SENT + SETTLE_SECONDS + 1)
    assert observe_task(quick, "working", FRESH, now=NOW).shown == "done"
    stale = task("active", "idle", state_at=SENT - 5)  # the idle of the previous turn
    assert observe_task(stale, "working", FRESH, now=NOW).shown == "working"


def test_a_turn_nobody_saw_is_over_once_it_has_been_quiet_a_minute() -> None:
    sent = Progress(started_at=SENT, sent_at=NOW - QUIET_SECONDS + 1)
    assert observe_task(task("active", "idle"), "working", sent, now=NOW).shown == "working"
    assert observe_task(task("active", "idle"), "working", sent, now=NOW + 1).shown == "done"
    assert observe_chat(chat("waiting"), "working", sent, now=NOW + 1).shown == "done"
    assert is_settling(sent, now=NOW + 1)  # rounds keep looking until that is decided
    assert not is_settling(sent, now=NOW + 3 * QUIET_SECONDS)
    assert not is_settling(msgspec.structs.replace(sent, worked=True), now=NOW)


def test_done_stays_done_while_it_stays_idle() -> None:
    """A check after Done (a pull request appeared) must not call it Working again."""
    done = observe_task(task("active", "idle"), "working", WORKED, now=NOW)
    later = observe_task(task("active", "idle", uri="https://g/o/r/pull/4"), done.shown,
                         done.progress, now=NOW + 30)
    assert (later.shown, later.progress.pr_url) == ("done", "https://g/o/r/pull/4")
    assert later.progress.ended_at == NOW  # still when it ended
    chat_done = observe_chat(chat("waiting"), "working", WORKED, now=NOW)
    assert observe_chat(chat("waiting", pr_url="https://g/p/1"), chat_done.shown,
                        chat_done.progress, now=NOW + 30).shown == "done"


def test_seeing_it_work_is_remembered_until_its_turn_ends() -> None:
    first = observe_task(task("active", "working"), "starting", FRESH, now=NOW)
    assert first.progress.worked
    second = observe_task(task("active", "idle"), first.shown, first.progress, now=NOW + 15)
    assert second.shown == "done"
    assert second.progress.ended_at == NOW + 15
    assert not second.progress.worked  # a follow-up must be seen working again


def test_a_task_shows_its_message_pull_request_and_failure_in_plain_words() -> None:
    seen = observe_task(task("active", "working", message="Reading   the\ncode",
                             uri="https://github.com/o/r/pull/9"), "working", FRESH, now=NOW)
    assert seen.progress.message == "Reading the code"
    assert seen.progress.pr_url == "https://github.com/o/r/pull/9"
    failed = observe_task(task("active", "failed", message="x" * 1000), "working", FRESH, now=NOW)
    assert failed.progress.failure.endswith("…") and len(failed.progress.failure) == 300
    broken = observe_task(task("error"), "working", FRESH, now=NOW)
    assert "workspace failed to build" in broken.progress.failure


def test_a_pull_request_once_known_stays_and_only_web_links_count() -> None:
    known = Progress(pr_url="https://github.com/o/r/pull/1", worked=True, sent_at=SENT)
    later = observe_task(task("active", "idle", uri=""), "done", known, now=NOW)
    assert later.progress.pr_url == "https://github.com/o/r/pull/1"
    for bad in ("http://github.com/o/r/pull/1", "javascript:alert(1)", "https://x/a b",
                "https://x/)[y](https://evil)"):
        assert not is_web_link(bad)
        assert observe_task(task("active", "working", uri=bad), "working", FRESH,
                            now=NOW).progress.pr_url == ""


def test_who_stopped_it_is_kept_over_what_coder_says() -> None:
    stopped = Progress(stopped_by="by @alice", sent_at=SENT)
    assert observe_task(task("paused"), "stopped", stopped,
                        now=NOW).progress.stopped_by == "by @alice"
    assert observe_task(task("paused"), "working", FRESH,
                        now=NOW).progress.stopped_by == "in Coder (paused)"
    assert observe_task(TaskSnapshot(exists=False), "working", FRESH,
                        now=NOW).progress.stopped_by == "in Coder (deleted)"


def chat(status: str, **fields: object) -> ChatSnapshot:
    return ChatSnapshot(exists=True, status=status, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(("snapshot", "progress", "shown"), [
    (chat("pending"), FRESH, "working"),
    (chat("running"), FRESH, "working"),
    (chat("interrupting"), FRESH, "working"),
    (chat("requires_action"), FRESH, "needs_input"),
    (chat("paused"), FRESH, "needs_input"),
    (chat("waiting"), FRESH, "working"),  # not run yet
    (chat("waiting"), WORKED, "done"),
    (chat("completed"), WORKED, "done"),
    (chat("waiting", updated_at=SENT + SETTLE_SECONDS + 1), FRESH, "done"),
    (chat("error", error="usage limit reached"), FRESH, "failed"),
    (chat("running", archived=True), FRESH, "stopped"),
    (ChatSnapshot(exists=False), FRESH, "stopped"),
    (chat("something-new"), FRESH, "working"),
])
def test_the_chats_table(snapshot: ChatSnapshot, progress: Progress, shown: Shown) -> None:
    assert observe_chat(snapshot, "working", progress, now=NOW).shown == shown


def test_a_chat_shows_coders_short_error_its_summary_and_its_diff() -> None:
    failed = observe_chat(chat("error", error="The model\nprovider is down"), "working", FRESH,
                          now=NOW)
    assert failed.progress.failure == "The model provider is down"
    assert observe_chat(chat("error"), "working", FRESH,
                        now=NOW).progress.failure == "Coder reported an error"
    done = observe_chat(chat("waiting", summary="Opened a PR", pr_url="https://g/o/r/pull/3"),
                        "working", WORKED, now=NOW)
    assert (done.shown, done.progress.message, done.progress.pr_url) == (
        "done", "Opened a PR", "https://g/o/r/pull/3")


def test_a_check_that_sees_it_working_again_clears_the_end() -> None:
    ended = Progress(started_at=SENT, sent_at=SENT, ended_at=NOW - 5, failure="old")
    again = observe_chat(chat("running"), "done", ended, now=NOW)
    assert again.shown == "working"
    assert again.progress.ended_at is None and again.progress.failure == ""
    assert again.progress.started_at == SENT


def test_fingerprints_ignore_time_and_see_what_the_comment_shows() -> None:
    a = chat("running", summary="s", updated_at=1.0)
    assert fingerprint(a) == fingerprint(chat("running", summary="s", updated_at=2.0))
    assert fingerprint(a) != fingerprint(chat("waiting", summary="s"))
    assert fingerprint(a) != fingerprint(chat("running", summary="t"))
    assert fingerprint(task("active", "working", message="m", state_at=1.0)) == fingerprint(
        task("active", "working", message="m", state_at=9.0))
    assert fingerprint(task("active", "working")) != fingerprint(task("active", "idle"))


def test_progress_round_trips_and_reads_an_empty_column() -> None:
    progress = Progress(started_at=1.0, pr_url="https://x/p", held=2, approved_in="c1")
    assert Progress.from_json(progress.to_json()) == progress
    assert Progress.from_json(None) == Progress()
