"""The one outbound HTTP client of the process, instrumented for metrics.

Every call to Coder, GitHub or Linear goes through ``InstrumentedTransport``,
which counts it by service, endpoint kind and status class and times it, so
that an outage upstream shows in ``/metrics`` (not in readiness). Labels stay
small and bounded: a few services, a fixed list of endpoint kinds, five
status classes; never a user, an issue or a token.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Sequence
from contextvars import ContextVar

import httpx

from service import metrics

# (path fragment, endpoint kind), first match wins; anything else is "other".
_ENDPOINT_KINDS: tuple[tuple[str, str], ...] = (
    ("/access_tokens", "app_token"),
    ("/installation", "installation"),
    ("/comments", "comments"),
    ("/rate_limit", "rate_limit"),
    ("/graphql", "graphql"),
    ("/tasks", "tasks"),
    ("/chats", "chats"),
    ("/templateversions", "presets"),
    ("/templates", "templates"),
    ("/workspaces", "workspaces"),
    ("/workspace/", "workspaces"),
    ("/organizations", "organizations"),
    ("/buildinfo", "buildinfo"),
    ("/users", "users"),
    ("/app", "app"),
)


CALL_PURPOSE: ContextVar[str] = ContextVar("call_purpose", default="other")
"""Why the current task calls Coder (``create``, ``sync``, ``command``): set by the
worker around each job and status round, counted in ``coder_bridge_coder_calls_total``."""


def classify_endpoint(path: str) -> str:
    """The endpoint kind of a request path (a small fixed vocabulary)."""
    for fragment, kind in _ENDPOINT_KINDS:
        if fragment in path:
            return kind
    return "other"


def status_class(status: int) -> str:
    """``2xx`` … ``5xx``."""
    return f"{status // 100}xx"


class InstrumentedTransport(httpx.AsyncBaseTransport):
    """Wraps a transport; records ``coder_bridge_api_calls_total`` and ``_seconds``.

    ``services`` maps base URLs (``coder.url``, ``github.api_url``, …) to service
    names; a request to none of them is counted as ``other``.
    """

    def __init__(
        self, inner: httpx.AsyncBaseTransport, services: Sequence[tuple[str, str]]
    ) -> None:
        self.inner = inner
        # Longest prefix first, so that a GHES https://host/api/v3 beats https://host.
        self.services = sorted(((url.rstrip("/"), name) for url, name in services),
                               key=lambda item: -len(item[0]))

    def service_of(self, url: httpx.URL) -> str:
        """Which configured remote a URL belongs to."""
        text = str(url)
        for base, name in self.services:
            if text == base or text.startswith(base + "/") or text.startswith(base + "?"):
                return name
        return "other"

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        service = self.service_of(request.url)
        endpoint = classify_endpoint(request.url.path)
        started = time.perf_counter()
        try:
            response = await self.inner.handle_async_request(request)
        except Exception:
            metrics.API_CALLS.labels(service, endpoint, "error").inc()
            raise
        finally:
            metrics.API_LATENCY.labels(service, endpoint).observe(time.perf_counter() - started)
        metrics.API_CALLS.labels(service, endpoint, status_class(response.status_code)).inc()
        if service == "coder":
            metrics.CODER_CALLS.labels(CALL_PURPOSE.get()).inc()
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def build_http_client(
    services: Sequence[tuple[str, str]], *, timeout: float, max_connections: int = 100
) -> httpx.AsyncClient:
    """The shared, instrumented client; per-call timeouts are set by each API client."""
    inner = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=max_connections))
    return httpx.AsyncClient(transport=InstrumentedTransport(inner, services), timeout=timeout)


def parse_number(value: str | None) -> float | None:
    """A finite number from a header value; ``None`` if absent or not a finite number."""
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header, shared by every API client.

    Delta-seconds are always understood; an HTTP date only when ``now`` (UNIX
    seconds) is given, and one in the past means "now". Negative, non-finite or
    unparseable values give ``None`` (no hint).
    """
    seconds = parse_number(value)
    if seconds is not None:
        return seconds if seconds >= 0 else None
    if value is None or now is None:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - now)
