"""The ingest writer's wire format and its serving loop (``service.store.writer_protocol``,
``service.store.writer_process.serve``), on a socket pair in this process."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import pytest

from service.errors import StoreError
from service.store.base import NewDelivery
from service.store.writer_process import commit, serve
from service.store.writer_protocol import (
    MAX_FRAME_BYTES,
    Anomaly,
    Batch,
    Failed,
    FrameBuffer,
    FrameError,
    Ready,
    Reply,
    Stored,
    decode_batch,
    decode_reply,
    encode,
)


def delivery(number: int) -> NewDelivery:
    return NewDelivery(tracker="github", delivery_id=f"d-{number}",
                       issue_key=f"github:1:{number}", event_json=f'{{"n": {number}}}',
                       received_at=1_700_000_000.5)


class RecordingWriter:
    """Records each ``accept`` (delivery ids); ``fail`` says per call what to raise."""

    def __init__(self, fail: Callable[[int], Exception | None] = lambda _: None) -> None:
        self.calls: list[list[str]] = []
        self.fail = fail
        self.entered = threading.Event()
        self._seen: set[str] = set()

    def accept(self, deliveries: Sequence[NewDelivery]) -> list[bool]:
        self.entered.set()
        error = self.fail(len(self.calls))
        self.calls.append([d.delivery_id for d in deliveries])
        if error is not None:
            raise error
        answers = []
        for d in deliveries:
            answers.append(d.delivery_id not in self._seen)
            self._seen.add(d.delivery_id)
        return answers

    def close(self) -> None:
        pass


def test_frames_round_trip_whatever_the_chunking() -> None:
    batch = Batch([delivery(1), delivery(2)])
    replies: list[Reply] = [Ready(42), Stored([True, False], [Anomaly("odd", {"found": 1})]),
                            Failed("SQLite: disk I/O error")]
    stream = encode(batch) + b"".join(encode(reply) for reply in replies)
    for size in (1, 3, 7, len(stream)):
        frames = FrameBuffer()
        payloads = []
        for start in range(0, len(stream), size):
            frames.feed(stream[start:start + size])
            while (payload := frames.next_payload()) is not None:
                payloads.append(payload)
        assert frames.empty
        assert decode_batch(payloads[0]) == batch
        assert [decode_reply(p) for p in payloads[1:]] == replies


def test_a_partial_frame_waits_for_the_rest() -> None:
    frame = encode(Ready(1))
    frames = FrameBuffer()
    frames.feed(frame[:-1])
    assert frames.next_payload() is None and not frames.empty
    frames.feed(frame[-1:])
    assert decode_reply(frames.next_payload() or b"") == Ready(1)


def test_a_frame_over_the_limit_or_of_the_wrong_kind_is_refused() -> None:
    frames = FrameBuffer()
    frames.feed((MAX_FRAME_BYTES + 1).to_bytes(4, "big"))
    with pytest.raises(FrameError, match="over the limit"):
        frames.next_payload()
    with pytest.raises(FrameError, match="not a reply"):
        decode_reply(encode(Batch([delivery(1)]))[4:])
    with pytest.raises(FrameError, match="not a batch"):
        decode_batch(encode(Ready(1))[4:])


def test_commit_splits_the_answers_per_batch_and_sends_anomalies_once() -> None:
    writer = RecordingWriter()
    anomalies = [Anomaly("delivery_batch_rowids_not_consecutive", {"inserted": 2, "found": 1})]
    replies = commit(writer, [Batch([delivery(1), delivery(2)]), Batch([delivery(1)])], anomalies)
    assert replies == [Stored([True, True], [Anomaly("delivery_batch_rowids_not_consecutive",
                                                      {"inserted": 2, "found": 1})]),
                       Stored([False])]
    assert writer.calls == [["d-1", "d-2", "d-1"]]  # one transaction
    assert anomalies == []


@pytest.mark.parametrize("error", [StoreError("SQLite: database or disk is full"),
                                   ValueError("a bug in the writer")])
def test_commit_fails_every_batch_of_a_failed_transaction_without_raising(
    error: Exception,
) -> None:
    replies = commit(RecordingWriter(fail=lambda _: error), [Batch([delivery(1)]),
                                                            Batch([delivery(2)])], [])
    assert all(isinstance(reply, Failed) and str(error) in reply.error for reply in replies)
    assert len(replies) == 2


@dataclass
class Served:
    """``serve`` in a thread on one end of a socket pair; the test holds ``sock``.

    The writer commits only once ``go`` is set, so that the test can queue batches.
    """

    sock: socket.socket
    writer: RecordingWriter
    go: threading.Event
    thread: threading.Thread


@pytest.fixture
def served() -> Iterator[Served]:
    ours, theirs = socket.socketpair()
    go = threading.Event()

    def wait_for_go(_: int) -> None:
        go.wait(10)

    writer = RecordingWriter(fail=wait_for_go)
    thread = threading.Thread(target=serve, args=(theirs, writer, []), kwargs={"max_batch": 3},
                              daemon=True)
    thread.start()
    ours.settimeout(10)
    yield Served(ours, writer, go, thread)
    go.set()
    ours.close()
    thread.join(10)
    theirs.close()


def read_replies(sock: socket.socket, count: int) -> list[Reply]:
    frames, replies = FrameBuffer(), []
    while len(replies) < count:
        data = sock.recv(65536)
        assert data, "the writer closed the socket"
        frames.feed(data)
        while (payload := frames.next_payload()) is not None:
            replies.append(decode_reply(payload))
    return replies


def test_serve_says_ready_then_commits_what_has_arrived_together_up_to_max_batch(
    served: Served,
) -> None:
    assert read_replies(served.sock, 1) == [Ready(os.getpid())]
    served.sock.sendall(encode(Batch([delivery(1)])))
    assert served.writer.entered.wait(10)  # taken alone; its commit waits for `go`
    # Meanwhile four batches arrive: 1 + 2 deliveries fill max_batch (3), the next 2
    # make another commit, and a batch larger than max_batch is committed alone.
    served.sock.sendall(encode(Batch([delivery(2)])) + encode(Batch([delivery(3), delivery(1)]))
                        + encode(Batch([delivery(4), delivery(5)]))
                        + encode(Batch([delivery(n) for n in range(6, 10)])))
    served.go.set()
    assert read_replies(served.sock, 5) == [
        Stored([True]), Stored([True]), Stored([True, False]), Stored([True, True]),
        Stored([True] * 4)]
    assert served.writer.calls == [["d-1"], ["d-2", "d-3", "d-1"], ["d-4", "d-5"],
                                   ["d-6", "d-7", "d-8", "d-9"]]


def test_serve_answers_every_complete_batch_then_returns_when_the_bridge_closes(
    served: Served,
) -> None:
    read_replies(served.sock, 1)
    served.go.set()
    half = encode(Batch([delivery(9)]))
    served.sock.sendall(encode(Batch([delivery(1)])) + encode(Batch([delivery(2)])) + half[:5])
    served.sock.shutdown(socket.SHUT_WR)  # the bridge is done (or died mid-frame)
    assert read_replies(served.sock, 2) == [Stored([True]), Stored([True])]
    served.thread.join(10)
    assert not served.thread.is_alive()
    assert [d for call in served.writer.calls for d in call] == ["d-1", "d-2"]  # not d-9
