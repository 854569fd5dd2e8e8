"""The connection guard on a real loopback server: slow or idle clients cannot hold the
connections (and file descriptors) that real deliveries need."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import httpx
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service import metrics
from service.web.connections import guarded_protocol
from tests.e2e.harness import wait_for
from tests.fakes.server import serve_in_thread


async def echo(request: Request) -> JSONResponse:
    return JSONResponse({"read": len(await request.body())})


APP = Starlette(routes=[Route("/", echo, methods=["POST"])])


@contextmanager
def guarded_server(*, max_connections: int, request_timeout: float) -> Iterator[str]:
    protocol = guarded_protocol(max_connections=max_connections, request_timeout=request_timeout)
    with serve_in_thread(APP, http=protocol) as url:
        yield url


@contextmanager
def open_slowly(url: str, count: int) -> Iterator[list[socket.socket]]:
    """``count`` connections that send the start of a request, never its end."""
    port = int(url.rsplit(":", 1)[1])
    with ExitStack() as stack:
        sockets = []
        for _ in range(count):
            sock = stack.enter_context(socket.create_connection(("127.0.0.1", port)))
            sock.sendall(b"POST / HTTP/1.1\r\nHost: test\r\nX-Slow: ")
            sockets.append(sock)
        yield sockets


def closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(0.01)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def closed_total(reason: str) -> float:
    for family in text_string_to_metric_families(generate_latest(metrics.REGISTRY).decode()):
        for sample in family.samples:
            if (sample.name == "coder_bridge_connections_closed_total"
                    and sample.labels.get("reason") == reason):
                return float(sample.value)
    return 0.0


def test_a_connection_whose_headers_never_finish_is_closed_after_the_deadline() -> None:
    before = closed_total("timeout")
    with guarded_server(max_connections=100, request_timeout=0.6) as url, \
            open_slowly(url, 1) as [slow], \
            socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as idle:
        started = time.monotonic()
        wait_for(lambda: closed_by_server(slow) and closed_by_server(idle), timeout=5,
                 what="the server to close the slow and the idle connection")
        assert time.monotonic() - started < 3
        assert httpx.post(url + "/", content=b"x" * 10).json() == {"read": 10}
    assert closed_total("timeout") - before == 2


def test_a_body_that_does_not_arrive_in_time_is_cut_off() -> None:
    before = closed_total("timeout")
    with guarded_server(max_connections=100, request_timeout=0.6) as url, \
            socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as slow:
        slow.sendall(b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\n" + b"x" * 50)
        wait_for(lambda: closed_by_server(slow), timeout=5, what="the slow body to be cut off")
        assert httpx.post(url + "/", content=b"y" * 100).json() == {"read": 100}
    assert closed_total("timeout") - before == 1


def test_at_the_limit_a_new_connection_makes_room_by_closing_the_oldest_waiting() -> None:
    with guarded_server(max_connections=20, request_timeout=60) as url, \
            open_slowly(url, 50) as slow:
        # A real request still gets through: the slowest clients made room for it.
        for number in range(5):
            answer = httpx.post(url + "/", content=b"x" * number, timeout=5)
            assert answer.json() == {"read": number}
        wait_for(lambda: sum(closed_by_server(s) for s in slow) >= 30, timeout=5,
                 what="the oldest slow connections to be closed")
        assert not closed_by_server(slow[-1])  # the newest waits on, for now


def test_a_connection_busy_with_a_request_is_never_taken_for_a_slow_one() -> None:
    with guarded_server(max_connections=2, request_timeout=0.6) as url, \
            httpx.Client(base_url=url) as keep_alive:
        assert keep_alive.post("/", content=b"a").json() == {"read": 1}
        time.sleep(0.9)  # longer than the request deadline, but between requests
        assert keep_alive.post("/", content=b"bb").json() == {"read": 2}
