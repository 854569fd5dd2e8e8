"""End to end: crashes resume at once, and hostile traffic cannot starve real deliveries."""

from __future__ import annotations

import contextlib
import socket
import time
from contextlib import ExitStack
from pathlib import Path

from tests.e2e.harness import Bridge, running_bridge, wait_for
from tests.e2e.test_postgres_roles import postgres_url  # noqa: F401  (a fixture)
from tests.fakes.server import free_port

ISSUES = (11, 12, 13, 14)
LONG_LEASE = 120  # the default: a takeover that waited for it would take two minutes
MIB = 1024 * 1024


def every_issue_has_its_task_link(bridge: Bridge) -> bool:
    return all(any("/tasks/codertocat/" in c["body"] for c in bridge.comments(n))
               for n in ISSUES)


def assert_once_each(bridge: Bridge) -> None:
    assert len(bridge.coder.tasks) == len(ISSUES)  # none twice
    assert all(len(bridge.comments(n)) == 1 for n in ISSUES)


def test_a_bridge_killed_with_jobs_in_flight_resumes_them_within_seconds_of_restart(
    tmp_path: Path,
) -> None:
    with running_bridge(tmp_path, lease_seconds=LONG_LEASE) as bridge:
        bridge.link_author()
        bridge.coder.delay_next("create_task", 2.0, times=len(ISSUES))
        for number in ISSUES:
            assert bridge.deliver_issue(number).json()["status"] == "accepted"
        wait_for(lambda: bridge.coder.in_flight == len(ISSUES), what="four jobs in flight")
        bridge.kill()
        wait_for(lambda: bridge.coder.in_flight == 0, what="Coder to finish the late creates")

        bridge.start()
        restarted = time.monotonic()
        wait_for(lambda: every_issue_has_its_task_link(bridge), timeout=10,
                 what="every job to be done within 10 s of the restart")
        assert time.monotonic() - restarted < 10
        assert "jobs_taken_back" in bridge.logs()
        assert_once_each(bridge)


def test_on_postgres_a_killed_workers_jobs_are_taken_over_within_seconds(
    tmp_path: Path, postgres_url: str,  # noqa: F811
) -> None:
    with running_bridge(tmp_path, start=False, storage_url=postgres_url,
                        lease_seconds=LONG_LEASE) as first:
        first.link_author()
        first.start()
        other_dir = tmp_path / "other"
        other_dir.mkdir()
        second = Bridge(other_dir, first.coder, first.github, first.linear, first.coder_url,
                        first.github_url, first.linear_url, free_port(), settings=first.settings)
        try:
            first.coder.delay_next("create_task", 2.0, times=len(ISSUES))
            for number in ISSUES:
                first.deliver_issue(number)
            wait_for(lambda: first.coder.in_flight == len(ISSUES), what="jobs held by the first")
            second.start("--role", "worker")
            first.kill()
            killed = time.monotonic()
            wait_for(lambda: every_issue_has_its_task_link(first), timeout=30,
                     what="the second worker to take the jobs over")
            assert time.monotonic() - killed < 20  # seconds, not the 120 s lease
            assert "jobs_taken_back" in second.logs()
            assert_once_each(first)
            assert second.stop() == 0
        finally:
            if second.process is not None and second.process.poll() is None:
                second.process.kill()


def test_a_flood_of_slow_connections_does_not_starve_a_real_delivery(tmp_path: Path) -> None:
    # With 256 file descriptors, 300 connections whose headers never finish used to take
    # every one of them, and the real delivery's connection was reset.
    with running_bridge(tmp_path, nofile=256) as bridge, ExitStack() as stack:
        bridge.link_author()
        for _ in range(300):
            sock = stack.enter_context(socket.create_connection(("127.0.0.1", bridge.port)))
            sock.sendall(b"POST /webhooks/github HTTP/1.1\r\nHost: bridge\r\nX-Slow: ")
        answer = bridge.deliver()
        assert answer.status_code == 200 and answer.json()["status"] == "accepted"
        bridge.wait_for_comment("/tasks/codertocat/")


def send_partially(bridge: Bridge, stack: ExitStack, *, sent: int, signed: bool
                   ) -> socket.socket:
    """A delivery that declares a 24 MiB body and sends only ``sent`` bytes of it (less if
    the bridge refuses it and closes the connection first)."""
    sock = stack.enter_context(socket.create_connection(("127.0.0.1", bridge.port)))
    signature = b"X-Hub-Signature-256: sha256=" + b"0" * 64 + b"\r\n" if signed else b""
    sock.sendall(b"POST /webhooks/github HTTP/1.1\r\nHost: bridge\r\n"
                 b"Content-Type: application/json\r\nX-GitHub-Event: issues\r\n"
                 b"X-GitHub-Delivery: flood\r\n" + signature
                 + b"Content-Length: %d\r\n\r\n" % (24 * MIB))
    with contextlib.suppress(ConnectionResetError, BrokenPipeError):  # refused while sending
        sock.sendall(b" " * sent)
    return sock


def status_of(sock: socket.socket) -> int:
    sock.settimeout(15)
    head = sock.recv(4096)
    return int(head.split(b" ", 2)[1])


def test_unsigned_half_sent_bodies_are_refused_before_they_are_read(tmp_path: Path) -> None:
    with running_bridge(tmp_path, max_body_bytes=25 * MIB) as bridge, ExitStack() as stack:
        before = bridge.rss_bytes()
        flood = [send_partially(bridge, stack, sent=2 * MIB, signed=False) for _ in range(40)]
        assert [status_of(sock) for sock in flood] == [401] * 40
        assert bridge.rss_bytes() - before < 64 * MIB
        assert bridge.deliver().json()["status"] == "accepted"


def test_bodies_past_the_memory_budget_are_refused_and_memory_stays_bounded(
    tmp_path: Path,
) -> None:
    with running_bridge(tmp_path, max_body_bytes=25 * MIB) as bridge, ExitStack() as stack:
        before = bridge.rss_bytes()
        for _ in range(40):
            send_partially(bridge, stack, sent=8 * MIB, signed=True)
        # The budget is 4 times max_body_bytes: a dozen such bodies fit; the rest are refused
        # at once (503, Retry-After), and those held are cut off when their deadline passes.
        assert bridge.logs().count('"reason":"busy"') >= 20
        assert bridge.rss_bytes() - before < 256 * MIB
        wait_for(lambda: bridge.logs().count("webhook_abandoned") >= 5, timeout=20,
                 what="the bodies held to run out of time")
        assert bridge.deliver().json()["status"] == "accepted"
