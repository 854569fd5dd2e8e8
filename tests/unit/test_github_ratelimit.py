"""ContentRateLimiter and delay_needed: GitHub's content-creation limits, no real waiting."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import httpx
import pytest

from service.core.events import IssueEvent
from service.errors import PacingDeferred
from service.trackers.github.api import GitHubClient, TokenAuth
from service.trackers.github.ratelimit import (
    CONTENT_CREATION_WINDOWS,
    ContentRateLimiter,
    Window,
    delay_needed,
)

START = 1_000.0
MINUTE: list[Window] = [(80, 60.0)]
HOUR: list[Window] = [(500, 3600.0)]


class FakeTime:
    """A clock that only moves when ``sleep`` is awaited (which yields to the loop once)."""

    def __init__(self, start: float = START) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def limiter_with(time: FakeTime, windows: list[Window] | None = None) -> ContentRateLimiter:
    return ContentRateLimiter(
        windows if windows is not None else CONTENT_CREATION_WINDOWS,
        clock=time.clock,
        sleep=time.sleep,
    )


# ---------------------------------------------------------------------------
# delay_needed: the pure window arithmetic


@pytest.mark.parametrize(
    ("timestamps", "windows", "now", "expected"),
    [
        pytest.param([], CONTENT_CREATION_WINDOWS, 0.0, 0.0, id="nothing sent yet"),
        pytest.param([0.0] * 79, MINUTE, 0.0, 0.0, id="79 in the minute: the 80th goes"),
        pytest.param([0.0] * 80, MINUTE, 0.0, 60.0, id="80 at once: the 81st waits 60 s"),
        pytest.param([0.0] * 80, MINUTE, 59.5, 0.5, id="waits until the first is 60 s old"),
        pytest.param([0.0] * 80, MINUTE, 60.0, 0.0, id="exactly 60 s old no longer counts"),
        pytest.param(
            [i * 0.5 for i in range(80)], MINUTE, 40.0, 20.0, id="spread burst: oldest expires"
        ),
        pytest.param([0.0] * 40 + [30.0] * 40, MINUTE, 61.0, 0.0, id="the first 40 aged out"),
        pytest.param([0.0] * 81, MINUTE, 0.0, 60.0, id="over the limit already: still the oldest"),
        pytest.param(
            [0.0] + [10.0] * 80, MINUTE, 20.0, 50.0, id="over the limit: second-oldest matters"
        ),
        pytest.param(
            [i * 7.2 for i in range(500)], HOUR, 3592.8, 7.2, id="hour full: first must age out"
        ),
        pytest.param([i * 7.2 for i in range(499)], HOUR, 3592.8, 0.0, id="499 in the hour: goes"),
        pytest.param(
            [i * 7.2 for i in range(500)],
            CONTENT_CREATION_WINDOWS,
            3592.8,
            7.2,
            id="mixed: minute has room, hour is full",
        ),
        pytest.param(
            [float(i // 80 * 60) for i in range(420)] + [400.0] * 80,
            CONTENT_CREATION_WINDOWS,
            400.0,
            3200.0,
            id="mixed: both full, the longer wait wins",
        ),
        pytest.param(
            [100.0] * 80, [(80, 60.0), (100, 3600.0)], 130.0, 30.0, id="mixed: the minute decides"
        ),
        pytest.param([10.0], [(1, 1.0)], 10.25, 0.75, id="a one-per-second window"),
    ],
)
def test_delay_needed(
    timestamps: list[float], windows: list[Window], now: float, expected: float
) -> None:
    assert delay_needed(timestamps, windows, now) == pytest.approx(expected)


@pytest.mark.parametrize("windows", [[(0, 60.0)], [(80, 0.0)], [(80, -1.0)]])
def test_invalid_windows_are_refused(windows: list[Window]) -> None:
    with pytest.raises(ValueError):
        ContentRateLimiter(windows)


async def test_no_windows_means_no_wait() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    limiter = ContentRateLimiter([], clock=lambda: 0.0, sleep=sleep)
    for _ in range(1000):
        await limiter.acquire()
    assert slept == []


# ---------------------------------------------------------------------------
# The limiter


async def test_80_requests_pass_at_once_and_the_81st_waits_a_minute() -> None:
    time = FakeTime()
    limiter = limiter_with(time)

    for _ in range(80):
        await limiter.acquire()
    assert time.sleeps == []

    await limiter.acquire()
    assert time.sleeps == [60.0]
    assert time.now == START + 60


async def test_an_idle_limiter_admits_at_once() -> None:
    time = FakeTime()
    limiter = limiter_with(time)
    await limiter.acquire()
    time.now += 5
    await limiter.acquire()
    assert time.sleeps == []


async def test_the_hour_window_caps_at_500() -> None:
    time = FakeTime()
    limiter = limiter_with(time)

    for _ in range(500):
        await limiter.acquire()
    # 80 per minute: batches at 0, 60, …, 360 s; the hour is not full before the 500th.
    assert time.now == START + 360
    assert len(time.sleeps) == 6

    await limiter.acquire()
    assert time.now == START + 3600  # the very first request is an hour old
    assert len(limiter.recent()) <= 500


async def test_forgets_requests_older_than_the_longest_window() -> None:
    time = FakeTime()
    limiter = limiter_with(time)
    for _ in range(10):
        await limiter.acquire()
    time.now += 3601
    await limiter.acquire()
    assert limiter.recent() == [time.now]


async def test_concurrent_acquires_are_admitted_in_order_within_the_windows() -> None:
    time = FakeTime()
    limiter = limiter_with(time, [(2, 10.0)])
    admitted: list[tuple[int, float]] = []

    async def one(index: int) -> None:
        await limiter.acquire()
        admitted.append((index, time.now))

    await asyncio.gather(*(one(i) for i in range(5)))

    assert [i for i, _ in admitted] == [0, 1, 2, 3, 4]
    assert [t - START for _, t in admitted] == [0, 0, 10, 10, 20]


async def test_permit_runs_mutating_requests_one_at_a_time() -> None:
    limiter = ContentRateLimiter()
    running = 0
    most = 0

    async def request() -> None:
        nonlocal running, most
        async with limiter.permit():
            running += 1
            most = max(most, running)
            await asyncio.sleep(0.001)
            running -= 1

    await asyncio.gather(*(request() for _ in range(10)))
    assert most == 1
    assert len(limiter.recent()) == 10


async def test_a_clock_stepping_back_keeps_the_timestamps_ordered() -> None:
    time = FakeTime()
    limiter = limiter_with(time)
    await limiter.acquire()
    time.now -= 30
    await limiter.acquire()
    assert limiter.recent() == sorted(limiter.recent())


# ---------------------------------------------------------------------------
# Wiring into GitHubClient: only mutating requests are paced

API = "https://api.github.com"
EVENT = IssueEvent(
    tracker="github",
    delivery_id="d-1",
    issue_key="github:1:1",
    issue_id="1",
    number="1",
    title="t",
    body="",
    url="https://github.com/acme/app/issues/1",
    scope="acme/app",
    author=None,
    labeler=None,
)
MARKER = "<!-- coder-bridge:delegation=x -->"


def github_transport(log: list[tuple[float, str]], time: FakeTime) -> httpx.MockTransport:
    """Answers list (empty), create and update; logs (fake time, method)."""

    def handle(request: httpx.Request) -> httpx.Response:
        log.append((time.now, request.method))
        if request.method == "GET":
            return httpx.Response(200, json=[])
        body = json.loads(request.content)["body"]
        return httpx.Response(201, json={"id": 7, "body": body})

    return httpx.MockTransport(handle)


async def test_client_paces_posts_but_not_gets() -> None:
    time = FakeTime()
    log: list[tuple[float, str]] = []
    limiter = limiter_with(time, [(1, 60.0)])
    async with httpx.AsyncClient(transport=github_transport(log, time)) as http:
        client = GitHubClient(API, TokenAuth("t"), http=http, limiter=limiter)
        for n in range(2):
            await client.upsert_comment(EVENT, marker=MARKER, body=f"{MARKER} {n}", comment_id=None)
        for _ in range(3):
            await client.find_comment("acme", "app", "1", MARKER, None)

    assert [(t - START, m) for t, m in log] == [
        (0, "GET"),
        (0, "POST"),
        (0, "GET"),
        (60, "POST"),  # the second POST waited for the one-per-minute window
        (60, "GET"),
        (60, "GET"),
        (60, "GET"),
    ]
    assert limiter.recent() == [START + 60]  # the first POST has left the only window


async def test_client_makes_its_own_limiter_by_default() -> None:
    log: list[tuple[float, str]] = []
    async with httpx.AsyncClient(transport=github_transport(log, FakeTime())) as http:
        client = GitHubClient(API, TokenAuth("t"), http=http)
        await client.upsert_comment(EVENT, marker=MARKER, body=f"{MARKER} x", comment_id=None)
    assert [m for _, m in log] == ["GET", "POST"]


async def test_permit_with_max_wait_defers_instead_of_waiting_and_counts_nothing() -> None:
    time = FakeTime()
    limiter = limiter_with(time, [(2, 60.0)])
    for _ in range(2):
        async with limiter.permit(max_wait=5.0):
            time.now += 1  # each request takes a second
    with pytest.raises(PacingDeferred) as raised:
        async with limiter.permit(max_wait=5.0):
            pytest.fail("admitted past the window")
    assert raised.value.seconds == pytest.approx(58.0)  # the first is 60 s old at START + 60
    assert time.sleeps == [] and limiter.recent() == [START, START + 1]
    time.now = START + 56  # now room comes within max_wait: it waits rather than defers
    async with limiter.permit(max_wait=5.0):
        pass
    assert time.sleeps == [pytest.approx(4.0)]


async def test_client_with_max_pacing_wait_defers_before_sending_anything() -> None:
    time = FakeTime()
    log: list[tuple[float, str]] = []
    limiter = limiter_with(time, [(1, 60.0)])
    async with httpx.AsyncClient(transport=github_transport(log, time)) as http:
        client = GitHubClient(API, TokenAuth("t"), http=http, limiter=limiter,
                              max_pacing_wait=5.0)
        await client.upsert_comment(EVENT, marker=MARKER, body=f"{MARKER} 1", comment_id=None)
        with pytest.raises(PacingDeferred):
            await client.upsert_comment(EVENT, marker=MARKER, body=f"{MARKER} 2",
                                        comment_id=None)
    assert [m for _, m in log] == ["GET", "POST"]  # not even the second search was sent
    time.now += 56  # room within max_wait: the search goes, then the POST after the wait
    async with httpx.AsyncClient(transport=github_transport(log, time)) as http:
        client = GitHubClient(API, TokenAuth("t"), http=http, limiter=limiter,
                              max_pacing_wait=5.0)
        await client.upsert_comment(EVENT, marker=MARKER, body=f"{MARKER} 2", comment_id=None)
    assert [(t - START, m) for t, m in log][2:] == [(56, "GET"), (60, "POST")]


async def test_deferrals_are_told_successive_slots_not_one_moment() -> None:
    time = FakeTime()
    limiter = limiter_with(time, [(2, 60.0)])
    for _ in range(2):
        async with limiter.permit():
            time.now += 1
    told = []
    for _ in range(4):  # four jobs meet the full window at the same moment
        with pytest.raises(PacingDeferred) as raised:
            async with limiter.permit(max_wait=5.0):
                pass
        told.append(time.now + raised.value.seconds - START)
    assert told == [60, 61, 120, 121]  # when each place in the window frees up, in turn
    time.now = START + 100  # slots 60 and 61 have passed: they push nobody back any more
    for _ in range(2):  # whoever asks when there is room gets it: the window is full again
        async with limiter.permit(max_wait=5.0):
            time.now += 1
    with pytest.raises(PacingDeferred) as raised:
        async with limiter.permit(max_wait=5.0):
            pass
    assert time.now + raised.value.seconds - START == 180  # after the promised 120 and 121
    with pytest.raises(PacingDeferred) as raised:  # asking ahead of the request: the same
        await limiter.check_room(5.0)
    assert time.now + raised.value.seconds - START == 181


class MemoryLedger:
    """The shared budget as the store keeps it, in memory."""

    def __init__(self) -> None:
        self.writes: list[float] = []

    async def take(self, now: float, windows: Sequence[Window]) -> float:
        wait = delay_needed(self.writes, windows, now)
        if wait <= 0:
            self.writes.append(now)
        return wait

    async def wait(self, now: float, windows: Sequence[Window]) -> float:
        return delay_needed(self.writes, windows, now)


async def test_deferrals_due_before_the_window_frees_push_no_later_slot_back() -> None:
    """With the shared ledger: jobs deferred by the short window and jobs that then meet
    the long one are each told the next place once the long window frees up, spaced at
    the short window's pace, however many earlier deferrals are still to come back
    (those come back before the window frees up and are deferred again)."""
    time = FakeTime(start=0.0)
    limiter = ContentRateLimiter([(2, 10.0), (4, 100.0)], clock=time.clock, sleep=time.sleep,
                                 ledger=MemoryLedger())
    for _ in range(2):
        async with limiter.permit(max_wait=1.0):
            pass

    async def ask() -> float | None:
        """Write now, or the moment the limiter says to come back."""
        try:
            async with limiter.permit(max_wait=1.0):
                return None
        except PacingDeferred as deferred:
            return time.now + deferred.seconds

    first = [await ask() for _ in range(6)]  # the short window is full: 10, 15, ... 35
    assert first == [10.0, 15.0, 20.0, 25.0, 30.0, 35.0]
    second = []
    for slot in first:  # each comes back when told
        time.now = slot
        second.append(await ask())
    # two write (the long window is then full until 100); the four others are told the
    # places after 100, not pushed behind the earlier promises still outstanding
    assert second == [None, None, 100.0, 105.0, 110.0, 115.0]
