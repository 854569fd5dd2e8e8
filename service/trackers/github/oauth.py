"""Sign in with GitHub: learn, from GitHub itself, which GitHub user is at the keyboard
(reference oauth.md §2).

The OAuth web flow of an OAuth App (or of the GitHub App's client): ``authorize_url``
with ``state`` and PKCE S256 and no scope (public profile only), then ``identify``
exchanges the code (``Accept: application/json``; errors come with HTTP 200),
asks ``GET /user`` for the numeric id, and revokes the token at once: it is not
needed again (``DELETE /applications/{client_id}/token``, best effort).
"""

from __future__ import annotations

from urllib.parse import urlencode

import httpx

from service.core.events import Person
from service.errors import RemoteError, TokenRejected
from service.logging import get_logger
from service.oauth import token_answer, transport_error

log = get_logger("service.trackers.github")
SERVICE = "github"
WHAT = "signing in with GitHub"


class GitHubSignIn:
    """GitHub's OAuth web flow for one client. ``web_url`` is where people sign in
    (``https://github.com``, or a GitHub Enterprise host); ``api_url`` the REST API."""

    def __init__(self, *, web_url: str, api_url: str, client_id: str, client_secret: str,
                 redirect_uri: str, http: httpx.AsyncClient, timeout: float = 15.0) -> None:
        self._web = web_url.rstrip("/")
        self._api = api_url.rstrip("/")
        self._client_id = client_id
        self._secret = client_secret
        self.redirect_uri = redirect_uri
        self._http = http
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"GitHubSignIn(web_url={self._web!r}, client_id={self._client_id!r})"

    async def authorize_url(self, *, state: str, challenge: str) -> str:
        query = urlencode({"client_id": self._client_id, "redirect_uri": self.redirect_uri,
                           "state": state, "code_challenge": challenge,
                           "code_challenge_method": "S256", "allow_signup": "false"})
        return f"{self._web}/login/oauth/authorize?{query}"

    async def identify(self, code: str, verifier: str) -> Person:
        """The GitHub user who approved (numeric id as text, login)."""
        try:
            response = await self._http.post(
                f"{self._web}/login/oauth/access_token",
                json={"client_id": self._client_id, "client_secret": self._secret,
                      "code": code, "redirect_uri": self.redirect_uri,
                      "code_verifier": verifier},
                headers={"Accept": "application/json"}, timeout=self._timeout)
            body = token_answer(response, service=SERVICE, what=WHAT)
            token = body.get("access_token")
            if not isinstance(token, str) or not token:
                raise RemoteError(SERVICE, f"{WHAT}: the answer carries no token")
            user = await self._http.get(f"{self._api}/user", timeout=self._timeout, headers={
                "Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": "2022-11-28"})
        except httpx.HTTPError as exc:
            raise transport_error(exc, service=SERVICE, what=WHAT) from None
        await self._drop(token)
        data = user.json() if user.status_code == 200 else None
        if user.status_code == 401:
            raise TokenRejected(SERVICE, f"{WHAT}: GitHub rejected its own token")
        if not isinstance(data, dict) or not isinstance(data.get("id"), int):
            raise RemoteError(SERVICE, f"{WHAT}: GET /user answered HTTP {user.status_code}")
        return Person(str(data["id"]), str(data.get("login") or ""))

    async def _drop(self, token: str) -> None:
        """Revoke the sign-in token: the bridge keeps no GitHub token of the person."""
        try:
            response = await self._http.request(
                "DELETE", f"{self._api}/applications/{self._client_id}/token",
                json={"access_token": token}, auth=httpx.BasicAuth(self._client_id,
                                                                     self._secret),
                headers={"Accept": "application/vnd.github+json"}, timeout=self._timeout)
            if response.status_code not in (204, 404):
                log.warning("github_sign_in_token_not_revoked", status=response.status_code)
        except httpx.HTTPError as exc:
            log.warning("github_sign_in_token_not_revoked", error=type(exc).__name__)
