"""The SQL of storing deliveries in SQLite, shared by ``SQLiteStore.accept`` and the
ingest writer process (``service.store.writer_process``).

It imports only the standard library and ``service.store.base``, so that the writer
process, which runs nothing else of the bridge, stays small.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from service.store.base import NewDelivery

__all__ = [
    "ACCEPT_CHUNK",
    "BUSY_TIMEOUT_MS",
    "SESSION_PRAGMAS",
    "delivery_params",
    "insert_deliveries_sql",
]

#: Rows per INSERT statement in ``accept`` (5 parameters each, well under SQLite's
#: default limit of 32766 bound parameters).
ACCEPT_CHUNK = 1000
BUSY_TIMEOUT_MS = 5000
#: Per-connection settings of every connection the bridge opens (WAL is per file).
SESSION_PRAGMAS = (
    "PRAGMA synchronous = FULL",
    f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}",
    "PRAGMA foreign_keys = ON",
)

_INSERT_DELIVERIES_HEAD = (
    "INSERT INTO deliveries (tracker, delivery_id, issue_key, event_json, received_at) VALUES "
)
_INSERT_DELIVERIES_ON_CONFLICT = " ON CONFLICT (tracker, delivery_id) DO NOTHING"
_RETURNING_DELIVERY_KEYS = " RETURNING tracker, delivery_id"


@lru_cache(maxsize=64)
def insert_deliveries_sql(rows: int, *, returning: bool = True) -> str:
    """The multi-row ``INSERT ... ON CONFLICT DO NOTHING`` of ``accept`` for ``rows``
    deliveries; with ``returning``, it returns (tracker, delivery_id) of each new row."""
    values = ",".join(["(?,?,?,?,?)"] * rows)
    tail = _RETURNING_DELIVERY_KEYS if returning else ""
    return _INSERT_DELIVERIES_HEAD + values + _INSERT_DELIVERIES_ON_CONFLICT + tail


def delivery_params(deliveries: Iterable[NewDelivery]) -> list[Any]:
    """The bound parameters of ``insert_deliveries_sql`` for ``deliveries``, flat."""
    params: list[Any] = []
    for d in deliveries:
        params += (d.tracker, d.delivery_id, d.issue_key, d.event_json, float(d.received_at))
    return params
