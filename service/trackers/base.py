"""What the worker asks of an issue tracker: its comments, reactions and status labels."""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from service.core.events import IssueAddress


class IssueTracker(Protocol):
    """The bridge's side of an issue; one implementation per tracker. Every method
    raises ``RemoteError`` subclasses (rate limits as ``RateLimited``), and may raise
    ``PacingDeferred`` before writing when the bridge's own pacing has no room."""

    async def upsert_comment(
        self, event: IssueAddress, *, marker: str, body: str, comment_id: str | None
    ) -> str:
        """Make the issue carry exactly one bridge comment containing ``marker``, with ``body``.

        ``body`` already contains ``marker``. If ``comment_id`` is given, still exists
        and may be edited by the bridge, that comment is edited. Otherwise the issue's
        comments are searched for ``marker`` among those the bridge's own account
        wrote and a match is edited; only if none matches is a comment created.
        Returns the comment's id (as text). Safe to repeat after any failure.
        """
        ...

    async def react(self, event: IssueAddress, comment_id: str, content: str = "eyes") -> None:
        """React to a comment (``eyes``: 👀, the command was taken); idempotent."""
        ...

    async def set_status_label(self, event: IssueAddress, label: str, *,
                               replaces: Collection[str]) -> None:
        """Make ``label`` the issue's one status label: add it, and remove any other
        label of ``replaces`` (GitHub only; elsewhere nothing happens)."""
        ...
