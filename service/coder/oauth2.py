"""Coder's OAuth2 provider: "Connect with Coder" (reference oauth.md §4).

Authorization code with PKCE S256 (mandatory on Coder) for a confidential client:
``authorize_url`` sends the person to Coder's consent page, ``exchange`` turns the
code into an access and a refresh token, ``refresh`` renews them (both change),
``revoke`` ends them. The client authenticates with HTTP Basic
(``client_secret_basic``), never with the secret in a URL. Endpoints come from the
deployment's discovery document (``/.well-known/oauth-authorization-server``), read
once; a deployment without it (older, or the provider switched off: 404) uses the
documented paths. ``offered`` says whether the provider is on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import httpx

from service.errors import RemoteError
from service.oauth import OAuthTokens, token_answer, transport_error

DISCOVERY = "/.well-known/oauth-authorization-server"
DEFAULT_ENDPOINTS = {"authorization_endpoint": "/oauth2/authorize",
                     "token_endpoint": "/oauth2/tokens",
                     "revocation_endpoint": "/oauth2/revoke"}
SERVICE = "coder"


class CoderOAuth:
    """The bridge as an OAuth2 client of one Coder deployment."""

    def __init__(self, coder_url: str, client_id: str, client_secret: str, *,
                 redirect_uri: str, http: httpx.AsyncClient, timeout: float = 15.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._url = coder_url.rstrip("/")
        self._client_id = client_id
        self._secret = client_secret
        self.redirect_uri = redirect_uri
        self._http = http
        self._timeout = timeout
        self._clock = clock
        self._endpoints: dict[str, str] | None = None

    def __repr__(self) -> str:
        return f"CoderOAuth(coder_url={self._url!r}, client_id={self._client_id!r})"

    async def authorize_url(self, *, state: str, challenge: str) -> str:
        """Where the person approves the connection on Coder (no scope: the app's, which
        the Tasks and Chats APIs need; there is no narrower one)."""
        query = urlencode({"client_id": self._client_id, "response_type": "code",
                           "redirect_uri": self.redirect_uri, "state": state,
                           "code_challenge": challenge, "code_challenge_method": "S256"})
        return f"{await self._endpoint('authorization_endpoint')}?{query}"

    async def exchange(self, code: str, verifier: str) -> OAuthTokens:
        """The token pair for an authorization code (``TokenRejected``: expired or used)."""
        return await self._tokens({"grant_type": "authorization_code", "code": code,
                                   "redirect_uri": self.redirect_uri,
                                   "code_verifier": verifier}, "connecting with Coder")

    async def refresh(self, refresh_token: str) -> OAuthTokens:
        """A new pair for the refresh token (``TokenRejected``: the person must connect
        again)."""
        return await self._tokens({"grant_type": "refresh_token",
                                   "refresh_token": refresh_token}, "renewing the Coder token")

    async def revoke(self, token: str) -> None:
        """End a token (and the pair it belongs to). Best effort: Coder answers 200 also
        for a token it does not know; anything else is raised for the log."""
        url = await self._endpoint("revocation_endpoint")
        try:
            response = await self._http.post(url, data={"token": token}, auth=self._auth(),
                                             timeout=self._timeout)
        except httpx.HTTPError as exc:
            raise transport_error(exc, service=SERVICE, what="revoking the Coder token") from None
        if response.status_code != 200:
            token_answer(response, service=SERVICE, what="revoking the Coder token")

    async def offered(self) -> bool:
        """Whether the deployment serves its OAuth2 provider (discovery answers 200)."""
        try:
            response = await self._http.get(self._url + DISCOVERY, timeout=self._timeout)
        except httpx.HTTPError as exc:
            raise transport_error(exc, service=SERVICE, what="asking Coder about OAuth2") from None
        return response.status_code == 200

    async def _tokens(self, form: dict[str, str], what: str) -> OAuthTokens:
        url = await self._endpoint("token_endpoint")
        try:
            response = await self._http.post(url, data=form, auth=self._auth(),
                                             headers={"Accept": "application/json"},
                                             timeout=self._timeout)
        except httpx.HTTPError as exc:
            raise transport_error(exc, service=SERVICE, what=what) from None
        body = token_answer(response, service=SERVICE, what=what)
        access, refresh = body.get("access_token"), body.get("refresh_token")
        if not isinstance(access, str) or not access or not isinstance(refresh, str):
            raise RemoteError(SERVICE, f"{what}: the answer carries no token pair")
        expires_in = body.get("expires_in")
        expires_at = (self._clock() + float(expires_in)
                      if isinstance(expires_in, int | float) and expires_in > 0 else None)
        return OAuthTokens(access, refresh, expires_at)

    async def _endpoint(self, name: str) -> str:
        if self._endpoints is None:
            self._endpoints = await self._discover()
        return self._endpoints[name]

    async def _discover(self) -> dict[str, str]:
        """The endpoints from discovery, else the documented paths."""
        found: dict[str, Any] = {}
        try:
            response = await self._http.get(self._url + DISCOVERY, timeout=self._timeout)
            if response.status_code == 200 and isinstance(response.json(), dict):
                found = response.json()
        except (httpx.HTTPError, ValueError):
            found = {}
        # Only endpoints on the deployment itself: the client secret goes nowhere else.
        return {name: value if isinstance(value := found.get(name), str)
                and value.startswith(self._url + "/") else self._url + path
                for name, path in DEFAULT_ENDPOINTS.items()}

    def _auth(self) -> httpx.BasicAuth:
        return httpx.BasicAuth(self._client_id, self._secret)
