"""Connection limits in front of the HTTP parser: a flood of idle or slow connections
cannot take the file descriptors or the attention that real deliveries need.

uvicorn keeps a connection whose request headers never finish open for ever, and
accepts connections without bound. ``guarded_protocol`` makes a subclass of its
httptools protocol (passed as ``uvicorn.Config(http=...)``) that:

* closes a connection whose request headers are not complete within
  ``header_timeout`` seconds of its first byte (or of the connection, for one
  that sends nothing);
* holds at most ``max_connections`` connections: a new one over the limit makes
  room by closing the connection that has waited longest for its headers (a
  slow or idle client), and is refused only when every connection is busy with a
  request. A real delivery sends its headers at once, so it never waits long.

Only asyncio's protocol methods and httptools' parser callbacks are overridden,
each calling uvicorn's own.
"""

from __future__ import annotations

import asyncio
import resource
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service import metrics

HEADER_TIMEOUT_SECONDS = 10.0


def default_max_connections() -> int:
    """Half of the process's file descriptor limit (the rest is for the database, the
    outbound connections and the log), between 64 and 4096."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 4096
    return max(64, min(4096, soft // 2))


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header timeout and a connection limit.

    Use ``guarded_protocol`` to get a subclass with its own limits and bookkeeping.
    """

    max_connections: ClassVar[int] = 1024
    header_timeout: ClassVar[float] = HEADER_TIMEOUT_SECONDS
    #: Connections waiting for request headers, oldest first, with their timers.
    waiting: ClassVar[dict[GuardedHttpProtocol, asyncio.TimerHandle]] = {}

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections and not self._evict_one():
            metrics.CONNECTIONS_CLOSED.labels("limit").inc()
            self._close()
            return
        self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._await_headers()

    def on_headers_complete(self) -> None:
        self._stop_waiting()
        super().on_headers_complete()

    def _await_headers(self) -> None:
        if self not in self.waiting:
            self.waiting[self] = self.loop.call_later(self.header_timeout, self._too_slow)

    def _stop_waiting(self) -> None:
        timer = self.waiting.pop(self, None)
        if timer is not None:
            timer.cancel()

    def _too_slow(self) -> None:
        self.waiting.pop(self, None)
        metrics.CONNECTIONS_CLOSED.labels("header_timeout").inc()
        self._close()

    def _evict_one(self) -> bool:
        """Close the connection that has waited longest for its headers; False if none."""
        for other in self.waiting:
            if other is not self:
                other._stop_waiting()
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
    *, max_connections: int | None = None, header_timeout: float = HEADER_TIMEOUT_SECONDS
) -> type[GuardedHttpProtocol]:
    """A ``GuardedHttpProtocol`` subclass with these limits and its own bookkeeping."""
    attributes: dict[str, Any] = {
        "max_connections": max_connections or default_max_connections(),
        "header_timeout": header_timeout,
        "waiting": {},
    }
    return type("BridgeHttpProtocol", (GuardedHttpProtocol,), attributes)
