"""GitHub REST calls: the bridge's comments, reactions and status labels on an issue.

All HTTP goes through an injected ``httpx.AsyncClient``; every response is
mapped to data or a typed error by ``decipher_github_response`` and nowhere
else. Authentication is a small protocol (``GitHubAuth``): ``TokenAuth`` for a
personal or fine-grained token, ``service.trackers.github.app_auth.AppAuth``
for a GitHub App (JWT → installation token, cached per installation). An App
credential also implements ``GitHubAppCredential``, which lets the client find
the installation of a repository when a delivery carries none, and check the
App itself online.

Mutating requests (POST/PATCH/PUT/DELETE) pass through a
``ContentRateLimiter`` (GitHub's content-creation limits, one at a time).

Error messages are plain words fit for an issue comment: they never contain a
token, a header value or a request body.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Collection
from typing import Any, Protocol, runtime_checkable
from urllib.parse import quote, urlsplit

import httpx

from service.core.events import IssueAddress, Person
from service.errors import (
    Conflict,
    NotFound,
    PermanentError,
    RateLimited,
    TokenRejected,
    TransientError,
)
from service.http import parse_number, parse_retry_after
from service.trackers.github.ratelimit import ContentRateLimiter

SERVICE = "github"
API_VERSION = "2022-11-28"
USER_AGENT = "coder-bridge"
MAX_COMMENT_CHARS = 65_536
PER_PAGE = 100
MAX_PAGES = 100
SECONDARY_LIMIT_WAIT = 60.0
_MESSAGE_LIMIT = 300
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
MUTATING_METHODS = frozenset({"POST", "PATCH", "PUT", "DELETE"})


class GitHubAuth(Protocol):
    """Supplies the ``Authorization`` header for GitHub API calls."""

    async def authorization(self, installation_id: int | None) -> str:
        """The full header value (e.g. ``Bearer <token>``) for this installation.

        ``installation_id`` is the delivery's GitHub App installation (for an
        App credential, ``GitHubClient`` looks it up by repository when the
        delivery has none), or ``None`` for a plain repository/organisation
        hook with a token credential.
        """
        ...

    async def invalidate(self, installation_id: int | None) -> None:
        """Forget any cached credential for this installation (called after a 401)."""
        ...


@runtime_checkable
class GitHubAppCredential(Protocol):
    """What a GitHub App credential adds to ``GitHubAuth`` (see ``AppAuth``)."""

    @property
    def app_id(self) -> int:
        """The App's id: its comments carry it in ``performed_via_github_app``."""
        ...

    async def installation_for(self, repository: str) -> int:
        """The App's installation id on ``repository`` (``owner/repo``).

        Raises ``PermanentError`` when the App is not installed there.
        """
        ...

    async def installations(self) -> list[int]:
        """The ids of every installation of the App."""
        ...

    async def hook_deliveries(self, *, since: float, max_pages: int) -> list[dict[str, Any]]:
        """The App webhook's deliveries since ``since`` (UNIX seconds), newest first, as
        GitHub lists them (``GET /app/hook/deliveries``, at most ``max_pages`` pages)."""
        ...

    async def redeliver(self, delivery_id: int) -> None:
        """Ask GitHub to send a delivery again (same ``X-GitHub-Delivery``)."""
        ...

    async def check(self) -> str:
        """Verify the App's own credential online; a one-line summary (e.g. its slug)."""
        ...


class TokenAuth:
    """A personal or fine-grained access token, sent as ``Bearer <token>``.

    The token is the same for every installation; ``invalidate`` has nothing to
    refresh. ``repr`` never shows the token.
    """

    __slots__ = ("_token",)

    def __init__(self, token: str) -> None:
        if not token.strip():
            raise ValueError("a GitHub token must not be empty")
        self._token = token.strip()

    async def authorization(self, installation_id: int | None) -> str:
        """``Bearer <token>``, whatever the installation."""
        return f"Bearer {self._token}"

    async def invalidate(self, installation_id: int | None) -> None:
        """Nothing to refresh for a static token."""

    def __repr__(self) -> str:
        return "TokenAuth(token='***')"

    __str__ = __repr__


# ---------------------------------------------------------------------------
# The one response mapping


def decipher_github_response(response: httpx.Response, *, now: float) -> Any:
    """Map a GitHub response to its JSON data or raise a typed ``RemoteError``.

    - 2xx → decoded JSON (``None`` for an empty body);
    - 401 → ``TokenRejected``;
    - 403/429 → ``RateLimited`` in GitHub's order: ``retry-after`` seconds;
      else ``x-ratelimit-remaining: 0`` → until ``x-ratelimit-reset`` (≥ 1 s);
      else a secondary-limit message, or any 429 → 60 s; a 403 that is none of
      these is a permission problem → ``PermanentError``;
    - 404/410 → ``NotFound``; 409 → ``Conflict``; 422 and other 4xx →
      ``PermanentError`` with GitHub's message;
    - 5xx → ``TransientError``; anything else (3xx, 1xx) → ``PermanentError``.

    ``now`` is the current Unix time, used for ``x-ratelimit-reset``.
    """
    status = response.status_code
    if 200 <= status < 300:
        return _json_or_none(response)
    message = _github_message(response)
    if status == 401:
        raise TokenRejected(SERVICE, "GitHub rejected the credential", status=status)
    if status in (403, 429):
        wait = _rate_limit_wait(response, message, now=now)
        if wait is not None:
            raise RateLimited(SERVICE, "GitHub rate limit reached", status=status, retry_after=wait)
        raise PermanentError(SERVICE, _explain("GitHub denied permission", message), status=status)
    if status in (404, 410):
        raise NotFound(SERVICE, _explain("GitHub could not find it", message), status=status)
    if status == 409:
        raise Conflict(SERVICE, _explain("GitHub reported a conflict", message), status=status)
    if 400 <= status < 500:
        raise PermanentError(
            SERVICE, _explain("GitHub refused the request", message), status=status
        )
    if status >= 500:
        raise TransientError(SERVICE, "GitHub had a server error", status=status)
    raise PermanentError(SERVICE, f"GitHub gave an unexpected answer {status}", status=status)


def _json_or_none(response: httpx.Response) -> Any:
    if response.status_code == 204 or not response.content:
        return None
    try:
        return response.json()
    except ValueError as exc:
        raise TransientError(
            SERVICE, "GitHub answered with something that is not JSON", status=response.status_code
        ) from exc


def _rate_limit_wait(response: httpx.Response, message: str, *, now: float) -> float | None:
    """Seconds to wait if a 403/429 is a rate limit (GitHub's documented order), else None."""
    retry_after = parse_retry_after(response.headers.get("retry-after"), now=now)
    if retry_after is not None:
        return retry_after
    if response.headers.get("x-ratelimit-remaining", "").strip() == "0":
        reset = parse_number(response.headers.get("x-ratelimit-reset"))
        return SECONDARY_LIMIT_WAIT if reset is None else max(1.0, reset - now)
    lowered = message.lower()
    if response.status_code == 429 or "rate limit" in lowered or "abuse" in lowered:
        return SECONDARY_LIMIT_WAIT
    return None






def _github_message(response: httpx.Response) -> str:
    """GitHub's ``message`` plus any ``errors[].message``, shortened; "" if none."""
    try:
        data = response.json()
    except ValueError:
        return ""
    if not isinstance(data, dict):
        return ""
    parts = [data["message"]] if isinstance(data.get("message"), str) else []
    errors = data.get("errors")
    if isinstance(errors, list):
        parts += [
            e["message"]
            for e in errors
            if isinstance(e, dict) and isinstance(e.get("message"), str)
        ]
    text = ": ".join(part.strip() for part in parts if part.strip())
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 1] + "…"


def _explain(summary: str, message: str) -> str:
    return f"{summary}: {message}" if message else summary


def github_headers(authorization: str) -> dict[str, str]:
    """The headers every GitHub REST request carries, with this ``Authorization`` value."""
    return {
        "Accept": "application/vnd.github+json",
        "X-GitHub-Api-Version": API_VERSION,
        "User-Agent": USER_AGENT,
        "Authorization": authorization,
    }


def transport_error(exc: httpx.HTTPError) -> TransientError:
    """A request that got no usable response: timeouts and connection failures."""
    if isinstance(exc, httpx.TimeoutException):
        return TransientError(SERVICE, "GitHub did not answer in time")
    return TransientError(SERVICE, f"could not reach GitHub ({type(exc).__name__})")


# ---------------------------------------------------------------------------
# Client


class GitHubClient:
    """GitHub REST client for the bridge's issue comment (implements ``IssueTracker``).

    ``api_url`` is ``https://api.github.com`` or ``https://HOST/api/v3``; ``http``
    is owned by the caller (timeouts, transport); ``clock`` returns Unix time and
    is used only to compute rate-limit waits. ``limiter`` paces the mutating
    requests (POST/PATCH/PUT/DELETE; GETs are not content-creating); when
    ``None`` the client makes its own with GitHub's limits. Share one limiter
    between clients that act as the same GitHub identity. With ``max_pacing_wait``
    (seconds), a mutating request that would wait longer than that for the limiter
    raises ``PacingDeferred`` instead of waiting (the worker then defers its job
    rather than hold a slot for up to an hour); without, it waits.

    With a ``GitHubAppCredential`` and an event without ``installation_id``
    (a repository hook), the installation is looked up by repository.
    """

    def __init__(
        self,
        api_url: str,
        auth: GitHubAuth,
        *,
        http: httpx.AsyncClient,
        clock: Callable[[], float] = time.time,
        limiter: ContentRateLimiter | None = None,
        max_pacing_wait: float | None = None,
    ) -> None:
        self._api_url = api_url.rstrip("/")
        self._origin = _origin(self._api_url)
        self._auth = auth
        self._http = http
        self._clock = clock
        self._limiter = limiter if limiter is not None else ContentRateLimiter()
        self._max_pacing_wait = max_pacing_wait
        self._own_user_id: int | None = None
        self._repository_ids: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"GitHubClient(api_url={self._api_url!r})"

    async def upsert_comment(
        self, event: IssueAddress, *, marker: str, body: str, comment_id: str | None
    ) -> str:
        """Make the issue carry one bridge comment containing ``marker``, with ``body``.

        Edits ``comment_id`` if it still exists and GitHub lets the bridge edit it
        (404/410 there, or a refused edit, falls through); else searches the issue's
        comments (every page, up to ``MAX_PAGES``) for ``marker`` in a comment the
        bridge's own account wrote (a marker copied into someone else's comment is
        ignored), and edits the first match (no request if it already has this
        body); else creates the comment. Returns the comment id as text. Safe to
        repeat after any failure. A body over 65 536 characters is refused with
        ``PermanentError`` before anything is sent; a body without ``marker`` is
        a programming error (``ValueError``). With ``max_pacing_wait``, raises
        ``PacingDeferred`` before any request when the limiter has no room soon.
        """
        if not marker or marker not in body:
            raise ValueError("the comment body must contain its non-empty marker")
        if len(body) > MAX_COMMENT_CHARS:
            raise PermanentError(
                SERVICE,
                f"the comment is longer than GitHub's limit of {MAX_COMMENT_CHARS} characters",
            )
        if self._max_pacing_wait is not None:  # defer before the lookups, not after them
            await self._limiter.check_room(self._max_pacing_wait)
        owner, repo, number = _issue_coordinates(event)
        installation = await self._installation(event.installation_id, owner, repo)
        refused: str | None = None
        if comment_id and comment_id.isdigit():
            try:
                return await self._update_comment(owner, repo, comment_id, body, installation)
            except NotFound:
                pass  # deleted since; look for another copy, else create
            except PermanentError as exc:  # the edit is refused: post a new comment
                if exc.status not in (403, 422):
                    raise
                refused = comment_id
        found = await self.find_comment(owner, repo, number, marker, installation,
                                        skip=refused)
        if found is not None:
            if found.get("body") == body:
                return str(found["id"])
            return await self._update_comment(owner, repo, str(found["id"]), body, installation)
        return await self._create_comment(owner, repo, number, body, installation)

    async def find_comment(
        self, owner: str, repo: str, number: str, marker: str, installation_id: int | None,
        *, skip: str | None = None,
    ) -> dict[str, Any] | None:
        """The first comment on the issue that the bridge's own account wrote and whose
        body contains ``marker`` (other than ``skip``), or ``None``.

        Follows ``Link: rel="next"`` (same origin only) for up to ``MAX_PAGES`` pages.
        """
        url: str | None = f"{self._api_url}/repos/{owner}/{repo}/issues/{number}/comments"
        params: dict[str, str] | None = {"per_page": str(PER_PAGE)}
        for _ in range(MAX_PAGES):
            if url is None:
                return None
            data, response = await self._send("GET", url, installation_id, params=params)
            for comment in _comment_list(data):
                if (marker in comment["body"] and str(comment["id"]) != skip
                        and await self._is_own(comment, installation_id)):
                    return comment
            url, params = self._next_page(response), None
        return None

    async def react(self, event: IssueAddress, comment_id: str, content: str = "eyes") -> None:
        """Add the ``content`` reaction (👀 by default) to a comment; done if it is there
        already (200) or the comment is gone (404: nobody to show it to)."""
        owner, repo, _ = _issue_coordinates(event)
        installation = await self._installation(event.installation_id, owner, repo)
        url = f"{self._api_url}/repos/{owner}/{repo}/issues/comments/{comment_id}/reactions"
        try:
            await self._send("POST", url, installation, json={"content": content})
        except NotFound:
            return

    async def set_status_label(self, event: IssueAddress, label: str, *,
                               replaces: Collection[str]) -> None:
        """Put ``label`` on the issue (GitHub creates it in the repository on first use),
        then take off every other label of ``replaces`` the issue carries (the add answers
        with the issue's labels; one already gone answers 404, which is fine)."""
        owner, repo, number = _issue_coordinates(event)
        installation = await self._installation(event.installation_id, owner, repo)
        base = f"{self._api_url}/repos/{owner}/{repo}/issues/{number}/labels"
        data, _ = await self._send("POST", base, installation, json={"labels": [label]})
        names = [item.get("name") for item in data if isinstance(item, dict)] \
            if isinstance(data, list) else []
        stale = {name.lower(): name for name in replaces if name.lower() != label.lower()}
        for name in names:
            if isinstance(name, str) and name.lower() in stale:
                with contextlib.suppress(NotFound):
                    await self._send("DELETE", f"{base}/{quote(name, safe='')}", installation)

    async def _is_own(self, comment: dict[str, Any], installation_id: int | None) -> bool:
        """Whether the bridge's own account wrote ``comment``: the App it acts as, or the
        user its token belongs to (``GET /user``, asked once)."""
        if isinstance(self._auth, GitHubAppCredential):
            app = comment.get("performed_via_github_app")
            return isinstance(app, dict) and app.get("id") == self._auth.app_id
        if self._own_user_id is None:
            data, _ = await self._send("GET", f"{self._api_url}/user", installation_id)
            user_id = data.get("id") if isinstance(data, dict) else None
            if not isinstance(user_id, int):
                raise TransientError(SERVICE, "GitHub's answer about its user carries no id")
            self._own_user_id = user_id
        user = comment.get("user")
        return isinstance(user, dict) and user.get("id") == self._own_user_id

    # -- reads for the reconciliation sweep ------------------------------------------

    async def search_issues(self, query: str, installation_id: int | None) -> list[dict[str, Any]]:
        """Every issue ``GET /search/issues`` finds for ``query`` (up to its 1,000), newest
        update first. The caller paces calls: search allows 30 a minute."""
        url: str | None = f"{self._api_url}/search/issues"
        params: dict[str, str] | None = {"q": query, "sort": "updated", "order": "desc",
                                         "per_page": str(PER_PAGE)}
        found: list[dict[str, Any]] = []
        for _ in range(10):
            if url is None:
                break
            data, response = await self._send("GET", url, installation_id, params=params)
            items = data.get("items") if isinstance(data, dict) else None
            found += [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []
            url, params = self._next_page(response), None
        return found

    async def repository_id(self, full_name: str, installation_id: int | None) -> int:
        """The numeric id of ``owner/name`` (what issue keys are made of), cached."""
        key = full_name.lower()
        if key not in self._repository_ids:
            data, _ = await self._send("GET", f"{self._api_url}/repos/{full_name}",
                                       installation_id)
            ident = data.get("id") if isinstance(data, dict) else None
            if not isinstance(ident, int):
                raise TransientError(SERVICE, "GitHub's answer about the repository has no id")
            self._repository_ids[key] = ident
        return self._repository_ids[key]

    async def labeler(self, full_name: str, number: int, label: str,
                      installation_id: int | None) -> Person | None:
        """Who added ``label`` to the issue last (its ``labeled`` events), if anyone."""
        url: str | None = f"{self._api_url}/repos/{full_name}/issues/{number}/events"
        params: dict[str, str] | None = {"per_page": str(PER_PAGE)}
        who: Person | None = None
        for _ in range(MAX_PAGES):
            if url is None:
                break
            data, response = await self._send("GET", url, installation_id, params=params)
            for event in data if isinstance(data, list) else []:
                named = (event.get("label") or {}).get("name") if isinstance(event, dict) else None
                actor = event.get("actor") if isinstance(event, dict) else None
                if (event.get("event") == "labeled" and isinstance(named, str)
                        and named.casefold() == label.casefold() and isinstance(actor, dict)
                        and isinstance(actor.get("id"), int)):
                    who = Person(str(actor["id"]), str(actor.get("login") or ""))
            url, params = self._next_page(response), None
        return who

    async def installation_repositories(self, installation_id: int) -> list[str]:
        """The full names of the repositories an App installation covers."""
        url: str | None = f"{self._api_url}/installation/repositories"
        params: dict[str, str] | None = {"per_page": str(PER_PAGE)}
        names: list[str] = []
        for _ in range(MAX_PAGES):
            if url is None:
                break
            data, response = await self._send("GET", url, installation_id, params=params)
            repos = data.get("repositories") if isinstance(data, dict) else None
            names += [str(r["full_name"]) for r in repos if isinstance(r, dict)
                      and isinstance(r.get("full_name"), str)] if isinstance(repos, list) else []
            url, params = self._next_page(response), None
        return names

    @property
    def app(self) -> GitHubAppCredential | None:
        """The App credential, when the client acts as a GitHub App."""
        return self._auth if isinstance(self._auth, GitHubAppCredential) else None

    async def check(self, installation_id: int | None = None) -> str:
        """Online check for ``check-config --online``: the credential works; returns a summary.

        Uses ``GET /rate_limit``, which any token type may call and which does
        not count against the limit. A GitHub App without an ``installation_id``
        has no token to call it with: its own check (``GET /app``) is used.
        Raises ``RemoteError`` subclasses.
        """
        if installation_id is None and isinstance(self._auth, GitHubAppCredential):
            return f"GitHub at {self._api_url}: {await self._auth.check()}"
        data, _ = await self._send("GET", f"{self._api_url}/rate_limit", installation_id)
        resources = data.get("resources") if isinstance(data, dict) else None
        core = resources.get("core") if isinstance(resources, dict) else None
        remaining, limit = (
            (core.get("remaining"), core.get("limit")) if isinstance(core, dict) else (None, None)
        )
        if isinstance(remaining, int) and isinstance(limit, int):
            return (
                f"GitHub at {self._api_url}: credential accepted, {remaining}/{limit} requests left"
            )
        return f"GitHub at {self._api_url}: credential accepted"

    # -- requests -------------------------------------------------------------

    async def _installation(self, installation_id: int | None, owner: str, repo: str) -> int | None:
        """The delivery's installation, else the App's installation on the repository.

        ``None`` for credentials that are not a GitHub App (a token needs none).
        """
        if installation_id is not None or not isinstance(self._auth, GitHubAppCredential):
            return installation_id
        return await self._auth.installation_for(f"{owner}/{repo}")

    async def _update_comment(
        self, owner: str, repo: str, comment_id: str, body: str, installation_id: int | None
    ) -> str:
        url = f"{self._api_url}/repos/{owner}/{repo}/issues/comments/{comment_id}"
        data, _ = await self._send("PATCH", url, installation_id, json={"body": body})
        return _comment_id(data)

    async def _create_comment(
        self, owner: str, repo: str, number: str, body: str, installation_id: int | None
    ) -> str:
        url = f"{self._api_url}/repos/{owner}/{repo}/issues/{number}/comments"
        data, _ = await self._send("POST", url, installation_id, json={"body": body})
        return _comment_id(data)

    async def _send(
        self,
        method: str,
        url: str,
        installation_id: int | None,
        *,
        params: dict[str, str] | None = None,
        json: Any = None,
    ) -> tuple[Any, httpx.Response]:
        """One request with a single retry after a 401 (the credential may be refreshed).

        Mutating methods wait for, and run under, the content-creation limiter (or
        raise ``PacingDeferred``, see ``max_pacing_wait``).
        """
        for attempt in (1, 2):
            if method.upper() in MUTATING_METHODS:
                async with self._limiter.permit(max_wait=self._max_pacing_wait):
                    response = await self._request_once(method, url, installation_id, params, json)
            else:
                response = await self._request_once(method, url, installation_id, params, json)
            try:
                return decipher_github_response(response, now=self._clock()), response
            except TokenRejected:
                if attempt == 2:
                    raise
                await self._auth.invalidate(installation_id)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _request_once(
        self,
        method: str,
        url: str,
        installation_id: int | None,
        params: dict[str, str] | None,
        json: Any,
    ) -> httpx.Response:
        headers = github_headers(await self._auth.authorization(installation_id))
        try:
            return await self._http.request(
                method, url, headers=headers, params=params, json=json, follow_redirects=False
            )
        except httpx.HTTPError as exc:
            raise transport_error(exc) from None

    def _next_page(self, response: httpx.Response) -> str | None:
        return next_page(response, self._api_url)


def next_page(response: httpx.Response, api_url: str) -> str | None:
    """The ``rel="next"`` URL of a paginated answer, if it points at ``api_url``'s origin
    (a token is never sent to another host); None on the last page."""
    link = response.links.get("next", {}).get("url")
    if not link:
        return None
    if _origin(link) != _origin(api_url):
        raise PermanentError(SERVICE, "GitHub pagination pointed at another host")
    return link


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def _issue_coordinates(event: IssueAddress) -> tuple[str, str, str]:
    """(owner, repo, number) from ``event.scope`` (``owner/repo``) and ``event.number``."""
    owner, _, repo = event.scope.partition("/")
    names_ok = all(_NAME_RE.fullmatch(name) and name not in (".", "..") for name in (owner, repo))
    if not names_ok or not event.number.isdigit():
        raise PermanentError(SERVICE, f"not a GitHub issue: {event.scope}#{event.number}")
    return owner, repo, event.number


def _comment_list(data: Any) -> list[dict[str, Any]]:
    """Comments from a list response, skipping entries without an id or a text body."""
    if not isinstance(data, list):
        raise TransientError(SERVICE, "GitHub answered the comment list with something else")
    return [
        c
        for c in data
        if isinstance(c, dict) and isinstance(c.get("id"), int) and isinstance(c.get("body"), str)
    ]


def _comment_id(data: Any) -> str:
    if not isinstance(data, dict) or not isinstance(data.get("id"), int):
        raise TransientError(SERVICE, "GitHub's answer carries no comment id")
    return str(data["id"])


__all__ = [
    "MUTATING_METHODS",
    "GitHubAppCredential",
    "GitHubAuth",
    "GitHubClient",
    "TokenAuth",
    "decipher_github_response",
    "github_headers",
    "transport_error",
]
