"""Sessions of /connect: signed cookies, expiry, OAuth state and PKCE, CSRF."""

from __future__ import annotations

import base64
import hashlib
import re

import jwt
from starlette.requests import Request
from starlette.responses import Response

from service.web.sessions import (
    FLOW_SECONDS,
    SESSION_SECONDS,
    Identity,
    Sessions,
    new_state,
    pkce_pair,
)

KEY = b"k" * 32


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def request_with(cookies: dict[str, str]) -> Request:
    header = "; ".join(f"{k}={v}" for k, v in cookies.items())
    return Request({"type": "http", "method": "GET", "path": "/connect",
                    "headers": [(b"cookie", header.encode())] if header else []})


def cookies_of(response: Response) -> dict[str, str]:
    found = {}
    for name, value in response.raw_headers:
        if name == b"set-cookie":
            text = value.decode()
            key, _, rest = text.partition("=")
            found[key] = rest.split(";", 1)[0]
            found[f"{key}:flags"] = text
    return found


def test_pkce_and_state_are_fresh_and_well_formed() -> None:
    verifier, challenge = pkce_pair()
    assert re.fullmatch(r"[A-Za-z0-9_-]{43,128}", verifier)
    digest = hashlib.sha256(verifier.encode()).digest()
    assert challenge == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert pkce_pair()[0] != verifier
    assert len(new_state()) >= 22 and new_state() != new_state()


def test_a_session_round_trips_and_expires_after_12_hours() -> None:
    clock = Clock()
    sessions = Sessions(KEY, secure=True, clock=clock)
    session = sessions.signed_in(sessions.new(), "github", Identity("7", "octocat"))
    response = Response()
    sessions.write(response, session)
    cookies = cookies_of(response)
    name = sessions.session_cookie
    assert name == "__Host-coder-bridge"
    flags = cookies[f"{name}:flags"].lower()
    assert "httponly" in flags and "secure" in flags and "samesite=lax" in flags
    assert "path=/" in flags and "domain" not in flags
    read = sessions.read(request_with({name: cookies[name]}))
    assert read.github == Identity("7", "octocat") and read.csrf == session.csrf
    clock.now += SESSION_SECONDS + 1
    expired = sessions.read(request_with({name: cookies[name]}))
    assert expired.github is None and expired.csrf != session.csrf


def test_a_forged_or_foreign_cookie_is_an_anonymous_session() -> None:
    sessions = Sessions(KEY, secure=False, clock=Clock())
    forged = jwt.encode({"use": "session", "sid": "x", "csrf": "y", "exp": 2_000_000_000,
                         "gh": {"id": "1", "name": "admin"}}, b"other key" * 4, algorithm="HS256")
    assert sessions.read(request_with({sessions.session_cookie: forged})).github is None
    flow = jwt.encode({"use": "flow", "sid": "x", "csrf": "y", "exp": 2_000_000_000,
                       "gh": {"id": "1", "name": "x"}}, KEY, algorithm="HS256")
    assert sessions.read(request_with({sessions.session_cookie: flow})).github is None
    assert sessions.session_cookie == "coder-bridge-session"  # no __Host- without https


def test_signing_in_renews_the_session_id_and_csrf_token() -> None:
    sessions = Sessions(KEY, secure=False, clock=Clock())
    before = sessions.new()
    after = sessions.signed_in(before, "linear", Identity("u-1", "Ada"))
    assert after.sid != before.sid and after.csrf != before.csrf
    assert after.linear == Identity("u-1", "Ada") and after.signed_in
    assert Sessions.csrf_ok(after, after.csrf)
    assert not Sessions.csrf_ok(after, before.csrf)
    assert not Sessions.csrf_ok(after, None)


def test_an_oauth_state_works_once_for_its_provider_and_expires() -> None:
    clock = Clock()
    sessions = Sessions(KEY, secure=False, clock=clock)
    response = Response()
    state, challenge = sessions.start_flow(response, "github")
    flow = {sessions.flow_cookie: cookies_of(response)[sessions.flow_cookie]}
    assert sessions.finish_flow(request_with(flow), "linear", state) is None  # other provider
    assert sessions.finish_flow(request_with(flow), "github", "guessed") is None
    verifier = sessions.finish_flow(request_with(flow), "github", state)
    assert verifier is not None
    digest = hashlib.sha256(verifier.encode()).digest()
    assert challenge == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert sessions.finish_flow(request_with(flow), "github", state) is None  # used
    response = Response()
    state, _ = sessions.start_flow(response, "coder")
    flow = {sessions.flow_cookie: cookies_of(response)[sessions.flow_cookie]}
    clock.now += FLOW_SECONDS + 1
    assert sessions.finish_flow(request_with(flow), "coder", state) is None  # expired
    assert sessions.finish_flow(request_with({}), "coder", state) is None  # another browser
