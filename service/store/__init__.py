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
from dataclasses import dataclass
from importlib import resources

from service.errors import StoreError
from service.store.base import Store

__all__ = ["Migration", "Store", "load_migrations", "open_store", "sqlite_path"]

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
        raise StoreError("PostgreSQL backend not available yet")
    shown = repr(scheme) if re.fullmatch(r"[a-z][a-z0-9+.-]{0,19}", scheme) else "(unreadable)"
    raise StoreError(
        f"unsupported storage URL scheme {shown}: use sqlite:///path or postgresql://..."
    )
