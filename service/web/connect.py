"""The /connect page: every engineer connects their own Coder account (interface §6).

1. **Sign in** with GitHub or Linear (OAuth, ``state`` + PKCE): the provider says who
   the person is; its token is dropped at once.
2. **Connect Coder**: **Connect with Coder** (Coder's OAuth2 provider, PKCE) or a pasted
   **Coder token**, checked with ``GET /api/v2/users/me`` before it is stored
   (``service.accounts.connect``, which also resumes delegations waiting for them).
3. **Connected as …**: **Test connection**, **Disconnect**, the consent checkbox,
   **Sign out**.

Server-rendered HTML (Jinja2, autoescaped), no JavaScript. Every form carries the
session's CSRF token and must come from this origin; token submissions are limited per
session and per address; every answer says ``Cache-Control: no-store`` with a strict
Content-Security-Policy and no framing. A person only ever sees and changes the
connection of the identities they signed in with. No token, code or verifier is ever
put in a page, a URL, a log line or an error.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

import httpx
import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from service import metrics
from service.accounts import CoderTokens, connect, open_pair, resume_waiting
from service.coder.client import CoderClient
from service.coder.oauth2 import CoderOAuth
from service.config import Config
from service.core.events import Person
from service.errors import RemoteError, TokenRejected, VaultError
from service.logging import get_logger
from service.oauth import OAuthTokens
from service.store.base import Account, Identity, Store
from service.vault import Vault
from service.web.limits import SlidingWindow
from service.web.sessions import Identity as SignedIn, Session, Sessions

log = get_logger("service.web.connect")

TEMPLATES = Path(__file__).parent / "templates"
MAX_FORM_BYTES = 16 * 1024
#: Pasted tokens per minute, per session and per client address.
TOKEN_ATTEMPTS_PER_MINUTE = 5
PROVIDER_NAMES = {"github": "GitHub", "linear": "Linear"}


class SignIn(Protocol):
    """An identity provider's OAuth flow (``GitHubSignIn``, ``LinearSignIn``)."""

    async def authorize_url(self, *, state: str, challenge: str) -> str: ...

    async def identify(self, code: str, verifier: str) -> Person: ...


@dataclass
class ConnectPage:
    """The page and its form handlers. ``sign_in`` has the configured providers."""

    config: Config
    store: Store
    vault: Vault
    http: httpx.AsyncClient
    sessions: Sessions
    tokens: CoderTokens
    sign_in: Mapping[str, SignIn]
    coder_oauth: CoderOAuth | None = None
    clock: Callable[[], float] = time.time
    attempts: SlidingWindow = field(
        default_factory=lambda: SlidingWindow(TOKEN_ATTEMPTS_PER_MINUTE))
    env: jinja2.Environment = field(init=False)
    origin: str = field(init=False)
    css: str = field(init=False)

    def __post_init__(self) -> None:
        self.env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                                      autoescape=True, undefined=jinja2.StrictUndefined)
        self.origin = _origin(self.config.server.public_url)
        self.css = (TEMPLATES / "style.css").read_text()

    def routes(self) -> list[Route]:
        return [
            Route("/connect", self.page, methods=["GET"]),
            Route("/connect/style.css", self.style, methods=["GET"]),
            Route("/connect/{provider}/start", self.start, methods=["POST"]),
            Route("/connect/{provider}/callback", self.callback, methods=["GET"]),
            Route("/connect/token", self.save_token, methods=["POST"]),
            Route("/connect/test", self.test, methods=["POST"]),
            Route("/connect/disconnect", self.disconnect, methods=["POST"]),
            Route("/connect/others", self.allow_others, methods=["POST"]),
            Route("/connect/signout", self.sign_out, methods=["POST"]),
        ]

    # -- the page ----------------------------------------------------------------------
    async def page(self, request: Request) -> Response:
        session = self.sessions.read(request)
        account = await self._account(session)
        identities = [f"{PROVIDER_NAMES[p]} {who.name or who.id}"
                      for p, who in (("github", session.github), ("linear", session.linear))
                      if who is not None]
        html = self.env.get_template("connect.html").render(
            coder_url=self.config.coder.url, notice=session.notice, csrf=session.csrf,
            identities=identities, account=account, command=self.config.delegation.command,
            last_used=_when(account.last_used_at) if account else "",
            coder_oauth=self.coder_oauth is not None,
            sign_in=[{"key": key, "name": PROVIDER_NAMES[key],
                      "signed_in": getattr(session, key) is not None}
                     for key in self.sign_in])
        response = self._secure(HTMLResponse(html))
        self.sessions.write(response, replace(session, notice=""))
        return response

    async def style(self, _: Request) -> Response:
        return self._secure(Response(self.css, media_type="text/css"))

    # -- sign in, connect with Coder: OAuth flows ----------------------------------------
    async def start(self, request: Request) -> Response:
        provider = request.path_params["provider"]
        session, _, refused = await self._form(request)
        if refused is not None:
            return refused
        flow = self._flow(provider)
        if flow is None or (provider == "coder" and not session.signed_in):
            return await self._back(session, "That way of signing in is not set up here.")
        response = self._secure(RedirectResponse("/connect", status_code=303))
        state, challenge = self.sessions.start_flow(response, provider)
        response.headers["location"] = await flow.authorize_url(state=state,
                                                                challenge=challenge)
        self.sessions.write(response, session)
        return response

    async def callback(self, request: Request) -> Response:
        provider = request.path_params["provider"]
        session = self.sessions.read(request)
        flow = self._flow(provider)
        params = request.query_params
        verifier = self.sessions.finish_flow(request, provider, params.get("state"))
        if flow is None or verifier is None:
            self._count(provider, "bad_state")
            return self._secure(HTMLResponse(
                "<p>This sign-in link has expired or was already used. "
                '<a href="/connect">Start again</a>.</p>', status_code=400))
        if params.get("error") or not params.get("code"):
            self._count(provider, "declined")
            return await self._back(session, "Nothing changed: the sign-in was cancelled.",
                                    clear_flow=True)
        code = params["code"]
        try:
            if provider == "coder":
                notice = await self._connect_oauth(session, code, verifier)
            else:
                who = await flow.identify(code, verifier)  # type: ignore[union-attr]
                await self._join(session, provider, who)
                session = self.sessions.signed_in(session, provider,
                                                  SignedIn(who.id, who.login))
                notice = f"Signed in with {PROVIDER_NAMES[provider]} as {who.login or who.id}."
                self._count(provider, "ok")
        except RemoteError as exc:
            log.warning("connect_flow_failed", provider=provider, error=str(exc))
            self._count(provider, "failed")
            notice = f"That did not work: {exc.public or 'the provider did not answer'}."
        return await self._back(session, notice, clear_flow=True)

    async def _join(self, session: Session, provider: str, who: Person) -> None:
        """Signed in with a second tracker while already connected: that identity links
        to the same Coder account (and what waited for it resumes)."""
        account = await self._account(session)
        if account is None:
            return
        identity = (Identity("github", who.id, who.login) if provider == "github"
                    else Identity("linear", who.id))
        await self.store.add_identity(account.id, identity, now=self.clock())
        await resume_waiting(self.store, [identity], now=self.clock())

    async def _connect_oauth(self, session: Session, code: str, verifier: str) -> str:
        assert self.coder_oauth is not None
        pair = await self.coder_oauth.exchange(code, verifier)
        return await self._link(session, pair, method="oauth")

    # -- connect with a pasted token -------------------------------------------------------
    async def save_token(self, request: Request) -> Response:
        session, form, refused = await self._form(request)
        if refused is not None:
            return refused
        if not session.signed_in:
            return await self._back(session, "Sign in first, so the token is linked to you.")
        now = self.clock()
        address = request.client.host if request.client else "unknown"
        if not (self.attempts.allow(f"s:{session.sid}", now)
                and self.attempts.allow(f"a:{address}", now)):
            metrics.CODER_CONNECTIONS.labels("token", "rate_limited").inc()
            return self._secure(HTMLResponse(
                "<p>Too many tokens tried; wait a minute. "
                '<a href="/connect">Back</a>.</p>', status_code=429,
                headers={"Retry-After": "60"}))
        token = form.get("token", "").strip()
        if not token or len(token) > 512 or any(ch.isspace() for ch in token):
            return await self._back(session, "That does not look like a Coder token: paste "
                                             "it as one line, without spaces.")
        return await self._back(session, await self._link(session, token, method="token"))

    async def _link(self, session: Session, token: str | OAuthTokens, *, method: str) -> str:
        """Check the token with Coder, then store it for the signed-in identities."""
        access = token.access_token if isinstance(token, OAuthTokens) else token
        client = CoderClient(self.config.coder.url, access, http=self.http,
                             timeout=self.config.coder.timeout)
        try:
            user = await client.fetch_me()
        except TokenRejected:
            metrics.CODER_CONNECTIONS.labels(method, "rejected").inc()
            return ("Coder rejected that token (expired, revoked or mistyped); nothing was "
                    "stored. Create a new one and try again.")
        except RemoteError as exc:
            log.warning("connect_check_failed", error=str(exc))
            metrics.CODER_CONNECTIONS.labels(method, "failed").inc()
            return "Coder could not be asked about the token just now; nothing was stored."
        identities = []
        if session.github is not None:
            identities.append(Identity("github", session.github.id, session.github.name))
        if session.linear is not None:
            identities.append(Identity("linear", session.linear.id))
        _, resumed = await connect(self.store, self.vault, user=user, token=token,
                                   identities=identities, now=self.clock())
        metrics.CODER_CONNECTIONS.labels(method, "ok").inc()
        waiting = (f" {resumed} request{'s' if resumed != 1 else ''} waiting for you "
                   f"{'have' if resumed != 1 else 'has'} started." if resumed else "")
        return f"Connected as {user.username}.{waiting}"

    # -- the connection --------------------------------------------------------------------
    async def test(self, request: Request) -> Response:
        session, _, refused = await self._form(request)
        if refused is not None:
            return refused
        account = await self._account(session)
        if account is None:
            return await self._back(session, "No Coder account is connected.")
        try:
            token = await self.tokens.token_for(account)
            user = await CoderClient(self.config.coder.url, token, http=self.http,
                                     timeout=self.config.coder.timeout).fetch_me()
        except (TokenRejected, VaultError):
            await self.store.mark_token_invalid(account.id, ciphertext=account.ciphertext)
            metrics.CODER_CONNECTIONS.labels("test", "rejected").inc()
            return await self._back(session, "Coder rejected the stored token: connect "
                                             "again below.")
        except RemoteError as exc:
            log.warning("connect_test_failed", error=str(exc))
            metrics.CODER_CONNECTIONS.labels("test", "failed").inc()
            return await self._back(session, "Coder did not answer just now; try again.")
        await self.store.mark_token_used(account.id, now=self.clock())
        metrics.CODER_CONNECTIONS.labels("test", "ok").inc()
        return await self._back(session, f"Coder answered: connected as {user.username} on "
                                         f"{self.config.coder.url}.")

    async def disconnect(self, request: Request) -> Response:
        session, _, refused = await self._form(request)
        if refused is not None:
            return refused
        account = await self._account(session)
        if account is None:
            return await self._back(session, "No Coder account is connected.")
        if account.token_kind == "oauth" and self.coder_oauth is not None:
            try:
                await self.coder_oauth.revoke(open_pair(self.vault, account).refresh_token)
            except (RemoteError, VaultError) as exc:
                log.warning("coder_token_not_revoked", error=str(exc))
        await self.store.unlink(coder_username=account.coder_username)
        metrics.CODER_CONNECTIONS.labels("disconnect", "ok").inc()
        log.info("account_disconnected", coder_user=account.coder_username)
        return await self._back(session, "Disconnected: coder-bridge no longer holds a token "
                                         "of yours, and your issues no longer run as you.")

    async def allow_others(self, request: Request) -> Response:
        session, form, refused = await self._form(request)
        if refused is not None:
            return refused
        account = await self._account(session)
        if account is None:
            return await self._back(session, "No Coder account is connected.")
        allow = form.get("allow") == "on"
        await self.store.set_allow_others(coder_username=account.coder_username, allow=allow)
        return await self._back(session, "Others may now delegate your issues to your Coder "
                                         "account." if allow else "Only your own requests run "
                                         "on your Coder account now.")

    async def sign_out(self, request: Request) -> Response:
        _, _, refused = await self._form(request)
        if refused is not None:
            return refused
        response = self._secure(RedirectResponse("/connect", status_code=303))
        self.sessions.clear(response)
        return response

    # -- helpers ---------------------------------------------------------------------------
    def _flow(self, provider: str) -> SignIn | CoderOAuth | None:
        if provider == "coder":
            return self.coder_oauth
        return self.sign_in.get(provider)

    async def _account(self, session: Session) -> Account | None:
        """The Coder account linked to an identity this session proved."""
        for provider, who in (("github", session.github), ("linear", session.linear)):
            if who is not None:
                account = await self.store.find_account(provider, who.id)
                if account is not None:
                    return account
        return None

    async def _form(self, request: Request) -> tuple[Session, dict[str, str], Response | None]:
        """The session and the posted fields; a response when the post is refused (too
        large, from another origin, or without this session's CSRF token)."""
        session = self.sessions.read(request)
        length = request.headers.get("content-length", "0")
        if not length.isdigit() or int(length) > MAX_FORM_BYTES:
            return session, {}, self._secure(HTMLResponse("<p>Too large.</p>", 413))
        origin = request.headers.get("origin")
        if origin is not None and origin != self.origin:
            log.info("connect_origin_mismatch", origin=origin[:100])
            return session, {}, self._refused("origin")
        body = await request.body()
        fields = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        if not self.sessions.csrf_ok(session, fields.get("csrf")):
            return session, {}, self._refused("csrf")
        return session, fields, None

    def _refused(self, reason: str) -> Response:
        metrics.CONNECT_REFUSED.labels(reason).inc()
        log.warning("connect_form_refused", reason=reason)
        return self._secure(HTMLResponse(
            "<p>This form has expired or did not come from this page. "
            '<a href="/connect">Reload the page</a> and try again.</p>', status_code=403))

    async def _back(self, session: Session, notice: str, *, clear_flow: bool = False
                    ) -> Response:
        """Back to the page (303), showing ``notice`` once."""
        response = self._secure(RedirectResponse("/connect", status_code=303))
        if clear_flow:  # the end of a callback, whose URL carries the code
            response.headers["Referrer-Policy"] = "no-referrer"
            response.delete_cookie(self.sessions.flow_cookie, path="/",
                                   secure=self.sessions.secure, httponly=True, samesite="lax")
        self.sessions.write(response, replace(session, notice=notice))
        return response

    def _count(self, provider: str, outcome: str) -> None:
        if provider == "coder":
            metrics.CODER_CONNECTIONS.labels("oauth", outcome).inc()
        else:
            metrics.SIGN_INS.labels(provider, outcome).inc()

    def _secure(self, response: Response) -> Response:
        """No caching, no framing, nothing from elsewhere; forms post here, or to the
        providers this page signs in with."""
        targets = " ".join(sorted({_origin(url) for url in self._provider_urls()}))
        response.headers.update({
            "Cache-Control": "no-store",
            "Content-Security-Policy": (
                "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; "
                f"frame-ancestors 'none'; form-action 'self' {targets}".rstrip()),
            "X-Frame-Options": "DENY",
            "X-Content-Type-Options": "nosniff",
            # same-origin: the page's own forms carry their Origin (checked), links away
            # carry nothing; the callbacks, whose URL holds a code, answer no-referrer.
            "Referrer-Policy": "same-origin",
        })
        if self.sessions.secure:
            response.headers["Strict-Transport-Security"] = "max-age=31536000"
        return response

    def _provider_urls(self) -> list[str]:
        urls = []
        if "github" in self.sign_in and self.config.github is not None:
            urls.append(self.config.github.web_url)
        if "linear" in self.sign_in and self.config.linear is not None:
            urls.append(self.config.linear.web_url)
        if self.coder_oauth is not None:
            urls.append(self.config.coder.url)
        return urls


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "never"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M UTC")
