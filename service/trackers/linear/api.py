"""Linear GraphQL calls: the bridge's issue comment (find by marker, edit or create).

All HTTP goes through an injected ``httpx.AsyncClient``; every response is
mapped to data or a typed error by ``decipher_linear_response`` and nowhere
else.

Credentials (``linear.api_key``), by Linear's documented rule:

- a personal API key (it starts with ``lin_api_``) is sent as is:
  ``Authorization: lin_api_…`` (Linear refuses it with a ``Bearer`` prefix);
- anything else is taken to be an OAuth access token and sent as
  ``Authorization: Bearer <token>``;
- a value that already starts with ``Bearer `` is sent unchanged.

Error messages are plain words fit for an issue comment: they never contain the
key, a header value or a request body.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable
from typing import Any

import httpx

from service.core.events import IssueAddress
from service.errors import (
    NotFound,
    PermanentError,
    RateLimited,
    RemoteError,
    RouteNotFound,
    TokenRejected,
    TransientError,
)
from service.http import parse_number, parse_retry_after

SERVICE = "linear"
USER_AGENT = "coder-bridge"
API_KEY_PREFIX = "lin_api_"
PAGE_SIZE = 50
MAX_PAGES = 100
DEFAULT_RATE_LIMIT_WAIT = 60.0
_MESSAGE_LIMIT = 300
_EPOCH_MS_THRESHOLD = 1e12  # reset values below this are seconds (older documentation)
_TRANSIENT_TYPES = frozenset({"internal error", "network error", "lock timeout", "bootstrap error"})
_TRANSIENT_CODES = frozenset({"INTERNAL_SERVER_ERROR", "INTERNAL_ERROR", "LOCK_TIMEOUT"})

COMMENT_CREATE = """
mutation CommentCreate($input: CommentCreateInput!) {
  commentCreate(input: $input) { success comment { id url } }
}
""".strip()

COMMENT_UPDATE = """
mutation CommentUpdate($id: String!, $input: CommentUpdateInput!) {
  commentUpdate(id: $id, input: $input) { success comment { id url } }
}
""".strip()

ISSUE_COMMENTS = """
query IssueComments($id: String!, $first: Int!, $after: String) {
  issue(id: $id) {
    comments(first: $first, after: $after) {
      nodes { id body user { id } }
      pageInfo { hasNextPage endCursor }
    }
  }
}
""".strip()

REACTION_CREATE = """
mutation ReactionCreate($input: ReactionCreateInput!) {
  reactionCreate(input: $input) { success }
}
""".strip()

VIEWER = "query Viewer { viewer { id name } }"


def authorization_header(credential: str) -> str:
    """The ``Authorization`` value for a Linear credential (see the module docstring)."""
    value = credential.strip()
    if value.startswith(API_KEY_PREFIX) or value[:7].lower() == "bearer ":
        return value
    return f"Bearer {value}"


# ---------------------------------------------------------------------------
# The one response mapping


def decipher_linear_response(response: httpx.Response, *, now: float) -> Any:
    """Map a Linear GraphQL response to its ``data`` object or raise a typed ``RemoteError``.

    ``errors[]`` is looked at before ``data``, whatever the HTTP status, in this order:

    - rate limiting: any error with ``extensions.code == "RATELIMITED"`` or
      ``extensions.type == "ratelimited"`` (Linear sends it with HTTP 400), or
      HTTP 429 → ``RateLimited``; ``retry_after`` from ``Retry-After``, else the
      reset of the exhausted ``X-RateLimit-*`` bucket (requests first; epoch ms,
      a value below 1e12 read as seconds) minus ``now`` (at least 1 s), else 60 s;
    - HTTP 401 or ``AUTHENTICATION_ERROR`` → ``TokenRejected``;
    - HTTP 5xx → ``TransientError``;
    - ``Entity not found: …`` errors → ``NotFound``; internal/lock-timeout
      errors → ``TransientError``; any other GraphQL error → ``PermanentError``
      with Linear's message (``userPresentableMessage`` preferred);
    - HTTP 404 without GraphQL errors → ``RouteNotFound`` (``api_url`` is not a
      GraphQL endpoint); other 4xx/3xx → ``PermanentError``;
    - 2xx without ``data`` object, or not JSON → ``TransientError``.

    ``now`` is the current Unix time in seconds.
    """
    status = response.status_code
    body = _json_object(response)
    errors = _errors(body)
    if status == 429 or any(_is_rate_limit(error) for error in errors):
        wait = _rate_limit_wait(response, now=now)
        raise RateLimited(SERVICE, "Linear rate limit reached", status=status, retry_after=wait)
    if status == 401 or any(_code(error) == "AUTHENTICATION_ERROR" for error in errors):
        raise TokenRejected(SERVICE, "Linear rejected the API key", status=status)
    if status >= 500:
        raise TransientError(SERVICE, "Linear had a server error", status=status)
    if errors:
        raise _graphql_error(errors, status)
    if status == 404:
        raise RouteNotFound(SERVICE, "no Linear GraphQL API at the configured URL", status=status)
    if not 200 <= status < 300:
        raise PermanentError(SERVICE, f"Linear gave an unexpected answer {status}", status=status)
    data = body.get("data") if body is not None else None
    if not isinstance(data, dict):
        raise TransientError(SERVICE, "Linear answered without data", status=status)
    return data


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    """The body as a JSON object, or ``None`` (empty, HTML from a proxy, an array...)."""
    try:
        decoded = response.json()
    except ValueError:
        return None
    return decoded if isinstance(decoded, dict) else None


def _errors(body: dict[str, Any] | None) -> list[dict[str, Any]]:
    """``errors[]`` entries that are objects (GraphQL's shape); ``[]`` when absent."""
    errors = body.get("errors") if body is not None else None
    if not isinstance(errors, list):
        return []
    return [error for error in errors if isinstance(error, dict)]


def _extensions(error: dict[str, Any]) -> dict[str, Any]:
    extensions = error.get("extensions")
    return extensions if isinstance(extensions, dict) else {}


def _code(error: dict[str, Any]) -> str:
    code = _extensions(error).get("code")
    return code.upper() if isinstance(code, str) else ""


def _type(error: dict[str, Any]) -> str:
    kind = _extensions(error).get("type")
    return kind.lower() if isinstance(kind, str) else ""


def _is_rate_limit(error: dict[str, Any]) -> bool:
    return _code(error) == "RATELIMITED" or _type(error) == "ratelimited"


def _is_not_found(error: dict[str, Any]) -> bool:
    message = error.get("message")
    return isinstance(message, str) and message.lower().startswith("entity not found")


def _is_transient(error: dict[str, Any]) -> bool:
    return _type(error) in _TRANSIENT_TYPES or _code(error) in _TRANSIENT_CODES


def _graphql_error(errors: list[dict[str, Any]], status: int) -> RemoteError:
    """The typed error for a response whose ``errors[]`` is not about auth or limits."""
    message = _message(errors)
    if any(_is_not_found(error) for error in errors):
        return NotFound(SERVICE, _explain("Linear could not find it", message), status=status)
    if all(_is_transient(error) for error in errors):
        return TransientError(SERVICE, _explain("Linear failed", message), status=status)
    return PermanentError(SERVICE, _explain("Linear refused the request", message), status=status)


def _message(errors: Iterable[dict[str, Any]]) -> str:
    """Linear's words for the errors (``userPresentableMessage`` preferred), shortened."""
    parts: list[str] = []
    for error in errors:
        friendly = _extensions(error).get("userPresentableMessage")
        text = friendly if isinstance(friendly, str) and friendly.strip() else error.get("message")
        if isinstance(text, str) and text.strip() and text.strip() not in parts:
            parts.append(text.strip())
    text = "; ".join(parts)
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 1] + "…"


def _explain(summary: str, message: str) -> str:
    return f"{summary}: {message}" if message else summary


def _rate_limit_wait(response: httpx.Response, *, now: float) -> float:
    """Seconds to wait: ``Retry-After``, else the exhausted bucket's reset, else 60."""
    retry_after = parse_retry_after(response.headers.get("retry-after"), now=now)
    if retry_after is not None:
        return retry_after
    headers = response.headers
    buckets = ("requests", "complexity", "endpoint-requests")
    resets = [_reset_epoch(headers.get(f"x-ratelimit-{bucket}-reset")) for bucket in buckets]
    exhausted = [
        reset
        for bucket, reset in zip(buckets, resets, strict=True)
        if reset is not None and headers.get(f"x-ratelimit-{bucket}-remaining", "").strip() == "0"
    ]
    reset = max(exhausted) if exhausted else resets[0]
    if reset is None:
        return DEFAULT_RATE_LIMIT_WAIT
    return max(1.0, reset - now)


def _reset_epoch(value: str | None) -> float | None:
    """A reset header as Unix seconds (Linear sends epoch ms; older docs said seconds)."""
    number = parse_number(value)
    if number is None:
        return None
    return number / 1000.0 if number >= _EPOCH_MS_THRESHOLD else number






def _transport_error(exc: httpx.HTTPError) -> TransientError:
    """A request that got no usable response: timeouts and connection failures."""
    if isinstance(exc, httpx.TimeoutException):
        return TransientError(SERVICE, "Linear did not answer in time")
    return TransientError(SERVICE, f"could not reach Linear ({type(exc).__name__})")


# ---------------------------------------------------------------------------
# Client


class LinearClient:
    """Linear GraphQL client for the bridge's issue comment (implements ``IssueTracker``).

    ``api_url`` is the GraphQL endpoint (``https://api.linear.app/graphql``);
    ``api_key`` a personal API key or an OAuth access token (see the module
    docstring); ``http`` is owned by the caller (timeouts, transport); ``clock``
    returns Unix time and is used only to compute rate-limit waits. ``repr``
    never shows the key.
    """

    def __init__(
        self,
        api_url: str,
        api_key: str,
        *,
        http: httpx.AsyncClient,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not api_key.strip():
            raise ValueError("a Linear API key must not be empty")
        self._api_url = api_url
        self._authorization = authorization_header(api_key)
        self._secret = api_key.strip()
        self._http = http
        self._clock = clock
        self._viewer_id: str | None = None

    def __repr__(self) -> str:
        return f"LinearClient(api_url={self._api_url!r})"

    __str__ = __repr__

    async def upsert_comment(
        self, event: IssueAddress, *, marker: str, body: str, comment_id: str | None
    ) -> str:
        """Make the issue carry one bridge comment containing ``marker``, with ``body``.

        Edits ``comment_id`` if it still exists and Linear lets the bridge edit it
        ("Entity not found", or a refused edit, falls through); else searches the
        issue's comments (every page, up to ``MAX_PAGES`` of ``PAGE_SIZE``) for
        ``marker`` in a comment the bridge's own user wrote (``viewer``) and edits the
        first match (no request if it already has this body); else creates the
        comment on ``event.issue_id``. Returns the comment id. Safe to repeat after
        any failure. A body without ``marker`` is a programming error (``ValueError``).
        """
        if not marker or marker not in body:
            raise ValueError("the comment body must contain its non-empty marker")
        issue_id = _issue_id(event)
        refused: str | None = None
        if comment_id:
            try:
                return await self._update_comment(comment_id, body)
            except NotFound:
                pass  # deleted since; look for another copy, else create
            except TokenRejected:
                raise
            except PermanentError:
                refused = comment_id  # the edit is refused: post a new comment
        found = await self.find_comment(issue_id, marker, skip=refused)
        if found is not None:
            if found["body"] == body:
                return str(found["id"])
            return await self._update_comment(str(found["id"]), body)
        return await self._create_comment(issue_id, body)

    async def find_comment(self, issue_id: str, marker: str, *,
                           skip: str | None = None) -> dict[str, Any] | None:
        """The first comment (``{"id", "body", "user"}``) on the issue that the bridge's
        own user wrote and whose body contains ``marker`` (other than ``skip``).

        Follows ``pageInfo.endCursor`` while ``hasNextPage``, for up to
        ``MAX_PAGES`` pages. ``NotFound`` if the issue does not exist.
        """
        after: str | None = None
        for _ in range(MAX_PAGES):
            variables = {"id": issue_id, "first": PAGE_SIZE, "after": after}
            data, _ = await self._graphql(ISSUE_COMMENTS, variables)
            nodes, next_cursor = _comment_page(data)
            for comment in nodes:
                if (marker in comment["body"] and comment["id"] != skip
                        and await self._is_own(comment)):
                    return comment
            if next_cursor is None or next_cursor == after:
                return None
            after = next_cursor
        return None

    async def react(self, event: IssueAddress, comment_id: str, content: str = "eyes") -> None:
        """Add 👀 to a comment (``reactionCreate``); a comment that is gone is left alone."""
        emoji = {"eyes": "👀", "confused": "😕"}.get(content, content)
        try:
            await self._graphql(REACTION_CREATE,
                                {"input": {"commentId": comment_id, "emoji": emoji}})
        except NotFound:
            return

    async def set_status_label(self, event: IssueAddress, label: str, *,
                               replaces: Collection[str]) -> None:
        """Status labels are GitHub's (``github.status_labels``): nothing on Linear."""

    async def _is_own(self, comment: dict[str, Any]) -> bool:
        """Whether the bridge's own Linear user (the key's ``viewer``) wrote ``comment``."""
        if self._viewer_id is None:
            data, _ = await self._graphql(VIEWER, {})
            viewer = data.get("viewer")
            viewer_id = viewer.get("id") if isinstance(viewer, dict) else None
            if not isinstance(viewer_id, str) or not viewer_id:
                raise TransientError(SERVICE, "Linear's answer about its viewer carries no id")
            self._viewer_id = viewer_id
        user = comment.get("user")
        return isinstance(user, dict) and user.get("id") == self._viewer_id

    async def query(self, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        """Run a read-only GraphQL operation; its ``data`` (errors raised as the client
        maps them)."""
        data, _ = await self._graphql(query, variables)
        return data

    async def check(self) -> str:
        """Online check for ``check-config --online``: the key works; returns a summary.

        Asks for the ``viewer`` (the key's own user). Raises ``RemoteError`` subclasses.
        """
        data, response = await self._graphql(VIEWER, {})
        viewer = data.get("viewer")
        name = viewer.get("name") if isinstance(viewer, dict) else None
        summary = f"Linear at {self._api_url}: credential accepted"
        if isinstance(name, str) and name:
            summary += f" as {name}"
        remaining = response.headers.get("x-ratelimit-requests-remaining")
        limit = response.headers.get("x-ratelimit-requests-limit")
        if remaining and limit and remaining.isdigit() and limit.isdigit():
            summary += f", {remaining}/{limit} requests left"
        return summary

    # -- requests -------------------------------------------------------------

    async def _update_comment(self, comment_id: str, body: str) -> str:
        variables = {"id": comment_id, "input": {"body": body}}
        data, _ = await self._graphql(COMMENT_UPDATE, variables)
        return _saved_comment_id(data, "commentUpdate")

    async def _create_comment(self, issue_id: str, body: str) -> str:
        variables = {"input": {"issueId": issue_id, "body": body}}
        data, _ = await self._graphql(COMMENT_CREATE, variables)
        return _saved_comment_id(data, "commentCreate")

    async def _graphql(
        self, query: str, variables: dict[str, Any]
    ) -> tuple[dict[str, Any], httpx.Response]:
        """POST one operation; the deciphered ``data`` object and the raw response."""
        headers = {
            "Authorization": self._authorization,
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        payload = {"query": query, "variables": variables}
        try:
            response = await self._http.post(
                self._api_url, headers=headers, json=payload, follow_redirects=False
            )
        except httpx.HTTPError as exc:
            raise _transport_error(exc) from None
        try:
            data = decipher_linear_response(response, now=self._clock())
        except RemoteError as exc:
            raise self._scrubbed(exc) from None
        return data, response

    def _scrubbed(self, exc: RemoteError) -> RemoteError:
        """``exc``, or a copy without the key if Linear echoed it in a message."""
        if self._secret not in exc.message:
            return exc
        message = exc.message.replace(self._secret, "***")
        return type(exc)(
            exc.service, message, status=exc.status, retry_after=exc.retry_after
        )


def _issue_id(event: IssueAddress) -> str:
    """The Linear issue uuid (or identifier) the comment belongs to."""
    issue_id = event.issue_id.strip()
    if event.tracker != "linear" or not issue_id:
        raise PermanentError(SERVICE, f"not a Linear issue: {event.issue_key}")
    return issue_id


def _comment_page(data: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    """(comments with a text id and body, next cursor or ``None``) from one page."""
    issue = data.get("issue")
    connection = issue.get("comments") if isinstance(issue, dict) else None
    if not isinstance(connection, dict) or not isinstance(connection.get("nodes"), list):
        raise TransientError(SERVICE, "Linear answered the comment list with something else")
    nodes = [
        node
        for node in connection["nodes"]
        if isinstance(node, dict)
        and isinstance(node.get("id"), str)
        and isinstance(node.get("body"), str)
    ]
    page_info = connection.get("pageInfo")
    if not isinstance(page_info, dict) or page_info.get("hasNextPage") is not True:
        return nodes, None
    cursor = page_info.get("endCursor")
    return nodes, cursor if isinstance(cursor, str) and cursor else None


def _saved_comment_id(data: dict[str, Any], field: str) -> str:
    """The comment id from a ``CommentPayload``; ``success: false`` is transient."""
    payload = data.get(field)
    if not isinstance(payload, dict):
        raise TransientError(SERVICE, f"Linear's answer carries no {field} result")
    if payload.get("success") is not True:
        raise TransientError(SERVICE, "Linear reported that the comment was not saved")
    comment = payload.get("comment")
    comment_id = comment.get("id") if isinstance(comment, dict) else None
    if not isinstance(comment_id, str) or not comment_id:
        raise TransientError(SERVICE, "Linear's answer carries no comment id")
    return comment_id


__all__ = [
    "LinearClient",
    "authorization_header",
    "decipher_linear_response",
]
