"""Log lines: no secret reaches one (by key or by shape); how and when they are written."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from datetime import UTC, datetime

import pytest
import structlog
import structlog.testing

from service.logging import configure_logging, get_logger, hot_info, redact_text

CODER_TOKEN = "abcde12345-AbCdEfGhIjKlMnOpQrStUv"


@pytest.fixture(autouse=True)
def _restore_structlog() -> object:
    """configure_logging changes global state; put structlog's defaults back after each test."""
    yield
    structlog.reset_defaults()
    logging.getLogger().handlers[:] = []
GITHUB_TOKEN = "ghp_" + "x" * 36


def test_token_shapes_are_redacted_in_text() -> None:
    text = f"token {CODER_TOKEN} and {GITHUB_TOKEN} and Authorization: Bearer eyJhbGciOi.abc.def"
    redacted = redact_text(text)
    assert CODER_TOKEN not in redacted and GITHUB_TOKEN not in redacted
    assert "eyJhbGciOi" not in redacted


def test_log_lines_never_carry_secrets(capsys: object) -> None:
    stream = io.StringIO()
    configure_logging(json_output=True, stream=stream)
    log = get_logger("test")
    structlog.contextvars.bind_contextvars(delivery_id="d-1")
    try:
        log.info("linking", coder_token=CODER_TOKEN, headers={"Authorization": "Bearer abc"},
                 note=f"the token was {CODER_TOKEN}", webhook_secret="s3cret-hook")
        logging.getLogger("uvicorn.error").warning("stdlib says %s", GITHUB_TOKEN)
        try:
            raise ValueError(f"boom {CODER_TOKEN}")
        except ValueError:
            log.exception("failed")
    finally:
        structlog.contextvars.clear_contextvars()
    output = stream.getvalue()
    for secret in (CODER_TOKEN, GITHUB_TOKEN, "s3cret-hook", "Bearer abc"):
        assert secret not in output
    lines = [json.loads(line) for line in output.splitlines()]
    assert lines[0]["event"] == "linking" and lines[0]["delivery_id"] == "d-1"
    assert lines[0]["logger"] == "test" and lines[0]["level"] == "info"
    assert lines[1]["logger"] == "uvicorn.error" and lines[1]["level"] == "warning"
    assert lines[2]["event"] == "failed" and "ValueError" in lines[2]["exception"]


def test_levels_below_the_configured_one_are_dropped() -> None:
    stream = io.StringIO()
    configure_logging(json_output=True, level="WARNING", stream=stream)
    log = get_logger("test")
    log.info("quiet")
    log.warning("loud")
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == ["loud"]


def test_a_logger_made_before_configuration_obeys_it(capsys: pytest.CaptureFixture[str]) -> None:
    early = get_logger("early")  # as module-level loggers are, at import time
    stream = io.StringIO()
    configure_logging(json_output=True, stream=stream)
    early.info("made_early", authorization="Bearer abcdefghijklmnop")
    [line] = [json.loads(text) for text in stream.getvalue().splitlines()]
    assert line["event"] == "made_early" and line["logger"] == "early"
    assert line["authorization"] == "[redacted]"
    assert capsys.readouterr().out == ""


class CountingStream(io.StringIO):
    """A text stream that counts the writes it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


async def test_lines_of_one_loop_iteration_are_written_together_and_in_order() -> None:
    stream = CountingStream()
    configure_logging(json_output=True, stream=stream)
    log = get_logger("test")
    for number in range(5):
        log.info("accepted", number=number)
    logging.getLogger("uvicorn.error").warning("stdlib in between")
    log.info("after")
    assert stream.getvalue() == ""  # buffered until the loop's next iteration
    await asyncio.sleep(0)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["accepted"] * 5 + ["stdlib in between", "after"]
    assert stream.writes == 1


def test_outside_an_event_loop_every_line_is_written_at_once() -> None:
    stream = CountingStream()
    configure_logging(json_output=True, stream=stream)
    get_logger("test").info("one")
    assert json.loads(stream.getvalue())["event"] == "one"
    get_logger("test").info("two")
    assert stream.writes == 2


def test_timestamps_are_utc_iso_8601_with_microseconds_and_current() -> None:
    stream = io.StringIO()
    configure_logging(json_output=True, stream=stream)
    before = datetime.now(UTC)
    get_logger("test").info("tick")
    after = datetime.now(UTC)
    stamp = json.loads(stream.getvalue())["timestamp"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp)
    assert before <= datetime.fromisoformat(stamp.replace("Z", "+00:00")) <= after


def test_hot_info_writes_the_line_structlog_writes_with_the_same_redaction() -> None:
    stream = io.StringIO()
    configure_logging(json_output=True, stream=stream)
    structlog.contextvars.bind_contextvars(job_id=3)
    structlog.contextvars.clear_contextvars()  # a cleared key is not written
    structlog.contextvars.bind_contextvars(tracker="github", delivery_id="d-7")
    fields = {"issue": "github:42:7", "reason": f"label 'x' carried {CODER_TOKEN}",
              "webhook_secret": "s3cret-hook"}
    try:
        get_logger("service.web").info("webhook_ignored", **fields)
        hot_info("service.web", "webhook_ignored", **fields)
        hot_info("service.web", f"leaked {GITHUB_TOKEN}")
    finally:
        structlog.contextvars.clear_contextvars()
    output = stream.getvalue()
    for secret in (CODER_TOKEN, GITHUB_TOKEN, "s3cret-hook"):
        assert secret not in output
    by_structlog, by_hot_info, leaked = (json.loads(line) for line in output.splitlines())
    assert by_structlog.pop("timestamp") <= by_hot_info.pop("timestamp")
    assert list(by_hot_info.items()) == list(by_structlog.items())  # same keys, same order
    assert by_hot_info["delivery_id"] == "d-7" and by_hot_info["level"] == "info"
    assert "job_id" not in by_hot_info
    assert leaked["event"] == "leaked [redacted]"


def test_hot_info_obeys_the_level_and_the_console_format() -> None:
    quiet = io.StringIO()
    configure_logging(json_output=True, level="WARNING", stream=quiet)
    hot_info("service.web", "webhook_accepted", issue="github:1:1")
    assert quiet.getvalue() == ""
    console = io.StringIO()
    configure_logging(json_output=False, stream=console)
    hot_info("service.web", "webhook_accepted", issue="github:1:1")
    line = console.getvalue()
    assert "webhook_accepted" in line and "issue=github:1:1" in line
    assert not line.lstrip().startswith("{")


def test_hot_info_follows_structlog_when_its_configuration_is_replaced() -> None:
    stream = io.StringIO()
    configure_logging(json_output=True, stream=stream)
    with structlog.testing.capture_logs() as captured:
        hot_info("service.web", "webhook_accepted", issue="github:1:1")
    assert [entry["event"] for entry in captured] == ["webhook_accepted"]
    structlog.reset_defaults()
    hot_info("service.web", "webhook_duplicate", issue="github:1:1")
    assert stream.getvalue() == ""  # neither line bypassed what structlog was told to do
