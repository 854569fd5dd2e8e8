"""The ingest writer process: commits batches of deliveries for the bridge.

``python -m service.store.writer_process --fd N DATABASE`` is started by
``service.web.ingest.ProcessCommitter``, never by hand. It opens ``DATABASE``
(created and migrated by the bridge) with a ``SQLiteBatchWriter`` and speaks
``service.store.writer_protocol`` on the stream socket it inherited as fd ``N``:
it takes every batch that has arrived (up to ``--max-batch`` deliveries), commits
them in one transaction, answers each, and repeats.

Why a process: SQLite does its work with the interpreter lock released, but a
thread must take the lock back after every step, and under load the bridge's
event loop holds it almost all the time. Each hand-back waited for the loop, so
the commits were slow and every request waited for them (bench/ingest.py). Here
the writer has an interpreter of its own and the bridge only writes and reads a
socket.

Lifecycle: it ignores SIGINT and SIGTERM (the bridge drains it on shutdown) and
exits when the bridge closes its end of the socket, after answering every
complete batch. If the bridge dies, the socket closes and the writer exits too.
It logs nothing: failures go back to the bridge in ``Failed`` replies, and
anomalies in ``Stored`` replies. It imports as little as it can, because it is a
second interpreter in the bridge's memory budget.
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import socket
import sys
from collections.abc import Mapping, Sequence

from service.errors import StoreError
from service.store.base import BatchWriter
from service.store.sqlite_writer import SQLiteBatchWriter
from service.store.writer_protocol import (
    Anomaly,
    Batch,
    Failed,
    FrameBuffer,
    Ready,
    Reply,
    Stored,
    decode_batch,
    encode,
)

_RECEIVE_BYTES = 1 << 20


def serve(sock: socket.socket, writer: BatchWriter, anomalies: list[Anomaly], *,
          max_batch: int) -> None:
    """Answer ``Batch`` frames on ``sock`` until the other side closes it.

    ``anomalies`` is where ``writer`` reports (see ``SQLiteBatchWriter``); they go
    out with the next ``Stored`` reply. Raises ``FrameError`` if the stream is out
    of step, and ``OSError`` if the socket fails.
    """
    sock.sendall(encode(Ready(os.getpid())))
    frames = FrameBuffer()
    waiting: collections.deque[Batch] = collections.deque()
    closed = False
    while not closed or waiting:
        if not waiting:
            data = sock.recv(_RECEIVE_BYTES)  # blocks until the bridge sends something
            if not data:
                return  # closed, and nothing complete is left (a partial frame's sender died)
            frames.feed(data)
        closed = _receive_without_waiting(sock, frames) or closed
        waiting.extend(_complete_batches(frames))
        batches: list[Batch] = []
        count = 0
        while waiting and (not batches or count + len(waiting[0].deliveries) <= max_batch):
            batch = waiting.popleft()
            batches.append(batch)
            count += len(batch.deliveries)
        if batches:
            sock.sendall(b"".join(encode(reply) for reply in commit(writer, batches, anomalies)))


def _receive_without_waiting(sock: socket.socket, frames: FrameBuffer) -> bool:
    """Feed ``frames`` with whatever has arrived; True if the other side closed."""
    while True:
        try:
            data = sock.recv(_RECEIVE_BYTES, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        if not data:
            return True
        frames.feed(data)


def _complete_batches(frames: FrameBuffer) -> list[Batch]:
    batches = []
    while (payload := frames.next_payload()) is not None:
        batches.append(decode_batch(payload))
    return batches


def commit(writer: BatchWriter, batches: Sequence[Batch],
           anomalies: list[Anomaly]) -> list[Reply]:
    """Store ``batches`` in one transaction; one reply per batch, in order.

    A failure fails every batch (nothing was stored) and is never raised: the
    writer lives on for the next batches, as a bug in one batch must not stop ingest.
    """
    deliveries = [d for batch in batches for d in batch.deliveries]
    try:
        new = writer.accept(deliveries)
    except StoreError as exc:
        return [Failed(str(exc))] * len(batches)
    except Exception as exc:
        return [Failed(f"{type(exc).__name__}: {exc}")] * len(batches)
    replies: list[Reply] = []
    start = 0
    for batch in batches:
        end = start + len(batch.deliveries)
        replies.append(Stored(new[start:end], anomalies=[] if replies else anomalies[:]))
        start = end
    anomalies.clear()
    return replies


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m service.store.writer_process",
                                     description="The bridge's ingest writer (started by it).")
    parser.add_argument("--fd", type=int, required=True, help="the inherited stream socket")
    parser.add_argument("--max-batch", type=int, default=512,
                        help="deliveries per transaction at most (default 512)")
    parser.add_argument("database", help="the SQLite file, already migrated")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the writer; the exit status is 0 when the bridge closed the socket."""
    args = _parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sock = socket.socket(fileno=args.fd)
    anomalies: list[Anomaly] = []

    def report(event: str, figures: Mapping[str, int]) -> None:
        anomalies.append(Anomaly(event, dict(figures)))

    try:
        writer = SQLiteBatchWriter(args.database, report=report)
    except StoreError as exc:
        sock.sendall(encode(Failed(str(exc))))
        return 1
    try:
        serve(sock, writer, anomalies, max_batch=args.max_batch)
    except (BrokenPipeError, ConnectionResetError):
        return 0  # the bridge is gone; nobody waits for an answer
    finally:
        writer.close()
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
