"""Log lines: no secret reaches one (by key or by shape); how and when they are written."""

from __future__ import annotations

import io
import json
import logging
import re
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest
import structlog
import structlog.testing

from service.logging import configure_logging, get_logger, redact_text

REPO = Path(__file__).resolve().parents[2]
CODER_TOKEN = "abcde12345-AbCdEfGhIjKlMnOpQrStUv"


@pytest.fixture(autouse=True)
def _restore_structlog() -> object:
    """configure_logging changes global state; put structlog's defaults back after each test."""
    yield
    structlog.reset_defaults()
    logging.getLogger().handlers[:] = []


class Stream(io.TextIOWrapper):
    """A text stream with a binary buffer, as stderr has; ``getvalue`` reads both."""

    def __init__(self) -> None:
        super().__init__(io.BytesIO(), encoding="utf-8", write_through=True)

    def getvalue(self) -> str:
        self.flush()
        buffer = self.buffer
        assert isinstance(buffer, io.BytesIO)
        return buffer.getvalue().decode()


GITHUB_TOKEN = "ghp_" + "x" * 36


@pytest.mark.parametrize("secret", [
    "github_pat_" + "A1b2" * 10, "ghs_" + "x" * 36, "lin_api_" + "k" * 40,
    "lin_oauth_" + "k" * 40, "abcde12345-AbCdEfGhIjKlMnOpQrStUv",
])
def test_every_token_shape_is_redacted_wherever_it_appears(secret: str) -> None:
    assert redact_text(f"failed with {secret}.") == "failed with [redacted]."


def test_token_shapes_are_redacted_in_text() -> None:
    text = f"token {CODER_TOKEN} and {GITHUB_TOKEN} and Authorization: Bearer eyJhbGciOi.abc.def"
    redacted = redact_text(text)
    assert CODER_TOKEN not in redacted and GITHUB_TOKEN not in redacted
    assert "eyJhbGciOi" not in redacted


def test_log_lines_never_carry_secrets(capsys: object) -> None:
    stream = Stream()
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
    stream = Stream()
    configure_logging(json_output=True, level="WARNING", stream=stream)
    log = get_logger("test")
    log.info("quiet")
    log.warning("loud")
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == ["loud"]


def test_a_logger_made_before_configuration_obeys_it(capsys: pytest.CaptureFixture[str]) -> None:
    early = get_logger("early")  # as module-level loggers are, at import time
    stream = Stream()
    configure_logging(json_output=True, stream=stream)
    early.info("made_early", authorization="Bearer abcdefghijklmnop")
    [line] = [json.loads(text) for text in stream.getvalue().splitlines()]
    assert line["event"] == "made_early" and line["logger"] == "early"
    assert line["authorization"] == "[redacted]"
    assert capsys.readouterr().out == ""


def test_a_line_logged_inside_the_event_loop_survives_sigkill() -> None:
    """Nothing is held back for later: a process killed right after logging (SIGKILL,
    the OOM killer) has written every line it logged."""
    script = textwrap.dedent("""
        import asyncio, os, signal
        from service.logging import configure_logging, get_logger

        async def main():
            configure_logging(json_output=True)
            get_logger("test").info("last_words", number=1)
            os.kill(os.getpid(), signal.SIGKILL)

        asyncio.run(main())
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=REPO, timeout=30, check=False)
    assert result.returncode == -signal.SIGKILL
    [line] = [json.loads(text) for text in result.stderr.splitlines()]
    assert line["event"] == "last_words" and line["number"] == 1


def test_timestamps_are_utc_iso_8601_with_microseconds_and_current() -> None:
    stream = Stream()
    configure_logging(json_output=True, stream=stream)
    before = datetime.now(UTC)
    get_logger("test").info("tick")
    after = datetime.now(UTC)
    stamp = json.loads(stream.getvalue())["timestamp"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z", stamp)
    assert before <= datetime.fromisoformat(stamp.replace("Z", "+00:00")) <= after
