"""HTTP to one Coder deployment with one user's token, and the one response mapper.

``decipher_response`` is the only place that turns a Coder answer into data or a
typed ``RemoteError`` (see ``service.errors``); ``decipher_transport_error``
does the same for failures without an answer (timeouts, refused connections).
Every other module calls Coder through ``CoderClient.request`` and switches on
the exception class, never on message text.

Messages are plain words fit for an issue comment. They are built from the
Coder error body (``message``, ``detail``, ``validations``) and never contain
the token, a header or the request body; as a last line of defence, the token
of the request is scrubbed from any text taken from the answer.

Decision on malformed success bodies: a 2xx answer whose body is not JSON is a
``PermanentError``. Coder always answers JSON, so such an answer comes from
something else at that URL (an SSO proxy's login page, a wrong ``coder_url``),
which retrying will not fix. Truncated transfers surface as ``httpx``
transport errors instead, and those are transient.
"""

from __future__ import annotations

import json as jsonlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final, TypeGuard

import httpx

from service.coder.base import CoderUser
from service.errors import (
    Conflict,
    NotFound,
    PermanentError,
    RateLimited,
    RemoteError,
    RouteNotFound,
    TokenRejected,
    TransientError,
)
from service.http import parse_retry_after

SESSION_HEADER: Final = "Coder-Session-Token"
BUILD_VERSION_HEADER: Final = "X-Coder-Build-Version"
ROUTE_NOT_FOUND: Final = "Route not found."

_MAX_MESSAGE_CHARS: Final = 600
_REDACTED: Final = "[redacted]"


def decipher_response(response: httpx.Response, *, service: str = "coder") -> Any:
    """Return the decoded JSON of a 2xx ``response`` (``None`` when empty), else raise.

    Mapping: 401 → ``TokenRejected``; 404 whose ``message`` is exactly
    "Route not found." → ``RouteNotFound``; other 404 → ``NotFound``;
    409 → ``Conflict``; 429 → ``RateLimited`` (``retry_after`` from a
    ``Retry-After`` header given in seconds); 408 and 5xx → ``TransientError``;
    other 4xx (and unexpected 1xx/3xx) → ``PermanentError``; a 2xx body that is
    not JSON → ``PermanentError``. Non-JSON error bodies are tolerated.
    """
    if 200 <= response.status_code < 300:
        return _decode_success(response, service)
    raise _error_for(response, service)


def _error_for(response: httpx.Response, service: str) -> RemoteError:
    """The typed error for a non-2xx ``response`` (see ``decipher_response``)."""
    status = response.status_code
    body = _json_or_none(response)
    secrets = _secrets_of(response)
    message = _scrub(_describe_failure(response, body), secrets)
    short = _scrub(_as_sentence(body.get("message")), secrets) if isinstance(body, dict) else ""
    if status == 401:
        return TokenRejected(service, message, status=status, server_message=short)
    if status == 404:
        is_route = isinstance(body, dict) and body.get("message") == ROUTE_NOT_FOUND
        cls: type[RemoteError] = RouteNotFound if is_route else NotFound
        return cls(service, message, status=status, server_message=short)
    if status == 409:
        return Conflict(service, message, status=status, server_message=short)
    if status == 429:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return RateLimited(service, message, status=status, retry_after=retry_after,
                           server_message=short)
    if status >= 500 or status == 408:
        return TransientError(service, message, status=status, server_message=short)
    return PermanentError(service, message, status=status, server_message=short)


def decipher_transport_error(exc: httpx.HTTPError, *, service: str = "coder") -> RemoteError:
    """Map a failure without an answer to an error (returned, for the caller to raise).

    Timeouts and connection or protocol failures → ``TransientError``; a URL
    that httpx cannot use at all (bad scheme) → ``PermanentError``. The message
    names the host at most, never the exception text (which may echo the URL).
    """
    host = _host_of(exc)
    if isinstance(exc, httpx.TimeoutException):
        return TransientError(service, f"{service.capitalize()} at {host} did not answer in time")
    if isinstance(exc, httpx.UnsupportedProtocol):
        return PermanentError(
            service, f"the {service.capitalize()} URL is not an http(s) URL; check the address"
        )
    if isinstance(exc, httpx.ConnectError):
        return TransientError(service, f"could not connect to {service.capitalize()} at {host}")
    return TransientError(
        service, f"the connection to {service.capitalize()} at {host} failed before it answered"
    )




class CoderClient:
    """Calls one Coder deployment with one user's token.

    The ``httpx.AsyncClient`` is injected and shared (its lifetime belongs to the
    caller); ``timeout`` applies to every request. ``build_version`` holds the
    last ``X-Coder-Build-Version`` seen (``None`` before the first answer).
    """

    def __init__(
        self, base_url: str, token: str, *, http: httpx.AsyncClient, timeout: float
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._http = http
        self._timeout = timeout
        self.build_version: str | None = None

    def __repr__(self) -> str:
        return f"CoderClient(base_url={self.base_url!r}, token=<hidden>)"

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: object | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        """Send ``method path`` (``path`` starts with ``/api/``) and return the decoded JSON.

        Returns ``None`` for an empty body. Raises the ``RemoteError`` subclasses
        of ``decipher_response`` and ``decipher_transport_error``.
        """
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/': {path!r}")
        headers = {SESSION_HEADER: self._token, "Accept": "application/json"}
        try:
            response = await self._http.request(
                method,
                self.base_url + path,
                headers=headers,
                json=json,
                params=params,
                timeout=self._timeout,
            )
        except httpx.HTTPError as exc:
            raise self._scrubbed(decipher_transport_error(exc)) from None
        self._note_version(response)
        try:
            return decipher_response(response)
        except RemoteError as exc:
            raise self._scrubbed(exc) from None

    async def fetch_me(self) -> CoderUser:
        """The token's owner (``GET /api/v2/users/me``); validates the token on the way."""
        body = await self.request("GET", "/api/v2/users/me")
        return parse_user(body)

    def _note_version(self, response: httpx.Response) -> None:
        version = response.headers.get(BUILD_VERSION_HEADER)
        if version:
            self.build_version = version

    def _scrubbed(self, exc: RemoteError) -> RemoteError:
        """The same error with this client's token removed from its message."""
        secrets = _split_secrets(self._token)
        clean = _scrub(exc.message, secrets)
        if clean != exc.message:
            exc.message = clean
            exc.args = (clean,)
        exc.server_message = _scrub(exc.server_message, secrets)
        return exc


def parse_user(body: Any) -> CoderUser:
    """A ``CoderUser`` from a Coder User object; ``PermanentError`` if ``id``/``username`` lack."""
    if not isinstance(body, dict):
        raise PermanentError("coder", "Coder's answer about the user is not a JSON object")
    user_id, username = body.get("id"), body.get("username")
    if not isinstance(user_id, str) or not user_id or not isinstance(username, str) or not username:
        raise PermanentError("coder", "Coder's answer about the user lacks its id or username")
    org_ids = body.get("organization_ids")
    orgs = tuple(o for o in org_ids if isinstance(o, str)) if isinstance(org_ids, list) else ()
    return CoderUser(id=user_id, username=username, organization_ids=orgs)


# --- helpers -----------------------------------------------------------------------------------


def _decode_success(response: httpx.Response, service: str) -> Any:
    if not response.content.strip():
        return None
    try:
        return response.json()
    except (ValueError, UnicodeDecodeError):
        kind = response.headers.get("Content-Type", "unknown").split(";")[0].strip() or "unknown"
        raise PermanentError(
            service,
            f"{service.capitalize()} answered HTTP {response.status_code} with a body that is not "
            f"JSON ({kind}); check that the configured URL points at the {service.capitalize()} "
            "server itself",
            status=response.status_code,
        ) from None


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return jsonlib.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        return None


def _describe_failure(response: httpx.Response, body: Any) -> str:
    """Plain words for a failed answer, from the Coder error body when there is one."""
    if isinstance(body, dict):
        parts = [_as_sentence(body.get("message")), _as_sentence(body.get("detail"))]
        parts.append(_describe_validations(body.get("validations")))
        parts.append(describe_usage_limit(body))
        text = " ".join(p for p in parts if p)
        if text:
            return _truncate(text)
    reason = response.reason_phrase or "error"
    return f"the server answered HTTP {response.status_code} ({reason}) without an explanation"


def describe_usage_limit(body: Mapping[str, Any]) -> str:
    """Plain words for the spend fields of Coder's chat usage-limit answer, or ``""``.

    The pre-Aug-2026 409 body is ``{"message": "Chat usage limit exceeded.",
    "spent_micros": int, "limit_micros": int, "resets_at": RFC 3339}``; amounts
    are millionths of a US dollar. Missing or malformed fields are left out.
    """
    parts = []
    spent, limit = body.get("spent_micros"), body.get("limit_micros")
    if _is_int(spent) and _is_int(limit):
        parts.append(f"{_dollars(spent)} of the {_dollars(limit)} limit has been used.")
    resets = _readable_time(body.get("resets_at"))
    if resets:
        parts.append(f"The limit resets at {resets}.")
    return " ".join(parts)


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _dollars(micros: int) -> str:
    return f"${micros / 1_000_000:,.2f}"


def _readable_time(value: Any) -> str:
    """An RFC 3339 time as ``2026-08-01 00:00 UTC``; other strings as given; else ``""``."""
    if not isinstance(value, str) or not value.strip():
        return ""
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return " ".join(value.split())[:64]
    if moment.tzinfo is None:
        return moment.strftime("%Y-%m-%d %H:%M")
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _describe_validations(value: Any) -> str:
    if not isinstance(value, list):
        return ""
    items = []
    for entry in value:
        if isinstance(entry, dict):
            field, detail = entry.get("field"), entry.get("detail")
            if isinstance(field, str) and isinstance(detail, str) and (field or detail):
                items.append(f"{field}: {detail}" if field else detail)
    return _as_sentence("Invalid fields: " + "; ".join(items)) if items else ""


def _as_sentence(value: Any) -> str:
    if not isinstance(value, str):
        return ""
    text = " ".join(value.split())
    if text and text[-1] not in ".!?":
        text += "."
    return text


def _truncate(text: str) -> str:
    if len(text) <= _MAX_MESSAGE_CHARS:
        return text
    return text[: _MAX_MESSAGE_CHARS - 1].rstrip() + "…"


def _secrets_of(response: httpx.Response) -> tuple[str, ...]:
    """The token (whole and secret half) sent with the request that got ``response``."""
    try:
        request = response.request
    except RuntimeError:  # a Response built without a request (tests, fakes)
        return ()
    token = request.headers.get(SESSION_HEADER, "")
    bearer = request.headers.get("Authorization", "")
    if bearer.lower().startswith("bearer "):
        token = token or bearer[7:].strip()
    return _split_secrets(token)


def _split_secrets(token: str) -> tuple[str, ...]:
    if not token:
        return ()
    secrets = [token]
    _, _, secret = token.partition("-")
    if len(secret) >= 8:
        secrets.append(secret)
    return tuple(secrets)


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        text = text.replace(secret, _REDACTED)
    return text


def _host_of(exc: httpx.HTTPError) -> str:
    try:
        host = exc.request.url.host
    except RuntimeError:
        return "the configured address"
    return host or "the configured address"
