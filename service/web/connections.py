"""Connection limits in front of the HTTP parser: a flood of idle or slow connections
cannot take the file descriptors or the attention that real deliveries need.

uvicorn keeps a connection whose request never finishes open for ever, and accepts
connections without bound. ``guarded_protocol`` makes a subclass of its httptools
protocol (passed as ``uvicorn.Config(http=...)``) that:

* closes a connection whose request (headers and body) is not complete within
  ``request_timeout`` seconds of its first byte (or of the connection, for one that
  sends nothing); the application sees the client leave;
* holds at most ``max_connections`` connections: a new one over the limit makes
  room by closing the connection that has waited longest for its request (a slow
  or idle client), and is refused only when every connection is busy being
  answered. A real delivery sends its request at once, so it never waits long.

One timer per server sweeps the waiting connections every ``SWEEP_SECONDS``, so a
request costs two dictionary operations, not a timer of its own. Only asyncio's
protocol methods and httptools' parser callbacks are overridden, each calling
uvicorn's own.
"""

from __future__ import annotations

import asyncio
import resource
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service import metrics

REQUEST_TIMEOUT_SECONDS = 10.0
SWEEP_SECONDS = 0.5


def default_max_connections() -> int:
    """Half of the process's file descriptor limit (the rest is for the database, the
    outbound connections and the log), between 64 and 4096."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 4096
    return max(64, min(4096, soft // 2))


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a request deadline and a connection limit.

    Use ``guarded_protocol`` to get a subclass with its own limits and bookkeeping.
    """

    max_connections: ClassVar[int] = 1024
    request_timeout: ClassVar[float] = REQUEST_TIMEOUT_SECONDS
    #: Connections waiting for (the rest of) a request, oldest first, with the loop
    #: time their wait began.
    waiting: ClassVar[dict[GuardedHttpProtocol, float]] = {}
    sweeper: ClassVar[asyncio.TimerHandle | None] = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections and not self._evict_one():
            metrics.CONNECTIONS_CLOSED.labels("limit").inc()
            self._close()
            return
        self._await_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self.waiting.pop(self, None)
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._await_request()

    def on_message_complete(self) -> None:
        self.waiting.pop(self, None)
        super().on_message_complete()

    def _await_request(self) -> None:
        if self not in self.waiting:
            self.waiting[self] = self.loop.time()
        cls = type(self)
        if cls.sweeper is None:
            cls.sweeper = self.loop.call_later(SWEEP_SECONDS, cls._sweep, self.loop)

    @classmethod
    def _sweep(cls, loop: asyncio.AbstractEventLoop) -> None:
        """Close every connection that has waited longer than the deadline; sweep again
        while any waits."""
        cutoff = loop.time() - cls.request_timeout
        for connection, since in list(cls.waiting.items()):
            if since > cutoff:
                break  # the rest began waiting later
            del cls.waiting[connection]
            metrics.CONNECTIONS_CLOSED.labels("timeout").inc()
            connection._close()
        cls.sweeper = loop.call_later(SWEEP_SECONDS, cls._sweep, loop) if cls.waiting else None

    def _evict_one(self) -> bool:
        """Close the connection that has waited longest for its request; False if none."""
        for other in self.waiting:
            if other is not self:
                del self.waiting[other]
                metrics.CONNECTIONS_CLOSED.labels("evicted").inc()
                other._close()
                return True
        return False

    def _close(self) -> None:
        # Abort rather than close: nothing is owed to such a client, and the file
        # descriptor is freed at once.
        self.connections.discard(self)
        if not self.transport.is_closing():
            self.transport.abort()


def guarded_protocol(
    *, max_connections: int | None = None, request_timeout: float = REQUEST_TIMEOUT_SECONDS
) -> type[GuardedHttpProtocol]:
    """A ``GuardedHttpProtocol`` subclass with these limits and its own bookkeeping."""
    attributes: dict[str, Any] = {
        "max_connections": max_connections or default_max_connections(),
        "request_timeout": request_timeout,
        "waiting": {},
        "sweeper": None,
    }
    return type("BridgeHttpProtocol", (GuardedHttpProtocol,), attributes)
