"""Retry policy for transient failures (pure): exponential backoff with jitter.

``decide_retry`` returns ``RetryIn(seconds)`` or ``GiveUp``. The delay for
attempt *n* (1-based, the attempt that just failed) is drawn from
``[base·2^(n-1)/2, base·2^(n-1)]`` (capped at ``cap``), and is never shorter
than the remote's ``Retry-After``.
"""

from __future__ import annotations

from dataclasses import dataclass

BASE_DELAY = 2.0
MAX_DELAY = 600.0


@dataclass(frozen=True)
class RetryIn:
    """Run the job again after ``seconds``."""

    seconds: float


@dataclass(frozen=True)
class GiveUp:
    """The retry budget is spent."""


RetryDecision = RetryIn | GiveUp


def decide_retry(
    *,
    attempt: int,
    max_attempts: int,
    retry_after: float | None,
    jitter: float,
    base: float = BASE_DELAY,
    cap: float = MAX_DELAY,
) -> RetryDecision:
    """What to do after attempt ``attempt`` failed transiently.

    ``jitter`` is a number in [0, 1) supplied by the caller (``random.random()``),
    so the function stays pure and tests can pin it.
    """
    if attempt >= max_attempts:
        return GiveUp()
    backoff = min(cap, base * 2 ** (attempt - 1))
    delay = backoff * (0.5 + 0.5 * jitter)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return RetryIn(delay)
