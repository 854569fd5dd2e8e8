"""A sliding window of requests per client: the /connect page's token submissions and
the admin API's budget."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class SlidingWindow:
    """At most ``limit`` requests per ``window`` seconds for each key (a session, an
    address)."""

    limit: int
    window: float = 60.0
    seen: dict[str, deque[float]] = field(default_factory=dict)

    def allow(self, key: str, now: float) -> bool:
        """Count one request of ``key`` at ``now``; False (and not counted) when the
        window is full."""
        times = self.seen.setdefault(key, deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) >= self.limit:
            return False
        times.append(now)
        if len(self.seen) > 10_000:  # forget idle keys: a flood must not grow memory
            self.seen = {k: v for k, v in self.seen.items() if v}
        return True

    def retry_after(self, key: str, now: float) -> float:
        """Seconds until ``key`` may send again."""
        times = self.seen.get(key)
        return max(0.0, times[0] + self.window - now) if times else 0.0
