"""The wire of OAuth token endpoints, shared by GitHub and Linear sign-in and Coder's
OAuth2 provider (reference oauth.md §2.5-2.6, §3.2, §4.4).

``token_answer`` turns a token-endpoint response into its JSON object or a typed
error. GitHub answers errors with HTTP 200 and an ``error`` key; Linear and Coder with
4xx and ``{"error", "error_description"}``; Coder's server failures may come as its
plain ``{"message", "detail"}`` body. The class never depends on the text: a refused
grant (a code expired or used twice, a refresh token no longer valid) is
``TokenRejected``; refused client credentials a ``PermanentError`` that names the
bridge's own configuration; 429 ``RateLimited``; 5xx and unreadable answers
``TransientError``. Codes, verifiers and tokens never reach a message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from service.errors import PermanentError, RateLimited, TokenRejected, TransientError
from service.http import parse_retry_after


@dataclass(frozen=True)
class OAuthTokens:
    """A token pair from Coder's OAuth2 provider; ``expires_at`` in UNIX seconds."""

    access_token: str
    refresh_token: str
    expires_at: float | None


#: ``error`` values that mean "this grant is no longer good": start the flow again.
GRANT_ERRORS = frozenset({"invalid_grant", "bad_verification_code", "bad_refresh_token"})
#: ``error`` values that mean the bridge's client id or secret is wrong.
CLIENT_ERRORS = frozenset({"invalid_client", "incorrect_client_credentials",
                           "unauthorized_client", "redirect_uri_mismatch"})


def token_answer(response: httpx.Response, *, service: str, what: str) -> dict[str, Any]:
    """The JSON object of a successful token-endpoint answer, else the typed error.
    ``what`` names the exchange in messages (``signing in with GitHub``)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    status = response.status_code
    if status == 429:
        raise RateLimited(service, f"{what}: rate limited", status=status,
                          retry_after=parse_retry_after(response.headers.get("Retry-After")))
    if status >= 500:
        raise TransientError(service, f"{what}: the server failed (HTTP {status})",
                             status=status)
    if isinstance(error, str) and error:
        detail = body.get("error_description") if isinstance(body, dict) else None
        message = f"{what}: {error}" + (f" ({detail})" if isinstance(detail, str) else "")
        if error in GRANT_ERRORS:
            raise TokenRejected(service, message, status=status,
                                public="the sign-in expired or was already used; start again")
        if error in CLIENT_ERRORS:
            raise PermanentError(service, message, status=status,
                                 public="coder-bridge's sign-in is misconfigured; its "
                                        "operators must check the OAuth client settings")
        raise PermanentError(service, message, status=status,
                             public="the sign-in was refused; start again")
    if not 200 <= status < 300 or not isinstance(body, dict):
        raise TransientError(service, f"{what}: unexpected answer (HTTP {status})",
                             status=status)
    return body


def transport_error(exc: httpx.HTTPError, *, service: str, what: str) -> TransientError:
    """A request that got no answer (its text may echo the URL: never shown)."""
    return TransientError(service, f"{what}: no answer ({type(exc).__name__})")
