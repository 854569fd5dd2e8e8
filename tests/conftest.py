"""Shared test helpers: fixture paths and signing."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures"


def fixture_bytes(relative: str) -> bytes:
    """The exact bytes of a shared fixture file (signatures depend on them)."""
    return (FIXTURES / relative).read_bytes()


def github_headers(name: str) -> dict[str, str]:
    """The signed header set GitHub would send with fixture ``github/<name>``."""
    data: dict[str, Any] = json.loads((FIXTURES / "github" / "headers.json").read_text())
    return dict(data[name])


GITHUB_SECRET: str = json.loads((FIXTURES / "github" / "headers.json").read_text())["secret"]


def sign_github(body: bytes, secret: str = GITHUB_SECRET) -> str:
    """``X-Hub-Signature-256`` for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


LINEAR_FIXTURE = "linear/issue__update_labeled.json"
LINEAR_FIXTURE_SENT_AT = 1768472493.512  # the fixture's webhookTimestamp, in seconds
_LINEAR_HEADERS: dict[str, Any] = json.loads((FIXTURES / "linear" / "headers.json").read_text())
LINEAR_SECRET: str = _LINEAR_HEADERS["secret"]


def sign_linear(body: bytes, secret: str = LINEAR_SECRET) -> str:
    """``Linear-Signature`` for ``body`` (bare hex)."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def linear_delivery(*, sent_at: float = LINEAR_FIXTURE_SENT_AT) -> tuple[bytes, dict[str, str]]:
    """The Linear fixture with ``webhookTimestamp`` set to ``sent_at``, and its signed headers.

    At the fixture's own time the bytes are unchanged (and so is the signature).
    """
    body = fixture_bytes(LINEAR_FIXTURE)
    stamp = b'"webhookTimestamp": 1768472493512'
    assert stamp in body
    body = body.replace(stamp, b'"webhookTimestamp": %d' % round(sent_at * 1000))
    headers = dict(_LINEAR_HEADERS["headers"])
    headers["Linear-Signature"] = sign_linear(body)
    return body, headers


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus exposition (0 if absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for item in family.samples:
            if item.name == name and all(item.labels.get(k) == v for k, v in labels.items()):
                return float(item.value)
    return 0.0


async def eventually(condition: Callable[[], Awaitable[bool] | bool], what: str) -> None:
    """Poll ``condition`` (sync or async) for up to 10 s without blocking the bridge's loop."""
    timeout = 10.0
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)
