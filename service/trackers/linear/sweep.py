"""Labelled Linear issues whose webhook never arrived (interface §4.6; reference
linear.md §11).

``LinearSweep.labelled_issues`` asks GraphQL ``issues(filter: …)`` for issues carrying
the trigger label (by name, case-insensitive, or by id), updated since a time, not in a
completed, canceled or duplicate state, in ``linear.teams`` (or every team), newest
update first, 50 a page with small nested connections (complexity). Each becomes the
``IssueEvent`` its ``update`` delivery would have made; the labeler is whoever added
the label last in the issue's ``history`` (unknown: nobody the author could be, so
consent is asked for).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from service.config import LinearConfig
from service.core.events import IssueEvent, Person
from service.trackers.linear.api import LinearClient

SWEEP = """
query Sweep($after: String, $filter: IssueFilter) {
  issues(first: 50, after: $after, orderBy: updatedAt, filter: $filter) {
    nodes {
      id identifier url title description createdAt updatedAt
      creator { id name }
      team { key }
      labels(first: 20) { nodes { id name } }
    }
    pageInfo { hasNextPage endCursor }
  }
}
""".strip()

HISTORY = """
query History($id: String!) {
  issue(id: $id) {
    history(first: 50) { nodes { createdAt addedLabelIds actor { id name } } }
  }
}
""".strip()

MAX_PAGES = 20
CLOSED_TYPES = ["completed", "canceled", "duplicate"]
UNKNOWN_LABELER = Person("unknown", "")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)


class LinearSweep:
    """Finds labelled open Linear issues for the reconciliation sweep."""

    def __init__(self, client: LinearClient, config: LinearConfig) -> None:
        self.client = client
        self.config = config

    def filter(self, since: float) -> dict[str, Any]:
        """The ``IssueFilter`` of a sweep."""
        label = self.config.trigger_label
        labels = ({"id": {"eq": label}} if _UUID.fullmatch(label)
                  else {"name": {"eqIgnoreCase": label}})
        stamp = datetime.fromtimestamp(since, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        found: dict[str, Any] = {"labels": labels, "updatedAt": {"gte": stamp},
                                 "state": {"type": {"nin": CLOSED_TYPES}}}
        if self.config.teams:
            found["team"] = {"key": {"in": list(self.config.teams)}}
        return found

    async def redeliver_failed(self, *, since: float) -> int:
        """Nothing to ask for: Linear retries a failed delivery itself (three times, up to
        six hours later)."""
        return 0

    async def labelled_issues(self, *, since: float) -> list[IssueEvent]:
        """Every open issue with the trigger label updated at or after ``since``."""
        found: list[IssueEvent] = []
        after: str | None = None
        for _ in range(MAX_PAGES):
            data = await self.client.query(SWEEP, {"after": after, "filter": self.filter(since)})
            issues = data.get("issues")
            connection: dict[str, Any] = issues if isinstance(issues, dict) else {}
            for node in connection.get("nodes") or []:
                event = await self._event(node)
                if event is not None:
                    found.append(event)
            page = connection.get("pageInfo") or {}
            if not page.get("hasNextPage") or not page.get("endCursor"):
                break
            after = str(page["endCursor"])
        return found

    async def _event(self, node: Any) -> IssueEvent | None:
        if not isinstance(node, dict) or not isinstance(node.get("id"), str):
            return None
        team = (node.get("team") or {}).get("key") or str(node.get("identifier", "")).rpartition(
            "-")[0]
        if not self.config.enabled(str(team)):
            return None
        labels = ((node.get("labels") or {}).get("nodes") or [])
        wanted = self.config.trigger_label.casefold()
        label_id = next((str(label["id"]) for label in labels if isinstance(label, dict)
                         and (label.get("id") == self.config.trigger_label
                              or str(label.get("name", "")).casefold() == wanted)), "")
        creator = node.get("creator") if isinstance(node.get("creator"), dict) else None
        author = Person(str(creator["id"]), str(creator.get("name") or "")) \
            if creator and creator.get("id") else None
        labeler = await self._labeler(node["id"], label_id)
        extra = {"action": "update", "source": "reconcile", "label_id": label_id}
        return IssueEvent(
            tracker="linear", delivery_id="", issue_key=f"linear:{node['id']}",
            issue_id=node["id"], number=str(node.get("identifier") or ""),
            title=str(node.get("title") or ""), body=str(node.get("description") or ""),
            url=str(node.get("url") or ""), scope=str(team), author=author,
            labeler=labeler or UNKNOWN_LABELER, installation_id=None, extra=extra)

    async def _labeler(self, issue_id: str, label_id: str) -> Person | None:
        """Who added the label last, from the issue's history."""
        data = await self.client.query(HISTORY, {"id": issue_id})
        nodes = (((data.get("issue") or {}).get("history") or {}).get("nodes") or [])
        adds = [n for n in nodes if isinstance(n, dict) and label_id
                and label_id in (n.get("addedLabelIds") or []) and isinstance(n.get("actor"), dict)]
        if not adds:
            return None
        last = max(adds, key=lambda n: str(n.get("createdAt", "")))
        return Person(str(last["actor"]["id"]), str(last["actor"].get("name") or ""))
