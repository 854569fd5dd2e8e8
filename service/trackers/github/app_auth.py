"""GitHub App authentication: App JWT → installation token, cached per installation.

``AppAuth`` implements ``GitHubAuth`` (and ``GitHubAppCredential``) for
``GitHubClient``:

- the App JWT is signed RS256 with the App's private key, ``iat = now - 60``,
  ``exp = now + 540``, ``iss = app id``; a fresh one for every call made with it;
- ``POST /app/installations/{id}/access_tokens`` gives an installation token
  (valid one hour); it is cached per installation and renewed five minutes
  before its ``expires_at``, or at once after ``invalidate`` (a 401);
- concurrent callers asking for the same installation share one exchange;
- a repository hook carries no installation id: ``installation_for`` finds it
  with ``GET /repos/{owner}/{repo}/installation``, cached per repository;
- ``check`` verifies the App itself with ``GET /app``;
- ``hook_deliveries`` and ``redeliver`` read the App webhook's delivery history and ask
  for a delivery again (``service.trackers.github.redelivery`` decides which).

Neither the private key nor any token appears in a message or a ``repr``.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from service.errors import NotFound, PermanentError, TokenRejected, TransientError
from service.trackers.github.api import (
    MAX_PAGES,
    PER_PAGE,
    SERVICE,
    decipher_github_response,
    github_headers,
    next_page,
    transport_error,
)

JWT_BACKDATE = 60
JWT_LIFETIME = 540
REFRESH_MARGIN = 300.0
_REPOSITORY_RE = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")
_REJECTED = (
    "GitHub rejected the GitHub App's credentials: the App id or private key is wrong "
    "(or this machine's clock is far off)"
)


@dataclass(frozen=True, slots=True)
class _InstallationToken:
    value: str = field(repr=False)
    expires_at: float


def load_app_private_key(private_key_pem: str) -> rsa.RSAPrivateKey:
    """Parse the App's PEM private key (RSA, no passphrase); ``ValueError`` if unusable.

    A key whose line breaks were written as ``\\n`` (common in environment
    variables) is accepted. The message never contains the key.
    """
    pem = private_key_pem.strip()
    if "\n" not in pem and "\\n" in pem:
        pem = pem.replace("\\n", "\n")
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError(
            "the GitHub App private key is not a PEM private key without a passphrase"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("the GitHub App private key must be an RSA key")
    return key


class AppAuth:
    """A GitHub App credential for ``GitHubClient`` (``GitHubAuth`` + ``GitHubAppCredential``).

    ``api_url`` is the REST root (``https://api.github.com`` or
    ``https://HOST/api/v3``); ``app_id`` the App's numeric id;
    ``private_key_pem`` its private key (``ValueError`` if it cannot be used);
    ``http`` is owned by the caller; ``clock`` returns Unix time (JWT claims,
    token expiry). Raises ``RemoteError`` subclasses from its calls to GitHub.
    """

    def __init__(
        self,
        api_url: str,
        app_id: int,
        private_key_pem: str,
        *,
        http: httpx.AsyncClient,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(app_id, bool) or not isinstance(app_id, int) or app_id < 1:
            raise ValueError("a GitHub App id is a positive integer")
        self._api_url = api_url.rstrip("/")
        self._app_id = app_id
        self._key = load_app_private_key(private_key_pem)
        self._http = http
        self._clock = clock
        self._tokens: dict[int, _InstallationToken] = {}
        self._installations: dict[str, int] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    def __repr__(self) -> str:
        return f"AppAuth(api_url={self._api_url!r}, app_id={self._app_id})"

    @property
    def app_id(self) -> int:
        """The App's numeric id (its comments carry it in ``performed_via_github_app``)."""
        return self._app_id

    __str__ = __repr__

    # -- GitHubAuth -------------------------------------------------------------

    async def authorization(self, installation_id: int | None) -> str:
        """``Bearer <installation token>``, exchanged or taken from the cache.

        ``None`` is refused (``PermanentError``): an App acts through an
        installation (``GitHubClient`` resolves it by repository first).
        """
        if installation_id is None:
            raise PermanentError(
                SERVICE, "a GitHub App can only act through an installation, and none was given"
            )
        return f"Bearer {await self._installation_token(installation_id)}"

    async def invalidate(self, installation_id: int | None) -> None:
        """Drop the cached token of this installation; the next call exchanges a new one."""
        if installation_id is not None:
            self._tokens.pop(installation_id, None)

    # -- GitHubAppCredential -------------------------------------------------------

    async def installation_for(self, repository: str) -> int:
        """The App's installation id on ``repository`` (``owner/repo``), cached per repository.

        Raises ``PermanentError`` "the GitHub App is not installed on owner/repo"
        on a 404, ``TokenRejected`` when the App's JWT is refused.
        """
        if not _REPOSITORY_RE.fullmatch(repository) or {".", ".."} & set(repository.split("/")):
            raise ValueError(f"not a repository full name: {repository!r}")
        key = repository.lower()
        if key in self._installations:
            return self._installations[key]
        async with self._lock("repository", key):
            if key not in self._installations:
                self._installations[key] = await self._lookup_installation(repository)
            return self._installations[key]

    async def installations(self) -> list[int]:
        """The ids of the App's installations (``GET /app/installations``, with the JWT,
        every page)."""
        ids: list[int] = []
        url: str | None = f"{self._api_url}/app/installations?per_page={PER_PAGE}"
        for _ in range(MAX_PAGES):
            if url is None:
                break
            data, response = await self._app_send("GET", url)
            items = data if isinstance(data, list) else []
            ids += [int(i["id"]) for i in items
                    if isinstance(i, dict) and isinstance(i.get("id"), int)]
            url = next_page(response, self._api_url)
        return ids

    async def hook_deliveries(self, *, since: float, max_pages: int) -> list[dict[str, Any]]:
        """``GET /app/hook/deliveries`` (newest first, cursor pagination in ``Link``) until
        an item delivered before ``since`` or ``max_pages`` pages."""
        found: list[dict[str, Any]] = []
        url: str | None = f"{self._api_url}/app/hook/deliveries?per_page={PER_PAGE}"
        for _ in range(max_pages):
            if url is None:
                break
            data, response = await self._app_send("GET", url)
            items = [i for i in data if isinstance(i, dict)] if isinstance(data, list) else []
            recent = [i for i in items if _delivered_at(i) >= since]
            found += recent
            url = next_page(response, self._api_url) if len(recent) == len(items) else None
        return found

    async def redeliver(self, delivery_id: int) -> None:
        """``POST /app/hook/deliveries/{id}/attempts`` (GitHub answers 202)."""
        await self._app_call("POST", f"/app/hook/deliveries/{delivery_id}/attempts")

    async def check(self) -> str:
        """Verify the App id and private key with ``GET /app``; e.g. ``GitHub App my-app …``."""
        data = await self._app_call("GET", "/app")
        slug = data.get("slug") if isinstance(data, dict) else None
        name = data.get("name") if isinstance(data, dict) else None
        if not isinstance(slug, str):
            raise TransientError(SERVICE, "GitHub's answer about the App carries no slug")
        label = f"{slug} ({name})" if isinstance(name, str) and name != slug else slug
        return f"GitHub App {label} accepted (app id {self._app_id})"

    # -- JWT --------------------------------------------------------------------

    def app_jwt(self) -> str:
        """A new App JWT: RS256, ``iat = now - 60``, ``exp = now + 540``, ``iss = app id``."""
        now = int(self._clock())
        claims = {"iat": now - JWT_BACKDATE, "exp": now + JWT_LIFETIME, "iss": str(self._app_id)}
        return jwt.encode(claims, self._key, algorithm="RS256")

    # -- internals ----------------------------------------------------------------

    def _lock(self, kind: str, key: str) -> asyncio.Lock:
        return self._locks.setdefault((kind, key), asyncio.Lock())

    def _cached(self, installation_id: int) -> str | None:
        """The cached token if it is valid for more than ``REFRESH_MARGIN`` seconds."""
        token = self._tokens.get(installation_id)
        if token is None or self._clock() >= token.expires_at - REFRESH_MARGIN:
            return None
        return token.value

    async def _installation_token(self, installation_id: int) -> str:
        """The cached token, else one exchange shared by concurrent callers."""
        cached = self._cached(installation_id)
        if cached is not None:
            return cached
        async with self._lock("installation", str(installation_id)):
            cached = self._cached(installation_id)
            if cached is not None:
                return cached
            token = await self._exchange(installation_id)
            self._tokens[installation_id] = token
            return token.value

    async def _exchange(self, installation_id: int) -> _InstallationToken:
        """``POST /app/installations/{id}/access_tokens`` → the token and its expiry."""
        path = f"/app/installations/{installation_id}/access_tokens"
        try:
            data = await self._app_call("POST", path)
        except NotFound:
            self._forget_installation(installation_id)
            raise PermanentError(
                SERVICE,
                f"the GitHub App installation {installation_id} does not exist "
                "(was the App uninstalled?)",
                status=404,
            ) from None
        return _parse_token(data)

    async def _lookup_installation(self, repository: str) -> int:
        try:
            data = await self._app_call("GET", f"/repos/{repository}/installation")
        except NotFound:
            raise PermanentError(
                SERVICE, f"the GitHub App is not installed on {repository}", status=404
            ) from None
        installation = data.get("id") if isinstance(data, dict) else None
        if isinstance(installation, bool) or not isinstance(installation, int):
            raise TransientError(SERVICE, "GitHub's answer about the installation carries no id")
        return installation

    def _forget_installation(self, installation_id: int) -> None:
        """Drop every cached fact about an installation that no longer exists."""
        self._tokens.pop(installation_id, None)
        for repository, known in list(self._installations.items()):
            if known == installation_id:
                del self._installations[repository]

    async def _app_call(self, method: str, path: str) -> Any:
        """One request authenticated as the App (a fresh JWT); a 401 → ``TokenRejected``."""
        data, _ = await self._app_send(method, f"{self._api_url}{path}")
        return data

    async def _app_send(self, method: str, url: str) -> tuple[Any, httpx.Response]:
        """``_app_call`` for a full URL (a next page); the data and the response."""
        headers = github_headers(f"Bearer {self.app_jwt()}")
        try:
            response = await self._http.request(method, url, headers=headers,
                                                follow_redirects=False)
        except httpx.HTTPError as exc:
            raise transport_error(exc) from None
        try:
            return decipher_github_response(response, now=self._clock()), response
        except TokenRejected:
            raise TokenRejected(SERVICE, _REJECTED, status=response.status_code) from None


def _delivered_at(item: dict[str, Any]) -> float:
    """A hook delivery's ``delivered_at`` in UNIX seconds (0 when unreadable)."""
    try:
        return datetime.fromisoformat(str(item.get("delivered_at"))).timestamp()
    except ValueError:
        return 0.0


def _parse_token(data: Any) -> _InstallationToken:
    """``{token, expires_at}`` of a 201 answer; ``TransientError`` if either is unusable."""
    token = data.get("token") if isinstance(data, dict) else None
    expires = data.get("expires_at") if isinstance(data, dict) else None
    if not isinstance(token, str) or not token or not isinstance(expires, str):
        raise TransientError(SERVICE, "GitHub's installation token answer is incomplete")
    try:
        when = datetime.fromisoformat(expires)
    except ValueError:
        raise TransientError(
            SERVICE, "GitHub's installation token answer has an unreadable expiry"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # GitHub sends UTC ("…Z")
    return _InstallationToken(token, when.timestamp())


__all__ = [
    "JWT_BACKDATE",
    "JWT_LIFETIME",
    "REFRESH_MARGIN",
    "AppAuth",
    "load_app_private_key",
]
