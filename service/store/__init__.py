"""Durable state of the bridge: ``open_store(url)`` picks the backend.

``sqlite:///path/to/file.db`` opens :class:`service.store.sqlite.SQLiteStore`
(a relative path is relative to the working directory; ``sqlite:////abs/path``
and ``sqlite:///:memory:`` work too; the parent directory is created).
``postgresql://`` (or ``postgres://``) URLs select the PostgreSQL backend.

Opening does not migrate: callers run ``await store.migrate()`` (``serve`` does
so unless ``--no-migrate``). Migrations are the ``NNNN_name.sql`` files under
``migrations/<dialect>/``, applied in version order by the backend.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

from service.core.events import issue_name
from service.core.prompt import issue_reference
from service.errors import StoreError
from service.store.base import (
    Account,
    Delegation,
    DelegationState,
    DeliveryRecord,
    Followup,
    Identity,
    Job,
    JobStatus,
    NewDelivery,
    Store,
    TokenKind,
    TokenStatus,
)

__all__ = [
    "Migration",
    "Store",
    "account_from_row",
    "delegation_from_row",
    "delivery_record_from_row",
    "first_wins",
    "followup_from_row",
    "identity_from_row",
    "job_from_row",
    "load_migrations",
    "open_store",
    "sqlite_path",
]

_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    """One schema migration file: ``NNNN_name.sql`` under ``migrations/<dialect>/``."""

    version: int
    name: str
    sql: str


def load_migrations(dialect: str) -> list[Migration]:
    """The migrations of ``dialect`` (``"sqlite"``, ``"postgres"``), in version order.

    Raises ``StoreError`` on a file named otherwise or on two files with one version,
    so that a packaging mistake fails at start instead of half-migrating.
    """
    folder = resources.files("service.store").joinpath("migrations", dialect)
    found: dict[int, Migration] = {}
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _MIGRATION_NAME.match(entry.name)
        if match is None:
            raise StoreError(f"migration file {entry.name!r} is not named NNNN_name.sql")
        version = int(match.group(1))
        if version in found:
            raise StoreError(f"two {dialect} migrations have version {version}")
        found[version] = Migration(version, match.group(2), entry.read_text(encoding="utf-8"))
    return [found[version] for version in sorted(found)]


def sqlite_path(url: str) -> str:
    """The file path of a ``sqlite:///`` URL (``:memory:`` is kept as is).

    ``sqlite:///data/x.db`` is the relative path ``data/x.db``;
    ``sqlite:////var/lib/x.db`` the absolute path ``/var/lib/x.db``.
    """
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise StoreError("a SQLite storage URL looks like sqlite:///path/to/file.db")
    path = url[len(prefix) :]
    if "?" in path or "#" in path:
        raise StoreError("SQLite storage URLs take no query string or fragment")
    return path


async def open_store(url: str) -> Store:
    """Open the store named by ``url``; the caller must ``await store.close()``.

    Errors never repeat the URL, which may carry a database password.
    """
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "sqlite":
        from service.store.sqlite import SQLiteStore

        return await SQLiteStore.open(sqlite_path(url))
    if scheme in ("postgresql", "postgres"):
        from service.store.postgres import PostgresStore

        return await PostgresStore.open(url)
    shown = repr(scheme) if re.fullmatch(r"[a-z][a-z0-9+.-]{0,19}", scheme) else "(unreadable)"
    raise StoreError(
        f"unsupported storage URL scheme {shown}: use sqlite:///path or postgresql://..."
    )


# -- shared by the backends: rows (tuples or asyncpg Records) in the column order of
# -- their queries, mapped to the contract's dataclasses.

_Row = Sequence[Any]


def first_wins(deliveries: Sequence[NewDelivery], inserted: set[tuple[str, str]]) -> list[bool]:
    """Per input, True for the first occurrence of each inserted (tracker, delivery_id)."""
    result: list[bool] = []
    for d in deliveries:
        key = (d.tracker, d.delivery_id)
        result.append(key in inserted)
        inserted.discard(key)
    return result


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def job_from_row(row: _Row) -> Job:
    return Job(
        id=int(row[0]),
        tracker=str(row[1]),
        delivery_id=str(row[2]),
        issue_key=str(row[3]),
        event_json=str(row[4]),
        attempts=int(row[5]),
        lease_owner=str(row[6]),
        lease_until=float(row[7]),
        kind=str(row[9]) if len(row) > 9 and row[9] is not None else "trigger",
    )


def delivery_record_from_row(row: _Row) -> DeliveryRecord:
    return DeliveryRecord(
        tracker=str(row[0]),
        delivery_id=str(row[1]),
        issue_key=str(row[2]),
        received_at=float(row[3]),
        job_status=cast("JobStatus | None", row[4]),
        attempts=int(row[5]),
        last_error=row[6],
        delegation_state=cast("DelegationState | None", row[7]),
        task_url=row[8],
        kind=str(row[9]),
        outcome=row[10],
        issue=issue_reference(issue_name(str(row[11]))),
    )


def delegation_from_row(row: _Row) -> Delegation:
    return Delegation(
        id=int(row[0]),
        issue_key=str(row[1]),
        generation=int(row[2]),
        tracker=str(row[3]),
        delivery_id=str(row[4]),
        state=cast(DelegationState, row[5]),
        account_id=row[6],
        task_kind=row[7],
        task_id=row[8],
        task_name=row[9],
        task_url=row[10],
        comment_id=row[11],
        attempts=int(row[12]),
        last_error=row[13],
        created_at=float(row[14]),
        updated_at=float(row[15]),
        comment_sha256=row[16],
        trigger_json=row[17],
        acting_id=row[18],
        progress_json=row[19],
        follow_until=_opt_float(row[20]),
        checked=row[21],
    )


def account_from_row(row: _Row) -> Account:
    return Account(
        id=int(row[0]),
        coder_user_id=str(row[1]),
        coder_username=str(row[2]),
        key_id=str(row[3]),
        ciphertext=bytes(row[4]),
        token_status=cast(TokenStatus, row[5]),
        last_used_at=_opt_float(row[6]),
        allow_others=bool(row[7]),
        token_kind=cast(TokenKind, row[8]),
        token_expires_at=_opt_float(row[9]),
    )


def followup_from_row(row: _Row) -> Followup:
    return Followup(id=int(row[0]), delegation_id=int(row[1]), source=str(row[2]),
                    text=str(row[3]), created_at=float(row[4]))


def identity_from_row(row: _Row) -> Identity:
    return Identity(provider=row[0], external_id=str(row[1]), login=str(row[2]))
