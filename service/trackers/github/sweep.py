"""Labelled GitHub issues whose webhook never arrived (interface §4.6; reference
github.md §17).

``GitHubSweep.labelled_issues`` searches open issues (``is:issue is:open``) carrying
the trigger label, updated since a time, in the repositories the bridge acts on:
``github.repositories`` (``repo:owner/name`` for an exact name, ``user:owner`` for a
glob, the results checked against the globs), or, with a GitHub App and no list,
every repository of its installations. Each is returned as the ``IssueEvent`` its
``labeled`` delivery would have made, the labeler taken from the issue's events (so
consent holds as for a live delivery; unknown, it is nobody the author could be).
Search allows 30 requests a minute: calls are spaced ``SEARCH_SPACING`` apart, and a
query names at most ``TERMS_PER_QUERY`` repositories (its length is limited).
``GitHubSweep.redeliver_failed`` has a GitHub App's failed deliveries sent again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from service.config import GitHubConfig
from service.core.events import IssueEvent, Person
from service.logging import get_logger
from service.trackers.github.api import GitHubClient
from service.trackers.github.redelivery import redeliver_failed

log = get_logger("service.trackers.github")

SEARCH_SPACING = 2.1
TERMS_PER_QUERY = 5
#: The labeler when the issue's events do not say (consent is then asked for).
UNKNOWN_LABELER = Person("unknown", "")


class GitHubSweep:
    """Finds labelled open GitHub issues for the reconciliation sweep."""

    def __init__(self, client: GitHubClient, config: GitHubConfig, *,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.config = config
        self._sleep = sleep
        self._clock = clock
        self._last_search = -SEARCH_SPACING

    async def redeliver_failed(self, *, since: float) -> int:
        """With a GitHub App, ask GitHub to send again the App webhook's failed deliveries
        since ``since`` that the search cannot find (``redelivery``); how many. Without an
        App there is no delivery history to read: 0."""
        app = self.client.app
        return 0 if app is None else await redeliver_failed(app, since=since)

    async def labelled_issues(self, *, since: float) -> list[IssueEvent]:
        """Every open issue with the trigger label updated at or after ``since`` (UNIX
        seconds), as its ``labeled`` event (``delivery_id`` left empty)."""
        found: list[IssueEvent] = []
        for installation, terms in await self._scopes():
            for start in range(0, len(terms), TERMS_PER_QUERY):
                query = self._query(terms[start:start + TERMS_PER_QUERY], since)
                for item in await self._search(query, installation):
                    event = await self._event(item, installation)
                    if event is not None:
                        found.append(event)
        unique = {event.issue_key: event for event in found}
        return list(unique.values())

    async def _scopes(self) -> list[tuple[int | None, list[str]]]:
        """(installation, search terms) to query: the configured list, or every
        repository of the App's installations."""
        app = self.client.app
        patterns = self.config.repositories
        scopes: list[tuple[int | None, list[str]]] = []
        if app is not None and not patterns:
            for installation in await app.installations():
                repos = await self.client.installation_repositories(installation)
                scopes.append((installation, [f"repo:{name}" for name in repos]))
            return scopes
        if not patterns:
            log.warning("reconcile_github_skipped",
                        note="github.repositories is empty and no GitHub App is configured: "
                             "there is no list of repositories to search")
            return []
        terms = sorted({f"repo:{p}" if "*" not in p and "?" not in p and "[" not in p
                        else f"user:{p.split('/')[0]}" for p in patterns})
        if app is None:
            return [(None, terms)]
        for term in terms:  # an App searches through the installation that covers it
            name = term.split(":", 1)[1]
            repository = name if "/" in name else None
            if repository is None:
                log.warning("reconcile_github_glob_needs_list", owner=name,
                            note="with a GitHub App, list exact repositories or leave "
                                 "github.repositories empty to search every installation")
                continue
            scopes.append((await app.installation_for(repository), [term]))
        return scopes

    def _query(self, terms: Sequence[str], since: float) -> str:
        stamp = datetime.fromtimestamp(since, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        label = self.config.trigger_label.replace('"', "")
        return f'{" ".join(terms)} is:issue is:open label:"{label}" updated:>={stamp}'

    async def _search(self, query: str, installation: int | None) -> list[dict[str, Any]]:
        wait = self._last_search + SEARCH_SPACING - self._clock()
        if wait > 0:
            await self._sleep(wait)
        self._last_search = self._clock()
        return await self.client.search_issues(query, installation)

    async def _event(self, item: dict[str, Any], installation: int | None) -> IssueEvent | None:
        """The ``labeled`` event of a search result; None for pull requests and for
        repositories the bridge does not act on."""
        if "pull_request" in item or not isinstance(item.get("number"), int):
            return None
        repository_url = str(item.get("repository_url", ""))
        full_name = "/".join(repository_url.rstrip("/").split("/")[-2:])
        if "/" not in full_name or not self.config.enabled(full_name):
            return None
        number = int(item["number"])
        repository_id = await self.client.repository_id(full_name, installation)
        labeler = await self.client.labeler(full_name, number, self.config.trigger_label,
                                            installation)
        user = item.get("user") if isinstance(item.get("user"), dict) else {}
        author = (Person(str(user["id"]), str(user.get("login") or ""))
                  if isinstance(user, dict) and isinstance(user.get("id"), int) else None)
        extra = {"action": "labeled", "source": "reconcile"}
        for key in ("created_at", "updated_at"):
            if isinstance(item.get(key), str):
                extra[key] = item[key]
        return IssueEvent(
            tracker="github", delivery_id="", issue_key=f"github:{repository_id}:{number}",
            issue_id=str(item.get("id", "")), number=str(number),
            title=str(item.get("title") or ""), body=str(item.get("body") or ""),
            url=str(item.get("html_url") or ""), scope=full_name, author=author,
            labeler=labeler or UNKNOWN_LABELER, installation_id=installation, extra=extra)
