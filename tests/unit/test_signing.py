"""HMAC-SHA256 signatures: any configured secret, in constant time, nothing else."""

from __future__ import annotations

import hashlib
import hmac

from service.trackers.signing import signature_matches


def test_signature_matches_any_configured_secret_only() -> None:
    body = b'{"action": "labeled"}'
    received = hmac.new(b"new", body, hashlib.sha256).hexdigest()
    assert signature_matches(body, received, ["old", "new"])
    assert not signature_matches(body, received, ["old"])
    assert not signature_matches(body + b" ", received, ["old", "new"])
