"""What a job handler tells the loop to do with its job."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Done:
    """The job is finished; ``outcome`` names what happened, for metrics and logs."""

    outcome: str


@dataclass(frozen=True)
class RetryLater:
    """Run the job again in ``seconds``; ``error`` is remembered on the job."""

    seconds: float
    error: str


@dataclass(frozen=True)
class Failed:
    """The job ends without success (the issue says why, when it could be told)."""

    error: str
    outcome: str


@dataclass(frozen=True)
class Deferred:
    """Run the job again in ``seconds`` without counting this attempt: our own pacing
    of GitHub's content limits had no room (``PacingDeferred``). Whatever the job did
    before (a task created) is recorded; the next run continues from there."""

    seconds: float


JobResult = Done | RetryLater | Failed | Deferred


class Finish(Exception):
    """Raised inside a handler to end its job with ``result`` (after the issue was told)."""

    def __init__(self, result: JobResult) -> None:
        super().__init__(str(result))
        self.result = result
