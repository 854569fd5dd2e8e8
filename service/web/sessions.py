"""Sessions of the /connect page, OAuth flow state, PKCE and CSRF tokens.

A session is a signed cookie (HS256 JWT, key derived from the first encryption key):
who signed in (GitHub and/or Linear identity), a CSRF token that every form must send
back, a one-time notice for the next page, and its expiry (12 hours from sign-in).
It holds no token and no secret: a stolen cookie lets one act as that person on the
page only until it expires. The OAuth flow state lives in a second, short cookie
(10 minutes): the provider, ``state`` (128 bits, compared in constant time) and the
PKCE verifier, each usable once (``FlowGuard`` remembers the states already used).

Cookies are ``HttpOnly``, ``SameSite=Lax`` (the provider's redirect back is a
cross-site navigation that ``Strict`` would strip), ``Path=/`` and, when the page is
served over https, ``Secure`` with the ``__Host-`` prefix.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import jwt
from starlette.requests import Request
from starlette.responses import Response

SESSION_SECONDS = 12 * 3600
FLOW_SECONDS = 600
_ALGORITHM = "HS256"


def new_state() -> str:
    """An OAuth ``state``: 128 bits from the system's CSPRNG."""
    return secrets.token_urlsafe(16)


def pkce_pair() -> tuple[str, str]:
    """(verifier, S256 challenge): a 64-character verifier from the unreserved alphabet
    and the base64url SHA-256 of it, unpadded (RFC 7636)."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class Identity:
    """A tracker account the person proved with a sign-in: ``id`` and a name to show."""

    id: str
    name: str


@dataclass(frozen=True)
class Session:
    """One browser's session. ``github``/``linear``: who signed in there."""

    sid: str
    csrf: str
    expires_at: float
    github: Identity | None = None
    linear: Identity | None = None
    notice: str = ""

    @property
    def signed_in(self) -> bool:
        return self.github is not None or self.linear is not None


@dataclass
class Sessions:
    """Reads and writes session and flow cookies; ``secure`` when served over https."""

    key: bytes
    secure: bool
    clock: Callable[[], float] = time.time
    used_states: dict[str, float] = field(default_factory=dict)

    @property
    def session_cookie(self) -> str:
        return "__Host-coder-bridge" if self.secure else "coder-bridge-session"

    @property
    def flow_cookie(self) -> str:
        return "__Host-coder-bridge-flow" if self.secure else "coder-bridge-flow"

    # -- sessions ------------------------------------------------------------------
    def read(self, request: Request) -> Session:
        """The request's session, or a new anonymous one (expired, forged or none)."""
        claims = self._decode(request.cookies.get(self.session_cookie), "session")
        if claims is None:
            return self.new()
        return Session(sid=str(claims["sid"]), csrf=str(claims["csrf"]),
                       expires_at=float(claims["exp"]),
                       github=_identity(claims.get("gh")), linear=_identity(claims.get("ln")),
                       notice=str(claims.get("notice", "")))

    def new(self) -> Session:
        return Session(sid=secrets.token_urlsafe(16), csrf=secrets.token_urlsafe(24),
                       expires_at=self.clock() + SESSION_SECONDS)

    def signed_in(self, session: Session, provider: str, who: Identity) -> Session:
        """``session`` with one more proven identity: a new id and CSRF token (no
        fixation), 12 hours from now."""
        renewed = replace(session, sid=secrets.token_urlsafe(16),
                          csrf=secrets.token_urlsafe(24),
                          expires_at=self.clock() + SESSION_SECONDS)
        if provider == "github":
            return replace(renewed, github=who)
        return replace(renewed, linear=who)

    def write(self, response: Response, session: Session) -> None:
        claims: dict[str, Any] = {"use": "session", "sid": session.sid, "csrf": session.csrf,
                                  "exp": int(session.expires_at)}
        for key, who in (("gh", session.github), ("ln", session.linear)):
            if who is not None:
                claims[key] = {"id": who.id, "name": who.name}
        if session.notice:
            claims["notice"] = session.notice
        self._set(response, self.session_cookie, claims,
                  max(1, int(session.expires_at - self.clock())))

    def clear(self, response: Response) -> None:
        for name in (self.session_cookie, self.flow_cookie):
            response.delete_cookie(name, path="/", secure=self.secure, httponly=True,
                                   samesite="lax")

    @staticmethod
    def csrf_ok(session: Session, sent: object) -> bool:
        """Whether a form sent back this session's CSRF token."""
        return isinstance(sent, str) and hmac.compare_digest(sent.encode(),
                                                             session.csrf.encode())

    # -- OAuth flows ----------------------------------------------------------------
    def start_flow(self, response: Response, provider: str) -> tuple[str, str]:
        """Begin a flow: (state, PKCE challenge); the state and verifier go into the flow
        cookie."""
        state = new_state()
        verifier, challenge = pkce_pair()
        self._set(response, self.flow_cookie,
                  {"use": "flow", "p": provider, "s": state, "v": verifier,
                   "exp": int(self.clock() + FLOW_SECONDS)}, FLOW_SECONDS)
        return state, challenge

    def finish_flow(self, request: Request, provider: str, state: str | None) -> str | None:
        """The PKCE verifier if ``state`` is this browser's pending flow for
        ``provider``, unused and not expired; else None. A state works once."""
        claims = self._decode(request.cookies.get(self.flow_cookie), "flow")
        now = self.clock()
        self.used_states = {s: t for s, t in self.used_states.items() if t > now}
        if (claims is None or state is None or claims.get("p") != provider
                or not hmac.compare_digest(str(claims.get("s", "")).encode(), state.encode())
                or state in self.used_states):
            return None
        self.used_states[state] = now + FLOW_SECONDS
        return str(claims["v"])

    # -- cookies ---------------------------------------------------------------------
    def _set(self, response: Response, name: str, claims: dict[str, Any], max_age: int) -> None:
        value = jwt.encode(claims, self.key, algorithm=_ALGORITHM)
        response.set_cookie(name, value, max_age=max_age, path="/", secure=self.secure,
                            httponly=True, samesite="lax")

    def _decode(self, value: str | None, use: str) -> dict[str, Any] | None:
        if not value:
            return None
        try:
            claims = jwt.decode(value, self.key, algorithms=[_ALGORITHM],
                                options={"require": ["exp"]}, leeway=0)
        except jwt.InvalidTokenError:
            return None
        if claims.get("use") != use or float(claims["exp"]) <= self.clock():
            return None
        return claims


def _identity(value: Any) -> Identity | None:
    if isinstance(value, dict) and isinstance(value.get("id"), str):
        return Identity(value["id"], str(value.get("name", "")))
    return None
