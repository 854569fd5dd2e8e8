"""Client-side pacing of GitHub's content-creating requests (secondary limits).

GitHub allows at most 80 content-creating requests per minute and 500 per
hour, and asks for mutating requests one at a time. ``ContentRateLimiter``
keeps the bridge under those numbers on its own, so that a burst of labelled
issues is slowed down here instead of being refused (and possibly the
integration banned) there. It does not space requests artificially: an idle
bridge posts its comment at once, and a burst runs at full speed until a
window is full.

The window arithmetic is the pure function ``delay_needed``; the limiter only
keeps the timestamps, a lock and an injectable clock and sleep.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager

from service.errors import PacingDeferred

Window = tuple[int, float]
"""``(limit, seconds)``: at most ``limit`` requests in any ``seconds``-long span."""

CONTENT_CREATION_WINDOWS: tuple[Window, ...] = ((80, 60.0), (500, 3600.0))


def delay_needed(timestamps: Sequence[float], windows: Sequence[Window], now: float) -> float:
    """Seconds to wait from ``now`` until one more request fits every window.

    ``timestamps`` are the start times of earlier requests, ascending. A
    window ``(limit, span)`` counts the requests in ``(now - span, now]``;
    when that is already ``limit`` or more, the new request must wait until
    enough of the oldest ones are ``span`` seconds old. The result is the
    largest wait over all windows, ``0.0`` when the request may go now.
    """
    wait = 0.0
    for limit, span in windows:
        start = bisect.bisect_right(timestamps, now - span)
        in_window = len(timestamps) - start
        if in_window >= limit:
            oldest_to_expire = timestamps[start + in_window - limit]
            wait = max(wait, oldest_to_expire + span - now)
    return wait


def _validate(windows: Sequence[Window]) -> tuple[Window, ...]:
    """Windows must be positive; none at all means "no limit, only one at a time"."""
    for limit, span in windows:
        if limit < 1 or span <= 0:
            raise ValueError(f"invalid rate-limit window ({limit}, {span})")
    return tuple(windows)


class ContentRateLimiter:
    """A sliding-window limiter over several windows, serialising its callers.

    ``windows`` defaults to GitHub's content-creation limits (80/min,
    500/hour). ``clock`` returns seconds (monotonic by default) and ``sleep``
    waits that long; both are injectable so that tests need no real waiting.
    Callers are served one at a time in arrival order (``asyncio.Lock`` is
    FIFO). One limiter should be shared by everything that mutates GitHub
    content with the same identity.
    """

    def __init__(
        self,
        windows: Sequence[Window] = CONTENT_CREATION_WINDOWS,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._windows = _validate(windows)
        self._longest = max((span for _, span in self._windows), default=0.0)
        self._clock = clock
        self._sleep = sleep
        self._lock = asyncio.Lock()
        self._timestamps: list[float] = []
        self._promised: list[float] = []  # future slots told to deferred callers, ascending

    def __repr__(self) -> str:
        return f"ContentRateLimiter(windows={list(self._windows)!r})"

    async def acquire(self) -> None:
        """Wait until one more request fits every window, then count it as started now.

        Concurrent callers are admitted one at a time, in order. The request
        itself is not held under the lock; use ``permit`` for that.
        """
        async with self._lock:
            await self._admit()

    @asynccontextmanager
    async def permit(self, *, max_wait: float | None = None) -> AsyncIterator[None]:
        """Like ``acquire``, and hold the lock until the block ends.

        Wrap a mutating request in it so that mutating requests run one at a
        time, as GitHub asks. With ``max_wait``, a request that would have to wait
        longer for room in the windows is not admitted: ``PacingDeferred`` says in
        how many seconds to come back, and nothing is counted.

        Each deferral is told a later slot than the deferrals still outstanding (the
        k-th deferred caller gets about the k-th free slot), so that deferred jobs come
        back spread out instead of all at the one moment a window frees a place.
        Slots are a schedule, not a reservation: whoever asks when there is room
        gets it.
        """
        async with self._lock:
            await self._admit(max_wait)
            yield

    def check_room(self, max_wait: float) -> None:
        """Raise ``PacingDeferred`` (with a slot, as ``permit`` does) if a request made
        now would wait more than ``max_wait`` seconds; count no request. Lets a caller
        give up before the reads that lead to its write (each costs a request against
        GitHub's hourly limit)."""
        now = self._clock()
        self._defer_beyond(max_wait, delay_needed(self._timestamps, self._windows, now), now)

    def recent(self) -> list[float]:
        """Start times of the requests still inside the longest window (ascending)."""
        return list(self._timestamps)

    async def _admit(self, max_wait: float | None = None) -> None:
        """Sleep until the windows have room, then record the request (caller holds the
        lock); raise ``PacingDeferred`` instead if that is more than ``max_wait`` away."""
        while True:
            now = self._clock()
            self._forget_before(now - self._longest)
            wait = delay_needed(self._timestamps, self._windows, now)
            if max_wait is not None:
                self._defer_beyond(max_wait, wait, now)
            if wait <= 0:
                last = self._timestamps[-1] if self._timestamps else now
                self._timestamps.append(max(now, last))  # stays ascending if the clock steps back
                return
            await self._sleep(wait)

    def _defer_beyond(self, max_wait: float, wait: float, now: float) -> None:
        """Raise ``PacingDeferred`` with the next free slot if ``wait`` exceeds ``max_wait``.

        The slot comes after every slot still promised to earlier deferrals, and is
        promised in turn (see ``permit``).
        """
        if wait <= max_wait:
            return
        del self._promised[: bisect.bisect_right(self._promised, now)]
        planned = self._timestamps + self._promised  # both ascending, promised all > now
        slot = now + delay_needed(planned, self._windows, now)
        if self._promised:
            slot = max(slot, self._promised[-1])
        self._promised.append(slot)
        raise PacingDeferred("github", slot - now)

    def _forget_before(self, cutoff: float) -> None:
        del self._timestamps[: bisect.bisect_right(self._timestamps, cutoff)]


__all__ = [
    "CONTENT_CREATION_WINDOWS",
    "ContentRateLimiter",
    "Window",
    "delay_needed",
]
