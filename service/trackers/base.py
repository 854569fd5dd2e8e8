"""What the worker asks of an issue tracker: one comment per delegation, edited in place."""

from __future__ import annotations

from typing import Protocol

from service.core.events import IssueEvent


class IssueCommenter(Protocol):
    """Posts the bridge's comment on an issue; one implementation per tracker."""

    async def upsert_comment(
        self, event: IssueEvent, *, marker: str, body: str, comment_id: str | None
    ) -> str:
        """Make the issue carry exactly one bridge comment containing ``marker``, with ``body``.

        ``body`` already contains ``marker``. If ``comment_id`` is given and still
        exists, that comment is edited. Otherwise the issue's comments are searched
        for ``marker`` and a match is edited; only if none matches is a comment
        created. Returns the comment's id (as text). Safe to repeat after any failure.
        Raises ``RemoteError`` subclasses; rate limits as ``RateLimited``.
        """
        ...
