"""Commands in comments, who may give them, consent, and the comments that answer them."""

from __future__ import annotations

import msgspec
import pytest

from service.core import comments
from service.core.commands import (
    Allowed,
    Command,
    Parties,
    Refused,
    decide_command,
    parse_command,
)
from service.core.consent import needs_consent
from service.core.events import IssueEvent, Person
from service.core.status import Progress, Shown
from service.core.work import CreatedWork

# -- parsing --------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "expected"), [
    ("/agent stop", Command("stop")),
    ("  /agent   STOP  ", Command("stop")),
    ("/agent approve", Command("approve")),
    ("/agent", Command("help")),
    ("/agent please also fix the docs", Command("follow_up", "please also fix the docs")),
    ("/agent\nuse the new API\nand add tests",
     Command("follow_up", "use the new API\nand add tests")),
    ("/agent stop the flaky test first", Command("follow_up", "stop the flaky test first")),
    ("/agent stop\nand then some", Command("follow_up", "stop\nand then some")),
    ("/agentx stop", None),
    ("please /agent stop", None),
    ("Thanks!\n/agent stop", None),  # only the first line counts
    ("", None),
])
def test_parsing(body: str, expected: Command | None) -> None:
    assert parse_command(body, "/agent") == expected


def test_the_command_word_is_configurable() -> None:
    assert parse_command("/bot stop", "/bot") == Command("stop")
    assert parse_command("/agent stop", "/bot") is None


# -- who may ------------------------------------------------------------------------------

AUTHOR, LABELER, ACTING, STRANGER = "author", "labeler", "author", "stranger"
PARTIES = Parties(author=AUTHOR, labeler=LABELER, acting=ACTING)
FOLLOW_UP, STOP, APPROVE = Command("follow_up", "more"), Command("stop"), Command("approve")


@pytest.mark.parametrize(("command", "who", "state", "has_work", "expected"), [
    (FOLLOW_UP, ACTING, "working", True, "allowed"),
    (FOLLOW_UP, ACTING, "done", True, "allowed"),  # a finished turn starts again
    (FOLLOW_UP, ACTING, "failed", True, "allowed"),
    (FOLLOW_UP, ACTING, "failed", False, "not_running"),  # failed before the work existed
    (FOLLOW_UP, ACTING, "stopped", True, "not_running"),
    (FOLLOW_UP, LABELER, "working", True, "not_acting_user"),
    (FOLLOW_UP, STRANGER, "working", True, "not_acting_user"),
    (STOP, ACTING, "working", True, "allowed"),
    (STOP, LABELER, "needs_input", True, "allowed"),
    (STOP, LABELER, "awaiting_consent", False, "allowed"),  # withdraw the request
    (STOP, ACTING, "needs_link", False, "allowed"),
    (STOP, STRANGER, "working", True, "not_acting_or_labeler"),
    (STOP, ACTING, "stopped", True, "not_running"),
    (APPROVE, AUTHOR, "awaiting_consent", False, "allowed"),
    (APPROVE, LABELER, "awaiting_consent", False, "not_author"),
    (APPROVE, AUTHOR, "working", True, "nothing_to_approve"),
    (Command("help"), STRANGER, "working", True, "help"),
])
def test_who_may(command: Command, who: str, state: str, has_work: bool, expected: str) -> None:
    decision = decide_command(command, who, PARTIES, state=state, has_work=has_work)
    assert (decision == Allowed(command)) if expected == "allowed" else (
        decision == Refused(expected))  # type: ignore[arg-type]


def test_no_delegation_is_said_so_and_a_retried_approval_goes_through() -> None:
    assert decide_command(STOP, ACTING, None, state=None, has_work=False) == Refused(
        "no_delegation")
    # The job that approved may run again after it moved the delegation on.
    assert decide_command(APPROVE, AUTHOR, PARTIES, state="pending", has_work=False,
                          approved_here=True) == Allowed(APPROVE)


# -- consent ---------------------------------------------------------------------------------

EVENT = IssueEvent(
    tracker="github", delivery_id="d", issue_key="github:1:2", issue_id="9", number="2",
    title="t", body="b", url="https://github.com/o/r/issues/2", scope="o/r",
    author=Person("1", "alice"), labeler=Person("2", "bob"), extra={"action": "labeled"})


@pytest.mark.parametrize(("event", "role", "allow_others", "expected"), [
    (EVENT, "author", False, True),  # bob labels alice's issue: alice must agree
    (EVENT, "author", True, False),  # alice allows it for good
    (EVENT, "labeler", False, False),  # bob's own account: his own request
    (msgspec.structs.replace(EVENT, labeler=Person("1", "alice")), "author", False, False),
    (msgspec.structs.replace(EVENT, extra={"action": "opened"}), "author", False, False),
    (msgspec.structs.replace(EVENT, extra={"action": "create"}), "author", False, False),
    (msgspec.structs.replace(EVENT, labeler=None), "author", False, False),
])
def test_consent(event: IssueEvent, role: str, allow_others: bool, expected: bool) -> None:
    assert needs_consent(event, acting_role=role, allow_others=allow_others) is expected


# -- the comments -----------------------------------------------------------------------------

WORK = CreatedWork("task", "t1", "https://coder.example.com/tasks/alice/t1", "alice", "active")
STARTED = 1_800_000_000.0  # 2027-01-15 08:00 UTC


def status(shown: Shown, progress: Progress | None = None,
           work: CreatedWork | None = WORK) -> str:
    progress = progress if progress is not None else Progress(started_at=STARTED)
    view = comments.StatusView(shown=shown, work=work, runs_as="alice", progress=progress,
                               command="/agent")
    return comments.render_status_comment(view, marker="<!-- m -->")


@pytest.mark.parametrize(("shown", "first_line"), [
    ("starting", "**Starting** · [open the Coder task]"),
    ("working", "**Working** · [open the Coder task]"),
    ("needs_input", "**Needs input** · [open the Coder task]"),
    ("done", "**Done** · [open the Coder task]"),
    ("failed", "**Failed** · [open the Coder task]"),
    ("stopped", "**Stopped** · [open the Coder task]"),
])
def test_the_first_line_names_the_state_in_bold(shown: Shown, first_line: str) -> None:
    body = status(shown)
    assert body.splitlines()[0].startswith(first_line)
    assert body.endswith("<!-- m -->")
    assert "2027-01-15 08:00 UTC" in body or shown in ("starting", "needs_input")


def test_starting_before_the_link_exists() -> None:
    body = status("starting", work=None)
    assert body.splitlines()[0] == "**Starting**"
    assert "appears here as soon as it exists" in body


def test_what_a_finished_turn_shows() -> None:
    progress = Progress(started_at=STARTED, ended_at=STARTED + 600,
                        pr_url="https://github.com/o/r/pull/5",
                        message="Fixed it. Thanks @bob, see [here](https://evil.example)")
    body = status("done", progress)
    assert "Pull request: https://github.com/o/r/pull/5" in body
    assert "finished its turn at 2027-01-15 08:10 UTC" in body
    assert "> Fixed it. Thanks @\u200bbob, see \\[here\\](https:\u200b//evil.example)" in body
    assert "`/agent <message>`" in body


def test_failed_and_stopped_say_why_and_by_whom() -> None:
    failed = status("failed", Progress(started_at=STARTED, failure="tests do not pass"))
    assert "Why: tests do not pass" in failed
    stopped = status("stopped", Progress(started_at=STARTED, stopped_by="by @bob"))
    assert stopped.splitlines()[0].startswith("**Stopped** by @bob · ")
    assert "/agent" not in stopped
    withdrawn = status("stopped", Progress(stopped_by="by @bob"), work=None)
    assert "No agent was started" in withdrawn


def test_held_messages_are_mentioned_while_they_wait() -> None:
    assert "1 message waits for the agent" in status("working", Progress(held=1))
    assert "2 messages wait" in status("working", Progress(held=2))
    assert "wait" not in status("stopped", Progress(held=1)).split("\n", 1)[1]


def test_the_consent_request_names_both_and_says_how_to_approve() -> None:
    body = comments.render_awaiting_consent_comment(
        EVENT, marker="<!-- m -->", author=Person("1", "alice"), labeler=Person("2", "bob"),
        command="/agent", help=comments.LinkHelp("https://b.example", "https://c.example"))
    assert body.startswith("**Waiting for approval** · @bob asked")
    assert "@alice: comment `/agent approve`" in body
    assert "https://b.example/connect" in body


@pytest.mark.parametrize(("reason", "expected"), [
    ("not_acting_user", "Only @alice, whose Coder account runs the agent"),
    ("not_acting_or_labeler", "Only @alice or @bob can stop the agent."),
    ("not_author", "Only @alice, the issue's author, can approve"),
    ("no_delegation", "No agent works on this issue. Add the label `delegate-to-agent`"),
    ("nothing_to_approve", "Nothing on this issue is waiting for approval."),
    ("not_running", "is not running (Stopped)"),
    ("help", "`/agent stop` stops it"),
])
def test_refusals_say_who_may_or_why(reason: str, expected: str) -> None:
    people = comments.People(Person("1", "alice"), Person("2", "bob"), Person("1", "alice"))
    text = comments.render_refusal(reason, tracker="github", people=people, command="/agent",
                                   state="stopped", trigger_label="delegate-to-agent")
    assert expected in text


@pytest.mark.parametrize(("seconds", "words"), [
    (45, "45 seconds"), (60, "1 minute"), (90, "90 seconds"), (1800, "30 minutes"),
    (3600, "1 hour"), (7200, "2 hours"),
])
def test_durations_read_as_people_say_them(seconds: float, words: str) -> None:
    assert comments.duration(seconds) == words
