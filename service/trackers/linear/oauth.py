"""Sign in with Linear: learn, from Linear itself, which Linear user is at the keyboard
(reference oauth.md §3).

``authorize_url`` (``actor=user``, ``scope=read``, ``state``, PKCE S256) on
``linear.web_url``; ``identify`` exchanges the code at ``/oauth/token`` on the API's
host (form-encoded), asks GraphQL ``viewer`` for the user's id, and revokes the token
(``/oauth/revoke``, best effort): the bridge keeps no Linear token of the person.
"""

from __future__ import annotations

from urllib.parse import urlencode, urlsplit

import httpx

from service.core.events import Person
from service.errors import RemoteError, TokenRejected
from service.logging import get_logger
from service.oauth import token_answer, transport_error

log = get_logger("service.trackers.linear")
SERVICE = "linear"
WHAT = "signing in with Linear"
VIEWER = "query { viewer { id name email organization { id } } }"


class LinearSignIn:
    """Linear's OAuth flow for one application. ``api_url`` is the GraphQL endpoint;
    the token endpoints live on its host."""

    def __init__(self, *, web_url: str, api_url: str, client_id: str, client_secret: str,
                 redirect_uri: str, http: httpx.AsyncClient, timeout: float = 15.0) -> None:
        parts = urlsplit(api_url)
        self._web = web_url.rstrip("/")
        self._graphql = api_url
        self._oauth = f"{parts.scheme}://{parts.netloc}/oauth"
        self._client_id = client_id
        self._secret = client_secret
        self.redirect_uri = redirect_uri
        self._http = http
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"LinearSignIn(web_url={self._web!r}, client_id={self._client_id!r})"

    async def authorize_url(self, *, state: str, challenge: str) -> str:
        query = urlencode({"client_id": self._client_id, "redirect_uri": self.redirect_uri,
                           "response_type": "code", "scope": "read", "actor": "user",
                           "state": state, "code_challenge": challenge,
                           "code_challenge_method": "S256"})
        return f"{self._web}/oauth/authorize?{query}"

    async def identify(self, code: str, verifier: str) -> Person:
        """The Linear user who approved (id, display name)."""
        try:
            response = await self._http.post(
                f"{self._oauth}/token",
                data={"grant_type": "authorization_code", "code": code,
                      "redirect_uri": self.redirect_uri, "client_id": self._client_id,
                      "client_secret": self._secret, "code_verifier": verifier},
                timeout=self._timeout)
            body = token_answer(response, service=SERVICE, what=WHAT)
            token = body.get("access_token")
            if not isinstance(token, str) or not token:
                raise RemoteError(SERVICE, f"{WHAT}: the answer carries no token")
            answer = await self._http.post(self._graphql, json={"query": VIEWER},
                                           headers={"Authorization": f"Bearer {token}"},
                                           timeout=self._timeout)
        except httpx.HTTPError as exc:
            raise transport_error(exc, service=SERVICE, what=WHAT) from None
        await self._drop(token)
        if answer.status_code == 401:
            raise TokenRejected(SERVICE, f"{WHAT}: Linear rejected its own token")
        try:
            viewer = answer.json()["data"]["viewer"]
            return Person(str(viewer["id"]), str(viewer.get("name") or ""))
        except (ValueError, KeyError, TypeError):
            raise RemoteError(SERVICE, f"{WHAT}: viewer answered HTTP {answer.status_code}") \
                from None

    async def _drop(self, token: str) -> None:
        try:
            response = await self._http.post(f"{self._oauth}/revoke",
                                             headers={"Authorization": f"Bearer {token}"},
                                             timeout=self._timeout)
            if response.status_code != 200:
                log.warning("linear_sign_in_token_not_revoked", status=response.status_code)
        except httpx.HTTPError as exc:
            log.warning("linear_sign_in_token_not_revoked", error=type(exc).__name__)
