"""HMAC-SHA256 webhook signatures, shared by every tracker's verifier."""

from __future__ import annotations

import hmac
from collections.abc import Sequence


def signature_matches(body: bytes, received_hex: str, secrets: Sequence[str]) -> bool:
    """True if ``received_hex`` is the HMAC-SHA256 of ``body`` under any of ``secrets``.

    Every secret is compared in constant time, with no early exit.
    ``received_hex`` must already be checked to be 64 hex digits.
    """
    received = bytes.fromhex(received_hex)
    matched = False
    for secret in secrets:
        expected = hmac.digest(secret.encode("utf-8"), body, "sha256")
        matched |= hmac.compare_digest(expected, received)
    return matched
