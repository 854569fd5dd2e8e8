"""Failed deliveries of a GitHub App's webhook, asked for again (reference github.md §18).

GitHub never retries a delivery that failed (the bridge was down, or answered 503), and
keeps the history for three days. With a GitHub App, each reconciliation sweep reads the
App webhook's deliveries within ``reconcile.lookback`` and asks GitHub to send again (one
request per delivery id, ``guid``, and sweep) those that never succeeded and that the
search of the sweep cannot find again by itself: new comments (the ``/agent`` commands),
unlabels and closes (``REDELIVERED``). A labelled or opened issue is left to the search,
which finds it with its labeler, so that one missed label never arrives twice.

A delivery the bridge refused on purpose (a bad signature, a malformed body) would fail
again: a ``guid`` is asked for at most ``MAX_ATTEMPTS`` times in all, counting GitHub's
first one. The redelivered delivery keeps its ``X-GitHub-Delivery`` and goes through the
webhook like any other (signature, de-duplication).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from service.logging import get_logger
from service.trackers.github.api import GitHubAppCredential

log = get_logger("service.trackers.github")

#: Deliveries per ``guid`` (GitHub's first and our redeliveries) before we stop asking.
MAX_ATTEMPTS = 3
#: Pages of 100 deliveries read per sweep, and redeliveries asked for per sweep.
MAX_PAGES = 10
MAX_PER_SWEEP = 100
#: (event, action) the bridge acts on that the sweep's search does not find again; a
#: missed ``labeled`` or ``opened`` is left to the search, and the rest (edits, the
#: bridge's own comments being edited, ...) the bridge ignores anyway.
REDELIVERED = frozenset({("issue_comment", "created"), ("issues", "unlabeled"),
                         ("issues", "closed")})


@dataclass(frozen=True)
class HookDelivery:
    """One attempt in the App webhook's history (``hook-delivery-item``)."""

    id: int
    guid: str
    event: str
    action: str
    ok: bool

    @classmethod
    def parse(cls, item: dict[str, Any]) -> HookDelivery | None:
        ident, guid = item.get("id"), item.get("guid")
        if isinstance(ident, bool) or not isinstance(ident, int) or not isinstance(guid, str):
            return None
        return cls(ident, guid, str(item.get("event") or ""), str(item.get("action") or ""),
                   item.get("status") == "OK")


def to_redeliver(history: Sequence[HookDelivery]) -> list[HookDelivery]:
    """The newest attempt of each ``guid`` to ask for again (see the module docstring);
    ``history`` newest first, as GitHub lists it."""
    attempts: dict[str, list[HookDelivery]] = {}
    for delivery in history:
        attempts.setdefault(delivery.guid, []).append(delivery)
    chosen = []
    for tries in attempts.values():
        newest = tries[0]
        if any(t.ok for t in tries) or len(tries) >= MAX_ATTEMPTS:
            continue
        if (newest.event, newest.action) in REDELIVERED:
            chosen.append(newest)
    return chosen[:MAX_PER_SWEEP]


async def redeliver_failed(app: GitHubAppCredential, *, since: float) -> int:
    """Ask GitHub to send again the App's failed deliveries since ``since``; how many."""
    history = [d for d in map(HookDelivery.parse, await app.hook_deliveries(
        since=since, max_pages=MAX_PAGES)) if d is not None]
    chosen = to_redeliver(history)
    for delivery in chosen:
        await app.redeliver(delivery.id)
        log.info("hook_delivery_redelivered", delivery=delivery.guid,
                 github_event=delivery.event, action=delivery.action)
    return len(chosen)
