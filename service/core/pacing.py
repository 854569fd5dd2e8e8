"""Sliding-window rate limits, as arithmetic (pure).

A window ``(limit, seconds)`` allows at most ``limit`` events in any span of
``seconds``. ``delay_needed`` says how long one more event must wait; GitHub's
content-creation limits (80 a minute, 500 an hour) are the bridge's use, shared by
the in-process limiter and the budget the store keeps for every replica.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

Window = tuple[int, float]
"""``(limit, seconds)``: at most ``limit`` events in any ``seconds``-long span."""


def delay_needed(timestamps: Sequence[float], windows: Sequence[Window], now: float) -> float:
    """Seconds to wait from ``now`` until one more event fits every window.

    ``timestamps`` are the times of earlier events, ascending. A window ``(limit,
    span)`` counts the events in ``(now - span, now]``; when that is already ``limit``
    or more, the new event must wait until enough of the oldest ones are ``span``
    seconds old. The result is the largest wait over all windows, ``0.0`` when the
    event may happen now.
    """
    wait = 0.0
    for limit, span in windows:
        start = bisect.bisect_right(timestamps, now - span)
        in_window = len(timestamps) - start
        if in_window >= limit:
            oldest_to_expire = timestamps[start + in_window - limit]
            wait = max(wait, oldest_to_expire + span - now)
    return wait
