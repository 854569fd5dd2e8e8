"""HMAC-SHA256 signatures: the right digest at every size and for every key length."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from service.trackers.signing import hmac_sha256, signature_matches


@pytest.mark.parametrize("size", [0, 1, 2046, 2047, 2048, 4094, 4095, 14_336, 100_003])
def test_hmac_sha256_is_the_standard_digest_at_every_size(size: int) -> None:
    body = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert hmac_sha256(b"k3y", body) == hmac.new(b"k3y", body, hashlib.sha256).digest()


@pytest.mark.parametrize("key_size", [0, 1, 63, 64, 65, 200])
def test_hmac_sha256_is_the_standard_digest_for_keys_of_every_length(key_size: int) -> None:
    """Keys shorter than, as long as, and longer than SHA-256's 64-byte block."""
    key = bytes((7 * i + 1) % 256 for i in range(key_size))
    body = b'{"action": "labeled"}' * 100
    assert hmac_sha256(key, body) == hmac.new(key, body, hashlib.sha256).digest()


def test_hmac_sha256_gives_the_same_digest_when_repeated() -> None:
    """The cached key states are copied, never fed a body themselves."""
    first = hmac_sha256(b"k3y", b"first body")
    assert hmac_sha256(b"k3y", b"second body") == hmac.new(b"k3y", b"second body",
                                                           hashlib.sha256).digest()
    assert hmac_sha256(b"k3y", b"first body") == first


def test_signature_matches_any_configured_secret_only() -> None:
    body = b'{"action": "labeled"}'
    received = hmac.new(b"new", body, hashlib.sha256).hexdigest()
    assert signature_matches(body, received, ["old", "new"])
    assert not signature_matches(body, received, ["old"])
    assert not signature_matches(body + b" ", received, ["old", "new"])
