"""HMAC-SHA256 signatures: the right digest at every size, and the GIL kept."""

from __future__ import annotations

import hashlib
import hmac
import sys
import threading
import time
from collections.abc import Callable, Iterator

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


@pytest.fixture
def long_switch_interval() -> Iterator[None]:
    """Another thread then runs only when this one gives the GIL up by itself."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1.0)
    yield
    sys.setswitchinterval(previous)


def turns_of_another_thread(work: Callable[[], object], repeat: int) -> int:
    """How often a thread waking every 0.1 ms got to run while ``work`` ran ``repeat`` times."""
    turns = 0
    done = threading.Event()

    def other() -> None:
        nonlocal turns
        while not done.is_set():
            time.sleep(0.0001)
            turns += 1

    thread = threading.Thread(target=other)
    thread.start()
    time.sleep(0.01)  # let it reach its loop
    before = turns
    for _ in range(repeat):
        work()
    during = turns - before
    done.set()
    thread.join()
    return during


@pytest.mark.usefixtures("long_switch_interval")
def test_hmac_sha256_keeps_the_gil_where_the_one_shot_digest_gives_it_up() -> None:
    body = b"x" * 14_336
    released = turns_of_another_thread(lambda: hmac.digest(b"k", body, "sha256"), 4000)
    kept = turns_of_another_thread(lambda: hmac_sha256(b"k", body), 4000)
    assert released > 20  # the measurement sees a release when there is one
    assert kept <= 2
