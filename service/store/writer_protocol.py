"""What the bridge and its ingest writer process say to each other (sans-I/O).

One stream socket joins them. Each message is a frame: its length as 4 bytes
(big-endian), then a MessagePack-encoded message.

- bridge → writer: ``Batch`` frames, one per event-loop iteration that stored anything;
- writer → bridge: ``Ready`` once the database is open, then exactly one ``Stored``
  or ``Failed`` per ``Batch``, in the order the batches were sent. The writer may
  commit several batches in one transaction, but never splits one.

``Failed`` before ``Ready`` means the writer could not open the database.
"""

from __future__ import annotations

import msgspec

from service.store.base import NewDelivery

__all__ = [
    "MAX_FRAME_BYTES",
    "Anomaly",
    "Batch",
    "Failed",
    "FrameBuffer",
    "FrameError",
    "Ready",
    "Reply",
    "Stored",
    "decode_batch",
    "decode_reply",
    "encode",
]

_LENGTH_BYTES = 4
#: The largest frame either side accepts: a batch of 512 deliveries of 64 KiB each
#: is half of it. Anything larger means the stream is out of step.
MAX_FRAME_BYTES = 64 * 1024 * 1024


class Batch(msgspec.Struct, tag=True, array_like=True):
    """Deliveries to store in one transaction (with others, perhaps), in order."""

    deliveries: list[NewDelivery]


class Ready(msgspec.Struct, tag=True, array_like=True):
    """The writer has opened the database and waits for batches."""

    pid: int


class Anomaly(msgspec.Struct, array_like=True):
    """Something the writer saw that should never happen (the bridge logs it)."""

    event: str
    figures: dict[str, int]


class Stored(msgspec.Struct, tag=True, array_like=True):
    """A batch is committed: per delivery, True if new, False for a duplicate."""

    new: list[bool]
    anomalies: list[Anomaly] = []


class Failed(msgspec.Struct, tag=True, array_like=True):
    """Nothing of the batch is stored (or, before ``Ready``, the writer cannot start)."""

    error: str


Reply = Ready | Stored | Failed

_ENCODER = msgspec.msgpack.Encoder()
_BATCH_DECODER = msgspec.msgpack.Decoder(Batch)
_REPLY_DECODER = msgspec.msgpack.Decoder(Reply)


class FrameError(Exception):
    """The stream does not hold well-formed frames: the two sides are out of step."""


def encode(message: Batch | Reply) -> bytes:
    """One frame holding ``message``."""
    payload = _ENCODER.encode(message)
    return len(payload).to_bytes(_LENGTH_BYTES, "big") + payload


def decode_batch(payload: bytes) -> Batch:
    """A frame's payload as a ``Batch``; raises ``FrameError``."""
    try:
        return _BATCH_DECODER.decode(payload)
    except msgspec.DecodeError as exc:
        raise FrameError(f"not a batch: {exc}") from None


def decode_reply(payload: bytes) -> Reply:
    """A frame's payload as a ``Reply``; raises ``FrameError``."""
    try:
        return _REPLY_DECODER.decode(payload)
    except msgspec.DecodeError as exc:
        raise FrameError(f"not a reply: {exc}") from None


class FrameBuffer:
    """Bytes received so far; hands out the payloads of the complete frames."""

    def __init__(self) -> None:
        self._data = bytearray()

    def feed(self, data: bytes) -> None:
        self._data += data

    def next_payload(self) -> bytes | None:
        """The next complete frame's payload, or None until more bytes arrive.

        Raises ``FrameError`` for a frame longer than ``MAX_FRAME_BYTES``.
        """
        data = self._data
        if len(data) < _LENGTH_BYTES:
            return None
        length = int.from_bytes(data[:_LENGTH_BYTES], "big")
        if length > MAX_FRAME_BYTES:
            raise FrameError(f"a frame of {length} bytes is over the limit")
        end = _LENGTH_BYTES + length
        if len(data) < end:
            return None
        payload = bytes(data[_LENGTH_BYTES:end])
        del data[:end]
        return payload

    @property
    def empty(self) -> bool:
        """True when no byte of a frame is waiting (a partial frame is not empty)."""
        return not self._data
