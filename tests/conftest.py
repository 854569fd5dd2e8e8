"""Shared test helpers: fixture paths and signing."""

from __future__ import annotations

import hashlib
import hmac
import json
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
