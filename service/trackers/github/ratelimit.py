"""Client-side pacing of GitHub's content-creating requests (secondary limits).

GitHub allows at most 80 content-creating requests per minute and 500 per
hour, and asks for mutating requests one at a time. ``ContentRateLimiter``
keeps the bridge under those numbers on its own, so that a burst of labelled
issues is slowed down here instead of being refused (and possibly the
integration banned) there. It does not space requests artificially: an idle
bridge posts its comment at once, and a burst runs at full speed until a
window is full.

The window arithmetic is the pure function ``service.core.pacing.delay_needed``; the
limiter only keeps the timestamps (or asks a ``Ledger`` shared by every replica), a
lock and an injectable clock and sleep.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Protocol

from service.core.pacing import Window, delay_needed
from service.errors import PacingDeferred

CONTENT_CREATION_WINDOWS: tuple[Window, ...] = ((80, 60.0), (500, 3600.0))


class Ledger(Protocol):
    """Writes recorded where every replica sees them (the store's shared budget), so that
    together they stay under one limit: GitHub counts per token, not per process."""

    async def take(self, now: float, windows: Sequence[Window]) -> float:
        """Record one write at ``now`` if every window has room and return 0.0; else
        record nothing and return the seconds to wait."""
        ...

    async def wait(self, now: float, windows: Sequence[Window]) -> float:
        """The seconds one more write would wait now; records nothing."""
        ...


def _validate(windows: Sequence[Window]) -> tuple[Window, ...]:
    """Windows must be positive; none at all means "no limit, only one at a time"."""
    for limit, span in windows:
        if limit < 1 or span <= 0:
            raise ValueError(f"invalid rate-limit window ({limit}, {span})")
    return tuple(windows)


class ContentRateLimiter:
    """A sliding-window limiter over several windows, serialising its callers.

    ``windows`` defaults to GitHub's content-creation limits (80/min,
    500/hour). ``clock`` returns seconds (monotonic by default; wall-clock time with a
    ``ledger``, whose records every replica compares) and ``sleep`` waits that long;
    both are injectable so that tests need no real waiting. With a ``ledger`` the
    writes are counted there, across replicas, instead of in this process.
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
        ledger: Ledger | None = None,
    ) -> None:
        self._windows = _validate(windows)
        self._ledger = ledger
        # Deferred callers told slots this far apart (the tightest window's rate).
        self._spacing = min((span / limit for limit, span in self._windows), default=0.0)
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

    async def check_room(self, max_wait: float) -> None:
        """Raise ``PacingDeferred`` (with a slot, as ``permit`` does) if a request made
        now would wait more than ``max_wait`` seconds; count no request. Lets a caller
        give up before the reads that lead to its write (each costs a request against
        GitHub's hourly limit)."""
        now = self._clock()
        if self._ledger is not None:
            wait = await self._ledger.wait(now, self._windows)
        else:
            wait = delay_needed(self._timestamps, self._windows, now)
        self._defer_beyond(max_wait, wait, now)

    def recent(self) -> list[float]:
        """Start times of the requests still inside the longest window (ascending)."""
        return list(self._timestamps)

    async def _admit(self, max_wait: float | None = None) -> None:
        """Sleep until the windows have room, then record the request (caller holds the
        lock); raise ``PacingDeferred`` instead if that is more than ``max_wait`` away."""
        while True:
            now = self._clock()
            if self._ledger is not None:
                if max_wait is not None:
                    self._defer_beyond(max_wait, await self._ledger.wait(now, self._windows),
                                       now)
                wait = await self._ledger.take(now, self._windows)
                if wait <= 0:
                    return
                await self._sleep(wait)
                continue
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
        if self._ledger is None:
            planned = self._timestamps + self._promised  # both ascending, promised all > now
            slot = now + delay_needed(planned, self._windows, now)
            if self._promised:
                slot = max(slot, self._promised[-1])
        else:
            # The ledger knows the writes, not this process's promises: space the slots
            # after the moment there is room. Promises due before it do not count: their
            # jobs come back first, find no room and are deferred again.
            ready = now + wait
            later = len(self._promised) - bisect.bisect_left(self._promised, ready)
            slot = ready + self._spacing * later
        bisect.insort(self._promised, slot)
        raise PacingDeferred("github", slot - now)

    def _forget_before(self, cutoff: float) -> None:
        del self._timestamps[: bisect.bisect_right(self._timestamps, cutoff)]


__all__ = [
    "CONTENT_CREATION_WINDOWS",
    "ContentRateLimiter",
    "Ledger",
    "Window",
    "delay_needed",
]
