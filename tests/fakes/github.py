"""A fake of the GitHub REST endpoints the bridge calls, behaving like api.github.com.

Serve it with ``tests.fakes.server.serve_in_thread(fake)`` (the instance is an
ASGI app) and point ``GitHubClient`` at the yielded base URL::

    fake = FakeGitHub(tokens={"ghp_test": "bridge-bot"}, issues=[("acme/app", 7)])
    with serve_in_thread(fake) as base_url:
        ...
    assert [c["body"] for c in fake.comments("acme/app", 7)] == [...]

What it does like GitHub:

- ``Authorization: Bearer <t>`` or ``token <t>`` checked against the configured
  tokens: 401 ``Requires authentication`` / ``Bad credentials``;
- 404 ``Not Found`` (GitHub's JSON body) for unknown repositories, issues,
  comments and routes; repository names are case-insensitive;
- comments: ids are increasing int64 values above 2**31, ``user`` is the
  token's login, 201 + ``Location`` on create, 422 for a missing body or one
  over 65 536 characters (GitHub's message), list ascending by id with
  ``per_page`` (default 30, max 100), ``page`` and a real ``Link`` header;
- ``x-ratelimit-*`` headers on every response, counted per token; when the
  budget (``rate_limit`` per hour) is spent, 403 with ``remaining 0``.
  ``GET /rate_limit`` is free, as on GitHub.
- with ``content_limits = CONTENT_LIMITS``, GitHub's content-creation limit (80
  mutating requests a minute, 500 an hour, per token, on the fake's clock): a
  request beyond it gets the secondary-limit 403; ``status_count(403, 429)`` tells
  how many such answers were given.

GitHub App authentication (after ``configure_app``):

- ``POST /app/installations/{id}/access_tokens``, ``GET /repos/{owner}/{repo}/installation``,
  ``GET /app`` and ``GET /app/installations`` (paginated) take ``Authorization: Bearer
  <App JWT>``: RS256 signed with
  the configured key, ``iss`` the app id, ``iat``/``exp`` integers with
  ``exp - iat <= 600``, ``iat`` not in the future and ``exp`` not past (the
  fake's clock); else 401 with GitHub's message (``A JSON web token could not
  be decoded``, ``'Expiration time' claim ('exp') is too far in the future``, …);
- minted installation tokens act as ``<slug>[bot]`` on the installation's
  repositories only (404 elsewhere, like GitHub), expire at ``expires_at``
  (``installation_token_lifetime`` seconds, on the fake's clock) with 401
  ``Bad credentials``; JWT calls do not spend the rate-limit budget;
  ``GET /installation/repositories`` (paginated) lists what an installation token covers;
- the App webhook's delivery history (``record_hook_delivery``): ``GET
  /app/hook/deliveries`` (newest first, ``cursor`` pagination) and ``POST
  /app/hook/deliveries/{id}/attempts`` (202, then the delivery is sent again to
  ``hook_target`` under the same guid and the answer recorded).
- ``token_exchanges`` / ``installation_lookups`` record those calls;
  ``installation_tokens`` lists minted tokens; ``revoke_installation_tokens``
  makes them fail with 401.

Test controls: ``fail_next`` / ``fail_primary_rate_limit`` /
``fail_secondary_rate_limit`` (answer the next call(s) of a route with an
error, before or after acting), ``delay_next`` (hold the next call), and the
accessors ``comments``, ``requests`` (method, path; never a token),
``timed_requests`` (the fake's clock, method, path), ``reactions``, ``labels``,
``add_comment``, ``delete_comment``, ``add_issue``, ``add_token``,
``revoke_token``; ``allow_editing_others = False`` refuses edits of other people's
comments with 403.

OAuth web flow (``configure_oauth``): ``/login/oauth/authorize`` approves at once as
``browser_login`` (or declines, ``oauth_decline``), ``/login/oauth/access_token``
checks the client, the code (single-use, 10 minutes), ``redirect_uri`` and PKCE, and
answers errors with HTTP 200 as GitHub does; ``DELETE /applications/{id}/token``
revokes (``live_oauth_tokens`` counts those not revoked).

Also served: ``GET /user`` (the token's user; 403 for an installation token), comment
reactions (201 new, 200 already there), issue labels (add: 200 with every label on
the issue, creating unknown ones; remove: 200 or 404 ``Label does not exist``), and
``performed_via_github_app`` on comments an App's bot wrote.

Extending (e.g. GitHub App auth): subclass, override ``routes()`` to add
``Route(path, self.endpoint("create_installation_token", handler,
auth=self.authenticate_jwt), methods=["POST"])``; ``endpoint`` applies the
request log, injections, delays, auth and rate-limit headers; a handler mints
installation tokens with ``add_token``. All state is guarded by one
``threading.Lock`` because the app runs on a uvicorn thread.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import math
import re
import secrets
import threading
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode

import jwt
from cryptography.hazmat.primitives import serialization
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

DEFAULT_TOKEN = "ghp_fake_token_for_tests"  # a test credential
DEFAULT_LOGIN = "coder-bridge-bot"
DEFAULT_ISSUE = ("Codertocat/Hello-World", 1)
MAX_BODY = 65_536
DOCS = "https://docs.github.com/rest"
PRIMARY_LIMIT_MESSAGE = (
    "API rate limit exceeded for user ID {user_id}. If you reach out to GitHub Support for "
    "help, please include the request ID 0000:FAKE."
)
SECONDARY_LIMIT_MESSAGE = (
    "You have exceeded a secondary rate limit. Please wait a few minutes before you try "
    "again. If you reach out to GitHub Support for help, please include the request ID "
    "0000:FAKE."
)
SECONDARY_LIMIT_BODY = {
    "message": SECONDARY_LIMIT_MESSAGE,
    "documentation_url": f"{DOCS}/overview/rate-limits-for-the-rest-api"
    "#about-secondary-rate-limits",
}
#: GitHub's content-creation limit (secondary): 80 a minute and 500 an hour.
CONTENT_LIMITS = ((80, 60.0), (500, 3600.0))
MUTATING = frozenset({"POST", "PATCH", "PUT", "DELETE"})
_STATUS_MESSAGES = {
    400: "Problems parsing JSON",
    401: "Bad credentials",
    403: "Resource not accessible by personal access token",
    404: "Not Found",
    410: "Issues are disabled for this repo",
    422: "Validation Failed",
    429: SECONDARY_LIMIT_MESSAGE,
    500: "Server Error",
    502: "Server Error",
    503: "Service Unavailable",
}

JWT_DECODE_MESSAGE = "A JSON web token could not be decoded"
JWT_EXP_TOO_FAR_MESSAGE = "'Expiration time' claim ('exp') is too far in the future"
JWT_EXPIRED_MESSAGE = (
    "'Expiration time' claim ('exp') must be a numeric value representing the future time "
    "at which the assertion expires"
)
JWT_IAT_MESSAGE = (
    "'Issued at' claim ('iat') must be an Integer representing the time that the assertion "
    "was issued"
)
JWT_MAX_LIFETIME = 600
INSTALLATION_PERMISSIONS = {"issues": "write", "metadata": "read"}

Identity = str
Handler = Callable[[Request, Identity], Awaitable[Response]]
Authenticator = Callable[[Request], "Identity | Response"]


@dataclass
class _Injection:
    status: int
    headers: dict[str, str]
    body: Any
    after_acting: bool
    times: int


@dataclass
class _Repo:
    full_name: str
    id: int
    issues: set[int] = field(default_factory=set)


@dataclass
class _Comment:
    id: int
    repo: str  # lower-cased full name
    number: int
    data: dict[str, Any]


@dataclass
class _App:
    id: int
    slug: str
    name: str
    public_key: Any  # a cryptography RSA public key
    installations: dict[int, set[str]]  # installation id → lower-cased repository names

    @property
    def bot_login(self) -> str:
        return f"{self.slug}[bot]"


@dataclass
class _IssuedToken:
    installation_id: int
    expires_at: float


@dataclass
class _Bucket:
    used: int = 0
    reset: int = 0


def github_error(status: int, message: str | None = None, **extra: Any) -> JSONResponse:
    """A response shaped like GitHub's errors: ``message``, ``documentation_url``, ``status``."""
    body = {
        "message": message if message is not None else _STATUS_MESSAGES.get(status, "Error"),
        "documentation_url": DOCS,
        "status": str(status),
        **extra,
    }
    return JSONResponse(body, status_code=status)


def secondary_limit_response() -> JSONResponse:
    """GitHub's 403 for a secondary limit: the message, and requests still left."""
    return JSONResponse({**SECONDARY_LIMIT_BODY, "status": "403"}, status_code=403)


class FakeGitHub:
    """In-memory GitHub REST API (issue comments, ``/rate_limit``) as an ASGI app.

    ``tokens`` maps accepted tokens to the login they act as (default: one
    token ``DEFAULT_TOKEN`` → ``DEFAULT_LOGIN``). ``issues`` lists
    ``(owner/repo, number)`` pairs that exist. ``rate_limit`` is the hourly
    budget per token; ``clock`` (Unix seconds) drives ``x-ratelimit-reset``.
    """

    def __init__(
        self,
        *,
        tokens: Mapping[str, str] | None = None,
        issues: Iterable[tuple[str, int]] = (DEFAULT_ISSUE,),
        rate_limit: int = 5000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self.rate_limit = rate_limit
        self._tokens: dict[str, str] = dict(tokens or {DEFAULT_TOKEN: DEFAULT_LOGIN})
        self._user_ids: dict[str, int] = {}
        self._repos: dict[str, _Repo] = {}
        self._comments: dict[int, _Comment] = {}
        self._comment_ids = itertools.count(2_200_000_000_001)
        self._repo_ids = itertools.count(100_000_001)
        self._buckets: dict[Identity, _Bucket] = defaultdict(_Bucket)
        self._failures: dict[str, deque[_Injection]] = defaultdict(deque)
        self._delays: dict[str, deque[float]] = defaultdict(deque)
        self._requests: list[tuple[str, str]] = []
        self._timed_requests: list[tuple[float, str, str]] = []
        self._route_names: set[str] = set()
        self._apps: dict[int, _App] = {}
        self._issued: dict[str, _IssuedToken] = {}
        self._exchanges: list[int] = []
        self._lookups: list[str] = []
        self._installation_token_ids = itertools.count(1)
        self.installation_token_lifetime = 3600.0
        self._reaction_ids = itertools.count(90_000_001)
        self._reactions: dict[int, list[dict[str, Any]]] = defaultdict(list)
        self._issue_labels: dict[tuple[str, int], list[str]] = defaultdict(list)
        self._repo_labels: dict[str, dict[str, str]] = defaultdict(dict)
        #: False: edits of comments written by someone else answer 403, as for a token
        #: without write access or on a locked issue (True: allowed, like write access).
        self.allow_editing_others = True
        self._issue_data: dict[tuple[str, int], dict[str, Any]] = {}
        self._issue_events: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
        self._searches: dict[Identity, deque[float]] = defaultdict(deque)
        #: GitHub's content-creation limit, enforced when set: ``(limit, seconds)``
        #: windows over each identity's mutating requests (GitHub: ``CONTENT_LIMITS``);
        #: a request that would pass one is refused with a secondary-limit 403.
        self.content_limits: tuple[tuple[int, float], ...] = ()
        self._content_writes: dict[Identity, deque[float]] = defaultdict(deque)
        self._statuses: dict[int, int] = defaultdict(int)
        #: The App webhook's delivery history, oldest first, and what each guid carried.
        self._hook_deliveries: list[dict[str, Any]] = []
        self._hook_payloads: dict[str, tuple[bytes, dict[str, str]]] = {}
        self._redeliveries: list[int] = []
        #: Where a redelivered delivery is sent: (body, headers) → the HTTP status.
        self.hook_target: Callable[[bytes, dict[str, str]], int] | None = None
        #: Search's own budget: requests a minute per token (GitHub: 30).
        self.search_limit = 30
        self._oauth_apps: dict[str, str] = {}  # client id → secret
        self._oauth_codes: dict[str, dict[str, Any]] = {}
        self._oauth_tokens: set[str] = set()
        #: Who is signed in to GitHub in the browser (the OAuth flow approves as them).
        self.browser_login = "Codertocat"
        #: True: the person presses "Cancel" on GitHub's authorize page.
        self.oauth_decline = False
        for full_name, number in issues:
            self.add_issue(full_name, number)
        self.app = Starlette(
            routes=self.routes(),
            exception_handlers={404: self._not_found, 405: self._not_found},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    # -- routes ---------------------------------------------------------------

    def routes(self) -> list[Route]:
        """The served routes; subclasses extend this list (e.g. App token exchange)."""
        comments = "/repos/{owner}/{repo}/issues/{number}/comments"
        return [
            Route(comments, self.endpoint("list_comments", self._list), methods=["GET"]),
            Route(comments, self.endpoint("create_comment", self._create), methods=["POST"]),
            Route(
                "/repos/{owner}/{repo}/issues/comments/{comment_id}",
                self.endpoint("update_comment", self._update),
                methods=["PATCH"],
            ),
            Route(
                "/rate_limit",
                self.endpoint("rate_limit", self._rate_limit, counts=False),
                methods=["GET"],
            ),
            Route("/user", self.endpoint("get_user", self._get_user), methods=["GET"]),
            Route("/search/issues", self.endpoint("search_issues", self._search,
                                                  counts=False), methods=["GET"]),
            Route("/repos/{owner}/{repo}", self.endpoint("get_repo", self._get_repo),
                  methods=["GET"]),
            Route("/repos/{owner}/{repo}/issues/{number}/events",
                  self.endpoint("list_issue_events", self._list_issue_events), methods=["GET"]),
            Route(
                "/repos/{owner}/{repo}/issues/comments/{comment_id}/reactions",
                self.endpoint("create_reaction", self._react),
                methods=["POST"],
            ),
            Route(
                "/repos/{owner}/{repo}/issues/{number}/labels",
                self.endpoint("add_labels", self._add_labels),
                methods=["POST"],
            ),
            Route(
                "/repos/{owner}/{repo}/issues/{number}/labels/{name}",
                self.endpoint("remove_label", self._remove_label),
                methods=["DELETE"],
            ),
            *self._app_routes(),
            *self._oauth_routes(),
        ]

    def _app_routes(self) -> list[Route]:
        """GitHub App endpoints, authenticated with the App JWT (no rate-limit budget)."""
        jwt_auth = self.authenticate_jwt
        return [
            Route(
                "/app/installations/{installation_id}/access_tokens",
                self.endpoint(
                    "create_installation_token",
                    self._create_installation_token,
                    auth=jwt_auth,
                    counts=False,
                ),
                methods=["POST"],
            ),
            Route(
                "/repos/{owner}/{repo}/installation",
                self.endpoint(
                    "get_repo_installation", self._repo_installation, auth=jwt_auth, counts=False
                ),
                methods=["GET"],
            ),
            Route(
                "/app",
                self.endpoint("get_app", self._get_app, auth=jwt_auth, counts=False),
                methods=["GET"],
            ),
            Route(
                "/app/installations",
                self.endpoint("list_installations", self._list_installations, auth=jwt_auth,
                              counts=False),
                methods=["GET"],
            ),
            Route(
                "/app/hook/deliveries",
                self.endpoint("list_hook_deliveries", self._list_hook_deliveries,
                              auth=jwt_auth, counts=False),
                methods=["GET"],
            ),
            Route(
                "/app/hook/deliveries/{delivery_id}/attempts",
                self.endpoint("redeliver_hook_delivery", self._redeliver_hook_delivery,
                              auth=jwt_auth, counts=False),
                methods=["POST"],
            ),
            Route(
                "/installation/repositories",
                self.endpoint("installation_repositories", self._installation_repositories),
                methods=["GET"],
            ),
        ]

    def _oauth_routes(self) -> list[Route]:
        """The OAuth web flow (reference oauth.md §2), on the same host: the fake serves
        as both ``github.web_url`` and ``github.api_url``."""
        return [
            Route("/login/oauth/authorize", self._oauth_authorize, methods=["GET"]),
            Route("/login/oauth/access_token", self._oauth_token, methods=["POST"]),
            Route("/applications/{client_id}/token", self._oauth_revoke, methods=["DELETE"]),
        ]

    def endpoint(
        self,
        name: str,
        handler: Handler,
        *,
        auth: Authenticator | None = None,
        counts: bool = True,
    ) -> Callable[[Request], Awaitable[Response]]:
        """Wrap ``handler`` with the request log, delays, injections, auth and rate limits.

        ``name`` is the route name used by ``fail_next``/``delay_next``; ``auth``
        returns the caller's identity or a 401 response (default: token auth);
        ``counts`` says whether the call spends the rate-limit budget.
        """
        self._route_names.add(name)
        authenticate = auth or self.authenticate_token

        async def run(request: Request) -> Response:
            injection, delay = self._take(name, request)
            if delay:
                await asyncio.sleep(delay)
            if injection is not None and not injection.after_acting:
                return self._injected(injection, request)
            identity = authenticate(request)
            if isinstance(identity, Response):
                return self._with_limits(identity, "")
            if counts and not self._spend(identity):
                return self._count(self._with_limits(self._primary_limit_response(identity),
                                                     identity))
            if counts and request.method in MUTATING and not self._content_room(identity):
                return self._count(self._with_limits(secondary_limit_response(), identity))
            response = await handler(request, identity)
            if injection is not None:
                return self._count(self._injected(injection, request))
            return self._count(self._with_limits(response, identity))

        return run

    def _count(self, response: Response) -> Response:
        with self._lock:
            self._statuses[response.status_code] += 1
        return response

    def _content_room(self, identity: Identity) -> bool:
        """Record one content-creating request unless a ``content_limits`` window is full."""
        with self._lock:
            if not self.content_limits:
                return True
            now = self._clock()
            writes = self._content_writes[identity]
            longest = max(span for _, span in self.content_limits)
            while writes and writes[0] <= now - longest:
                writes.popleft()
            for limit, span in self.content_limits:
                if sum(1 for t in writes if t > now - span) >= limit:
                    return False
            writes.append(now)
            return True

    def status_count(self, *statuses: int) -> int:
        """How many answers (injected failures included) had one of ``statuses``."""
        with self._lock:
            return sum(self._statuses[s] for s in statuses)

    # -- auth -----------------------------------------------------------------

    def authenticate_token(self, request: Request) -> Identity | Response:
        """The login behind ``Authorization: Bearer|token <t>``, or GitHub's 401."""
        header = request.headers.get("authorization")
        if not header:
            return github_error(401, "Requires authentication")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        with self._lock:
            login = self._tokens.get(token)
            issued = self._issued.get(token)
            expired = issued is not None and self._clock() >= issued.expires_at
        if scheme.lower() not in ("bearer", "token") or login is None or expired:
            return github_error(401, "Bad credentials")
        if issued is not None and not self._installation_covers(issued, request):
            return github_error(404)
        return login

    def authenticate_jwt(self, request: Request) -> Identity | Response:
        """``app:<id>`` for a valid App JWT (``Authorization: Bearer <jwt>``), or GitHub's 401."""
        header = request.headers.get("authorization")
        if not header:
            return github_error(401, "Requires authentication")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer":
            return github_error(401, JWT_DECODE_MESSAGE)
        problem = self._jwt_problem(token.strip())
        if isinstance(problem, str):
            return github_error(401, problem)
        return f"app:{problem.id}"

    def _jwt_problem(self, token: str) -> str | _App:
        """The app a JWT authenticates, or GitHub's message saying what is wrong with it."""
        try:
            issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
        except jwt.PyJWTError:
            return JWT_DECODE_MESSAGE
        with self._lock:
            app = self._apps.get(_int(str(issuer)) or -1)
        if app is None:
            return JWT_DECODE_MESSAGE
        try:
            claims = jwt.decode(
                token,
                app.public_key,
                algorithms=["RS256"],
                options={
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                    "require": ["iat", "exp", "iss"],
                },
            )
        except jwt.PyJWTError:
            return JWT_DECODE_MESSAGE
        return self._claims_problem(claims) or app

    def _claims_problem(self, claims: dict[str, Any]) -> str | None:
        """GitHub's complaint about ``iat``/``exp`` on the fake's clock, or None."""
        iat, exp, now = claims["iat"], claims["exp"], self._clock()
        if not isinstance(iat, int) or isinstance(iat, bool) or iat > now:
            return JWT_IAT_MESSAGE
        if not isinstance(exp, int) or isinstance(exp, bool) or exp <= now:
            return JWT_EXPIRED_MESSAGE
        if exp - iat > JWT_MAX_LIFETIME:
            return JWT_EXP_TOO_FAR_MESSAGE
        return None

    def _installation_covers(self, issued: _IssuedToken, request: Request) -> bool:
        """True unless the path names a repository outside the token's installation."""
        owner, repo = request.path_params.get("owner"), request.path_params.get("repo")
        if owner is None or repo is None:
            return True
        with self._lock:
            repos = self._installation_repos(issued.installation_id)
        return f"{owner}/{repo}".lower() in repos

    # -- GitHub App set-up and accessors ------------------------------------------

    def configure_app(
        self,
        app_id: int,
        public_key_pem: str | bytes,
        *,
        installations: Mapping[int, Iterable[str]] | None = None,
        slug: str = "my-app",
        name: str = "My App",
    ) -> None:
        """Register a GitHub App: JWTs with ``iss = app_id`` are checked against the key.

        ``installations`` maps installation ids to the ``owner/repo`` names
        they cover. Its tokens act as ``<slug>[bot]``.
        """
        pem = public_key_pem.encode() if isinstance(public_key_pem, str) else public_key_pem
        key = serialization.load_pem_public_key(pem)
        covered = {i: {r.lower() for r in repos} for i, repos in (installations or {}).items()}
        with self._lock:
            self._apps[app_id] = _App(app_id, slug, name, key, covered)

    @property
    def token_exchanges(self) -> list[int]:
        """Installation ids of the successful token exchanges, in order."""
        with self._lock:
            return list(self._exchanges)

    @property
    def installation_lookups(self) -> list[str]:
        """Repositories asked about with ``GET /repos/{owner}/{repo}/installation``, in order."""
        with self._lock:
            return list(self._lookups)

    def installation_tokens(self, installation_id: int | None = None) -> list[str]:
        """Installation tokens minted so far (of one installation, if given), in order."""
        with self._lock:
            return [
                token
                for token, issued in self._issued.items()
                if installation_id is None or issued.installation_id == installation_id
            ]

    def revoke_installation_tokens(self, installation_id: int | None = None) -> None:
        """Refuse every installation token minted so far (of one installation, if given)."""
        for token in self.installation_tokens(installation_id):
            self.revoke_token(token)

    def add_token(self, token: str, login: str) -> None:
        """Accept ``token`` from now on, acting as ``login``."""
        with self._lock:
            self._tokens[token] = login

    def revoke_token(self, token: str) -> None:
        """Refuse ``token`` from now on (401 ``Bad credentials``)."""
        with self._lock:
            self._tokens.pop(token, None)

    # -- state set-up and accessors ---------------------------------------------

    def add_issue(self, full_name: str, number: int) -> None:
        """Make issue ``number`` exist in repository ``full_name`` (created if new)."""
        with self._lock:
            repo = self._repos.get(full_name.lower())
            if repo is None:
                repo = _Repo(full_name, next(self._repo_ids))
                self._repos[full_name.lower()] = repo
            repo.issues.add(number)

    def add_comment(self, full_name: str, number: int, body: str, *, login: str = "octocat") -> int:
        """Seed a comment by ``login`` on an existing issue; returns its id."""
        with self._lock:
            repo = self._repos[full_name.lower()]
            if number not in repo.issues:
                raise KeyError(f"{full_name}#{number} does not exist")
            return self._insert(repo, number, body, login, "https://api.github.com").id

    def delete_comment(self, comment_id: int) -> None:
        """Delete a comment (later PATCHes of it answer 404)."""
        with self._lock:
            del self._comments[comment_id]

    def set_repository_id(self, full_name: str, repository_id: int) -> None:
        """Give a repository the id its webhook deliveries carry (e.g. a fixture's)."""
        self.add_issue(full_name, 1)
        with self._lock:
            self._repos[full_name.lower()].id = repository_id

    def add_labelled_issue(self, full_name: str, number: int, *, label: str,
                           author: tuple[int, str], labeler: tuple[int, str],
                           updated_at: str, title: str = "A missed issue",
                           state: str = "open") -> None:
        """An issue carrying ``label``, written by ``author`` and labelled by ``labeler``
        ((id, login) each), as if its webhook had never been delivered."""
        self.add_issue(full_name, number)
        with self._lock:
            repo = self._repos[full_name.lower()]
            user = {"login": author[1], "id": author[0], "type": "User"}
            self._issue_data[(full_name.lower(), number)] = {
                "id": 500_000_000 + repo.id % 1000 * 1000 + number, "number": number,
                "title": title, "body": f"{title}: the body.", "state": state, "user": user,
                "labels": [{"id": 1, "name": label, "color": "d73a4a", "default": False}],
                "created_at": "2026-01-01T00:00:00Z", "updated_at": updated_at,
                "html_url": f"https://github.com/{repo.full_name}/issues/{number}",
                "author_association": "OWNER"}
            self._issue_events[(full_name.lower(), number)].append({
                "id": next(self._reaction_ids), "event": "labeled", "created_at": updated_at,
                "actor": {"login": labeler[1], "id": labeler[0], "type": "User"},
                "label": {"name": label, "color": "d73a4a"}})

    def configure_oauth(self, client_id: str, client_secret: str) -> None:
        """Register an OAuth App (or a GitHub App's client) for the web flow."""
        with self._lock:
            self._oauth_apps[client_id] = client_secret

    def set_user_id(self, login: str, user_id: int) -> None:
        """Give ``login`` a fixed numeric id (as GitHub's ``GET /user`` reports it)."""
        with self._lock:
            self._user_ids[login] = user_id

    @property
    def live_oauth_tokens(self) -> int:
        """Sign-in tokens issued and not revoked."""
        with self._lock:
            return len(self._oauth_tokens)

    def reactions(self, comment_id: int) -> list[dict[str, Any]]:
        """The reactions on a comment, oldest first (copies)."""
        with self._lock:
            return [dict(r) for r in json.loads(json.dumps(self._reactions.get(comment_id, [])))]

    def labels(self, full_name: str, number: int) -> list[str]:
        """The names of the labels on an issue, in the order they were added."""
        with self._lock:
            return list(self._issue_labels[(full_name.lower(), number)])

    def comments(self, full_name: str, number: int) -> list[dict[str, Any]]:
        """The issue's comments as GitHub returns them, ascending by id (copies)."""
        with self._lock:
            return [json.loads(json.dumps(c.data)) for c in self._issue_comments(full_name, number)]

    @property
    def requests(self) -> list[tuple[str, str]]:
        """Every request received, as (method, path) in arrival order (no query, no headers)."""
        with self._lock:
            return list(self._requests)

    @property
    def timed_requests(self) -> list[tuple[float, str, str]]:
        """Every request received, as (fake clock time, method, path) in arrival order."""
        with self._lock:
            return list(self._timed_requests)

    # -- injection --------------------------------------------------------------

    def fail_next(
        self,
        route: str,
        status: int,
        *,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
        after_acting: bool = False,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` calls of ``route`` with ``status``.

        ``route`` is a route name (``list_comments``, ``create_comment``,
        ``update_comment``, ``rate_limit``). ``body``: ``None`` → GitHub's error
        JSON for the status; ``str``/``bytes`` → sent as is; else JSON.
        ``headers`` are added (and override the x-ratelimit-* ones).
        ``after_acting`` performs the real operation first (the comment is
        created/edited), then answers with the failure, like a 502 from a proxy
        after GitHub did the work.
        """
        if route not in self._route_names:
            raise ValueError(f"unknown route {route!r}; known: {sorted(self._route_names)}")
        injection = _Injection(status, dict(headers or {}), body, after_acting, times)
        with self._lock:
            self._failures[route].append(injection)

    def fail_primary_rate_limit(
        self, route: str, *, reset: float, status: int = 403, times: int = 1
    ) -> None:
        """Next call(s): primary limit exhausted (``remaining: 0``, ``reset`` = Unix seconds)."""
        headers = {
            "x-ratelimit-limit": str(self.rate_limit),
            "x-ratelimit-remaining": "0",
            "x-ratelimit-used": str(self.rate_limit),
            "x-ratelimit-reset": str(int(reset)),
        }
        body = {
            "message": PRIMARY_LIMIT_MESSAGE.format(user_id=1),
            "documentation_url": f"{DOCS}/overview/rate-limits-for-the-rest-api",
        }
        self.fail_next(route, status, headers=headers, body=body, times=times)

    def fail_secondary_rate_limit(
        self, route: str, *, status: int = 403, retry_after: int | None = None, times: int = 1
    ) -> None:
        """Next call(s): a secondary limit (message, remaining > 0, optional ``retry-after``)."""
        headers = {"retry-after": str(retry_after)} if retry_after is not None else {}
        self.fail_next(route, status, headers=headers, body=SECONDARY_LIMIT_BODY, times=times)

    def delay_next(self, route: str, seconds: float) -> None:
        """Hold the next call of ``route`` for ``seconds`` before handling it."""
        if route not in self._route_names:
            raise ValueError(f"unknown route {route!r}; known: {sorted(self._route_names)}")
        with self._lock:
            self._delays[route].append(seconds)

    # -- handlers ------------------------------------------------------------------

    async def _list(self, request: Request, login: Identity) -> Response:
        params = request.path_params
        with self._lock:
            repo = self._find_issue(params["owner"], params["repo"], params["number"])
            if repo is None:
                return github_error(404)
            items = json.loads(json.dumps(
                [c.data for c in self._issue_comments(repo.full_name, int(params["number"]))]))
        return _paged(request, items, lambda chunk: chunk)

    async def _create(self, request: Request, login: Identity) -> Response:
        params = request.path_params
        body = await _comment_body(request)
        if isinstance(body, Response):
            return body
        with self._lock:
            repo = self._find_issue(params["owner"], params["repo"], params["number"])
            if repo is None:
                return github_error(404)
            comment = self._insert(repo, int(params["number"]), body, login, _base(request))
            data = json.loads(json.dumps(comment.data))
        return JSONResponse(data, status_code=201, headers={"Location": data["url"]})

    async def _update(self, request: Request, login: Identity) -> Response:
        params = request.path_params
        body = await _comment_body(request)
        if isinstance(body, Response):
            return body
        with self._lock:
            repo = self._repos.get(f"{params['owner']}/{params['repo']}".lower())
            comment = self._comments.get(_int(params["comment_id"]) or -1)
            if repo is None or comment is None or comment.repo != repo.full_name.lower():
                return github_error(404)
            if comment.data["user"]["login"] != login and not self.allow_editing_others:
                return github_error(403)
            comment.data["body"] = body
            comment.data["updated_at"] = self._now_iso()
            data = json.loads(json.dumps(comment.data))
        return JSONResponse(data)

    async def _oauth_authorize(self, request: Request) -> Response:
        """Approves at once as ``browser_login`` (consented before), or declines."""
        q = request.query_params
        redirect = q.get("redirect_uri", "")
        with self._lock:
            known = q.get("client_id") in self._oauth_apps
            self._log(request)
        if not known or not redirect:
            return HTMLResponse("<h1>404</h1>", status_code=404)
        if self.oauth_decline:
            query = urlencode({"error": "access_denied", "state": q.get("state", ""),
                               "error_description": "The user has denied your application "
                                                    "access."})
            return RedirectResponse(f"{redirect}?{query}", status_code=302)
        code = secrets.token_hex(10)
        with self._lock:
            self._oauth_codes[code] = {
                "client_id": q.get("client_id"), "redirect_uri": redirect,
                "challenge": q.get("code_challenge"), "login": self.browser_login,
                "expires": self._clock() + 600}
        query = urlencode({"code": code, "state": q.get("state", "")})
        return RedirectResponse(f"{redirect}?{query}", status_code=302)

    async def _oauth_token(self, request: Request) -> Response:
        """Errors come with HTTP 200 and an ``error`` key, as on GitHub."""
        raw = await request.body()
        if request.headers.get("content-type", "").startswith("application/json"):
            form = {k: str(v) for k, v in json.loads(raw or b"{}").items()}
        else:
            form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
        with self._lock:
            self._log(request)

            def fail(error: str, description: str) -> Response:
                return JSONResponse({"error": error, "error_description": description,
                                     "error_uri": f"{DOCS}/oauth"})

            if self._oauth_apps.get(form.get("client_id", "")) != form.get("client_secret"):
                return fail("incorrect_client_credentials",
                            "The client_id and/or client_secret passed are incorrect.")
            grant = self._oauth_codes.pop(form.get("code", ""), None)
            if grant is None or grant["expires"] < self._clock():
                return fail("bad_verification_code", "The code passed is incorrect or expired.")
            if form.get("redirect_uri") != grant["redirect_uri"]:
                return fail("redirect_uri_mismatch",
                            "The redirect_uri MUST match the registered callback URL.")
            if grant["challenge"] and _s256(form.get("code_verifier", "")) != grant["challenge"]:
                return fail("bad_verification_code", "The code passed is incorrect or expired.")
            token = "gho_" + secrets.token_hex(18)
            self._tokens[token] = grant["login"]
            self._oauth_tokens.add(token)
        body = {"access_token": token, "token_type": "bearer", "scope": ""}
        if "application/json" in request.headers.get("accept", ""):
            return JSONResponse(body)
        return Response(urlencode(body), media_type="application/x-www-form-urlencoded")

    async def _oauth_revoke(self, request: Request) -> Response:
        """``DELETE /applications/{client_id}/token`` with Basic client credentials."""
        client_id = request.path_params["client_id"]
        header = request.headers.get("authorization", "")
        try:
            sent = base64.b64decode(header.partition(" ")[2]).decode()
        except ValueError:
            sent = ""
        token = json.loads(await request.body() or b"{}").get("access_token", "")
        with self._lock:
            self._log(request)
            if sent != f"{client_id}:{self._oauth_apps.get(client_id, '')}" or \
                    client_id not in self._oauth_apps:
                return github_error(401, "Requires authentication")
            if token not in self._oauth_tokens:
                return github_error(404)
            self._oauth_tokens.discard(token)
            self._tokens.pop(token, None)
        return Response(status_code=204)

    async def _search(self, request: Request, login: Identity) -> Response:
        """``GET /search/issues``: the qualifiers a sweep uses (``repo:``, ``user:``,
        ``org:``, ``is:issue``, ``is:open``, ``label:"…"``, ``updated:>=``), its own budget
        of ``search_limit`` requests a minute (then 403 with ``x-ratelimit-resource:
        search``), ``is:issue`` required as for App user tokens."""
        now = self._clock()
        with self._lock:
            window = self._searches[login]
            while window and window[0] <= now - 60:
                window.popleft()
            if len(window) >= self.search_limit:
                return JSONResponse(
                    {"message": "API rate limit exceeded for user.", "documentation_url": DOCS},
                    status_code=403, headers={"x-ratelimit-resource": "search",
                                              "x-ratelimit-remaining": "0",
                                              "x-ratelimit-reset": str(int(window[0] + 61))})
            window.append(now)
            terms = _search_terms(request.query_params.get("q", ""))
            if ("is", "issue") not in terms:
                return github_error(422, "Validation Failed")
            scopes = [(k, v.lower()) for k, v in terms if k in ("repo", "user", "org")]
            labels = [v.lower() for k, v in terms if k == "label"]
            since = next((v[2:] for k, v in terms if k == "updated" and v.startswith(">=")), "")
            items = []
            for (repo, number), data in self._issue_data.items():
                owner = repo.split("/")[0]
                if scopes and not any(v == repo if k == "repo" else v == owner
                                      for k, v in scopes):
                    continue
                if ("is", "open") in terms and data["state"] != "open":
                    continue
                names = {label["name"].lower() for label in data["labels"]}
                if not all(label in names for label in labels) or data["updated_at"] < since:
                    continue
                api = f"{str(request.base_url).rstrip('/')}/repos/{self._repos[repo].full_name}"
                items.append({**data, "repository_url": api, "url": f"{api}/issues/{number}"})
        items.sort(key=lambda i: i["updated_at"], reverse=True)
        return JSONResponse({"total_count": len(items), "incomplete_results": False,
                             "items": items[:100]})

    async def _get_repo(self, request: Request, login: Identity) -> Response:
        params = request.path_params
        with self._lock:
            repo = self._repos.get(f"{params['owner']}/{params['repo']}".lower())
            if repo is None:
                return github_error(404)
            return JSONResponse({"id": repo.id, "full_name": repo.full_name,
                                 "name": repo.full_name.split("/")[1], "private": False})

    async def _list_issue_events(self, request: Request, login: Identity) -> Response:
        params = request.path_params
        with self._lock:
            repo = self._find_issue(params["owner"], params["repo"], params["number"])
            if repo is None:
                return github_error(404)
            events = self._issue_events.get((repo.full_name.lower(), int(params["number"])), [])
            return JSONResponse(json.loads(json.dumps(events)))

    async def _get_user(self, request: Request, login: Identity) -> Response:
        """The token's user; an installation token has none (403, as on GitHub)."""
        if login.endswith("[bot]"):
            return github_error(403, "Resource not accessible by integration")
        with self._lock:
            body = {"login": login, "id": self._user_id(login), "type": "User",
                    "node_id": f"U_kgFAKE{self._user_id(login)}"}
        return JSONResponse(body)

    async def _react(self, request: Request, login: Identity) -> Response:
        """201 for a new reaction, 200 when this account already reacted so; 404 for a
        comment that is gone; 422 for an unknown ``content``."""
        params = request.path_params
        try:
            content = json.loads(await request.body()).get("content")
        except (ValueError, AttributeError):
            return github_error(400)
        if content not in ("+1", "-1", "laugh", "confused", "heart", "hooray", "rocket", "eyes"):
            return github_error(422)
        with self._lock:
            comment = self._comments.get(_int(params["comment_id"]) or -1)
            repo = self._repos.get(f"{params['owner']}/{params['repo']}".lower())
            if comment is None or repo is None or comment.repo != repo.full_name.lower():
                return github_error(404)
            mine = [r for r in self._reactions[comment.id]
                    if r["user"]["login"] == login and r["content"] == content]
            if mine:
                return JSONResponse(mine[0], status_code=200)
            reaction = {"id": next(self._reaction_ids), "node_id": "REA_FAKE",
                        "user": {"login": login, "id": self._user_id(login)},
                        "content": content, "created_at": self._now_iso()}
            self._reactions[comment.id].append(reaction)
            comment.data["reactions"][content] += 1
            comment.data["reactions"]["total_count"] += 1
            return JSONResponse(reaction, status_code=201)

    async def _add_labels(self, request: Request, login: Identity) -> Response:
        """Add labels (created in the repository on first use); 200 with every label
        on the issue now."""
        params = request.path_params
        try:
            payload = json.loads(await request.body())
        except ValueError:
            return github_error(400)
        names = payload.get("labels") if isinstance(payload, dict) else payload
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            return github_error(422)
        with self._lock:
            repo = self._find_issue(params["owner"], params["repo"], params["number"])
            if repo is None:
                return github_error(404)
            key = (repo.full_name.lower(), int(params["number"]))
            known = self._repo_labels[repo.full_name.lower()]
            for name in names:
                known.setdefault(name.lower(), name)
                if name.lower() not in (n.lower() for n in self._issue_labels[key]):
                    self._issue_labels[key].append(known[name.lower()])
            return JSONResponse(self._label_list(key))

    async def _remove_label(self, request: Request, login: Identity) -> Response:
        """200 with the labels left; 404 ``Label does not exist`` when it is not there."""
        params = request.path_params
        with self._lock:
            repo = self._find_issue(params["owner"], params["repo"], params["number"])
            if repo is None:
                return github_error(404)
            key = (repo.full_name.lower(), int(params["number"]))
            present = [n for n in self._issue_labels[key]
                       if n.lower() == params["name"].lower()]
            if not present:
                return github_error(404, "Label does not exist")
            self._issue_labels[key].remove(present[0])
            return JSONResponse(self._label_list(key))

    def _label_list(self, key: tuple[str, int]) -> list[dict[str, Any]]:
        """Label objects of an issue (caller holds the lock)."""
        return [{"id": abs(hash(name)) % 10**9, "name": name, "color": "ededed",
                 "default": False, "description": None} for name in self._issue_labels[key]]

    async def _rate_limit(self, request: Request, login: Identity) -> Response:
        with self._lock:
            bucket = self._bucket(login)
            core = {
                "limit": self.rate_limit,
                "used": bucket.used,
                "remaining": max(0, self.rate_limit - bucket.used),
                "reset": bucket.reset,
            }
        return JSONResponse({"resources": {"core": core}, "rate": core})

    async def _create_installation_token(self, request: Request, identity: Identity) -> Response:
        installation_id = _int(request.path_params["installation_id"])
        with self._lock:
            app = self._app_of(identity)
            if app is None or installation_id is None or installation_id not in app.installations:
                return github_error(404, "Integration not found")
            token = f"ghs_fakeInstallationToken{next(self._installation_token_ids):06d}"
            expires_at = self._clock() + self.installation_token_lifetime
            self._issued[token] = _IssuedToken(installation_id, expires_at)
            self._tokens[token] = app.bot_login
            self._exchanges.append(installation_id)
        body = {
            "token": token,
            "expires_at": _iso(expires_at),
            "permissions": INSTALLATION_PERMISSIONS,
            "repository_selection": "selected",
        }
        return JSONResponse(body, status_code=201)

    async def _repo_installation(self, request: Request, identity: Identity) -> Response:
        owner, repo = request.path_params["owner"], request.path_params["repo"]
        full_name = f"{owner}/{repo}"
        with self._lock:
            self._lookups.append(full_name)
            app = self._app_of(identity)
            covering = app.installations if app is not None else {}
            found = [i for i, repos in covering.items() if full_name.lower() in repos]
        if app is None or not found:
            return github_error(404)
        body = {
            "id": found[0],
            "account": {"login": owner, "type": "Organization"},
            "app_id": app.id,
            "app_slug": app.slug,
            "target_type": "Organization",
            "repository_selection": "selected",
            "permissions": INSTALLATION_PERMISSIONS,
        }
        return JSONResponse(body)

    async def _get_app(self, request: Request, identity: Identity) -> Response:
        with self._lock:
            app = self._app_of(identity)
            if app is None:
                return github_error(404)
            body = {
                "id": app.id,
                "slug": app.slug,
                "node_id": f"A_kwFAKE{app.id}",
                "name": app.name,
                "owner": {"login": "octo-org", "type": "Organization"},
                "permissions": INSTALLATION_PERMISSIONS,
                "events": ["issues"],
                "installations_count": len(app.installations),
            }
        return JSONResponse(body)

    async def _not_found(self, request: Request, exc: Exception) -> Response:
        with self._lock:
            self._log(request)
        return github_error(404)

    # -- internals (callers hold the lock where noted) ---------------------------------

    def _log(self, request: Request) -> None:
        """Record the request (caller holds the lock)."""
        self._requests.append((request.method, request.url.path))
        self._timed_requests.append((self._clock(), request.method, request.url.path))

    async def _list_installations(self, request: Request, identity: Identity) -> Response:
        """``GET /app/installations``: the App's installations, paginated like GitHub."""
        with self._lock:
            app = self._app_of(identity)
            ids = sorted(app.installations) if app is not None else []
            items = [{"id": i, "app_id": app.id if app else 0, "target_type": "Organization",
                      "account": {"login": f"org-{i}", "type": "Organization"}} for i in ids]
        return _paged(request, items, lambda chunk: chunk)

    async def _installation_repositories(self, request: Request, identity: Identity
                                         ) -> Response:
        """``GET /installation/repositories`` with an installation token: what it covers."""
        header = request.headers.get("authorization", "")
        with self._lock:
            issued = self._issued.get(header.partition(" ")[2].strip())
            if issued is None:  # a personal token: GitHub wants an installation's
                return github_error(403, "You must authenticate with an installation access "
                                    "token in order to list repositories for an installation.")
            names = sorted(self._installation_repos(issued.installation_id))
            repos = [{"id": self._repos[n].id if n in self._repos else 0,
                      "full_name": self._repos[n].full_name if n in self._repos else n,
                      "private": False} for n in names]
        return _paged(request, repos, lambda chunk: {
            "total_count": len(repos), "repository_selection": "selected",
            "repositories": chunk})

    async def _list_hook_deliveries(self, request: Request, identity: Identity) -> Response:
        """``GET /app/hook/deliveries``: newest first, ``per_page`` (≤ 100, default 30) and
        a ``cursor`` (the items older than it) given in the ``Link`` header."""
        per_page = _clamp(request.query_params.get("per_page"), default=30, low=1, high=100)
        cursor = _int(request.query_params.get("cursor", "")) or None
        with self._lock:
            if self._app_of(identity) is None:
                return github_error(404)
            older = [d for d in reversed(self._hook_deliveries)
                     if cursor is None or d["id"] < cursor]
            page = [dict(d) for d in older[:per_page]]
        headers = {}
        if len(older) > per_page:
            query = urlencode({"per_page": per_page, "cursor": page[-1]["id"]})
            headers["Link"] = f'<{_base(request)}{request.url.path}?{query}>; rel="next"'
        return JSONResponse(page, headers=headers)

    async def _redeliver_hook_delivery(self, request: Request, identity: Identity
                                       ) -> Response:
        """``POST /app/hook/deliveries/{id}/attempts``: 202, then the delivery is sent again
        to ``hook_target`` (same guid, ``redelivery: true``) and its answer recorded."""
        ident = _int(request.path_params["delivery_id"])
        with self._lock:
            original = next((d for d in self._hook_deliveries if d["id"] == ident), None)
            if original is None or self._app_of(identity) is None:
                return github_error(404)
            self._redeliveries.append(ident)
        return JSONResponse({}, status_code=202,
                            background=BackgroundTask(self._send_again, original))

    async def _send_again(self, original: dict[str, Any]) -> None:
        payload, headers = self._hook_payloads[original["guid"]]
        target = self.hook_target
        status = 502 if target is None else await asyncio.to_thread(target, payload, headers)
        self.record_hook_delivery(original["guid"], event=original["event"],
                                  action=original["action"], status_code=status,
                                  payload=payload, headers=headers, redelivery=True)

    def record_hook_delivery(
        self, guid: str, *, event: str, action: str | None, status_code: int,
        payload: bytes = b"{}", headers: Mapping[str, str] | None = None,
        redelivery: bool = False, delivered_at: float | None = None,
    ) -> int:
        """Add an attempt to the App webhook's delivery history (what GitHub sent, and
        the answer it got); its id (a large int64, as on GitHub)."""
        with self._lock:
            ident = 2**40 + len(self._hook_deliveries) + 1
            when = self._clock() if delivered_at is None else delivered_at
            self._hook_deliveries.append({
                "id": ident, "guid": guid,
                "delivered_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when)),
                "redelivery": redelivery, "duration": 0.05,
                "status": "OK" if 200 <= status_code < 300
                          else f"Invalid HTTP Response: {status_code}",
                "status_code": status_code, "event": event, "action": action,
                "installation_id": None, "repository_id": None, "throttled_at": None})
            self._hook_payloads[guid] = (payload, dict(headers or {}))
            return ident

    @property
    def hook_redeliveries(self) -> list[int]:
        """Ids of the hook deliveries asked for again, in order."""
        with self._lock:
            return list(self._redeliveries)

    def hook_attempts(self, guid: str) -> list[int]:
        """The status codes of every attempt of ``guid``, oldest first."""
        with self._lock:
            return [d["status_code"] for d in self._hook_deliveries if d["guid"] == guid]

    def _app_of(self, identity: Identity) -> _App | None:
        """The app behind an ``app:<id>`` identity (caller holds the lock)."""
        prefix, _, app_id = identity.partition(":")
        return self._apps.get(_int(app_id) or -1) if prefix == "app" else None

    def _installation_repos(self, installation_id: int) -> set[str]:
        """Repositories an installation covers (caller holds the lock)."""
        for app in self._apps.values():
            if installation_id in app.installations:
                return app.installations[installation_id]
        return set()

    def _take(self, name: str, request: Request) -> tuple[_Injection | None, float]:
        """Log the request; pop this route's next delay and injection."""
        with self._lock:
            self._log(request)
            delays = self._delays[name]
            delay = delays.popleft() if delays else 0.0
            queue = self._failures[name]
            if not queue:
                return None, delay
            injection = queue[0]
            injection.times -= 1
            if injection.times <= 0:
                queue.popleft()
            return injection, delay

    def _injected(self, injection: _Injection, request: Request) -> Response:
        if injection.body is None:
            response: Response = github_error(injection.status)
        elif isinstance(injection.body, str | bytes):
            response = Response(injection.body, status_code=injection.status)
        else:
            response = JSONResponse(injection.body, status_code=injection.status)
        identity = self.authenticate_token(request)
        response = self._with_limits(response, identity if isinstance(identity, str) else "")
        response.headers.update(injection.headers)
        return response

    def _spend(self, identity: Identity) -> bool:
        """Count one call against the identity's hourly budget; False when it is spent."""
        with self._lock:
            bucket = self._bucket(identity)
            if bucket.used >= self.rate_limit:
                return False
            bucket.used += 1
            return True

    def _bucket(self, identity: Identity) -> _Bucket:
        """The identity's current window (caller holds the lock)."""
        bucket = self._buckets[identity]
        now = self._clock()
        if now >= bucket.reset:
            bucket.used, bucket.reset = 0, int(now) + 3600
        return bucket

    def _with_limits(self, response: Response, identity: Identity) -> Response:
        limit = self.rate_limit if identity else 60
        with self._lock:
            bucket = self._bucket(identity)
            response.headers.update(
                {
                    "x-ratelimit-limit": str(limit),
                    "x-ratelimit-remaining": str(max(0, limit - bucket.used)),
                    "x-ratelimit-used": str(bucket.used),
                    "x-ratelimit-reset": str(bucket.reset),
                    "x-ratelimit-resource": "core",
                    "x-github-api-version-selected": "2022-11-28",
                }
            )
        return response

    def _primary_limit_response(self, identity: Identity) -> Response:
        with self._lock:
            user_id = self._user_id(identity)
        return github_error(403, PRIMARY_LIMIT_MESSAGE.format(user_id=user_id))

    def _find_issue(self, owner: str, name: str, number: str) -> _Repo | None:
        """The repository if it holds issue ``number`` (caller holds the lock)."""
        repo = self._repos.get(f"{owner}/{name}".lower())
        issue = _int(number)
        return repo if repo is not None and issue in repo.issues else None

    def _issue_comments(self, full_name: str, number: int) -> list[_Comment]:
        """Comments of one issue ascending by id (caller holds the lock)."""
        key = full_name.lower()
        return sorted(
            (c for c in self._comments.values() if c.repo == key and c.number == number),
            key=lambda c: c.id,
        )

    def _insert(self, repo: _Repo, number: int, body: str, login: str, base: str) -> _Comment:
        """Store a new comment (caller holds the lock)."""
        comment_id = next(self._comment_ids)
        now = self._now_iso()
        data = {
            "id": comment_id,
            "node_id": f"IC_kwFAKE{comment_id}",
            "url": f"{base}/repos/{repo.full_name}/issues/comments/{comment_id}",
            "html_url": f"https://github.com/{repo.full_name}/issues/{number}"
            f"#issuecomment-{comment_id}",
            "issue_url": f"{base}/repos/{repo.full_name}/issues/{number}",
            "body": body,
            "user": {
                "login": login,
                "id": self._user_id(login),
                "type": "Bot" if login.endswith("[bot]") else "User",
            },
            "created_at": now,
            "updated_at": now,
            "author_association": "NONE",
            "performed_via_github_app": self._app_json(login),
            "reactions": {
                "total_count": 0,
                "+1": 0,
                "-1": 0,
                "laugh": 0,
                "hooray": 0,
                "confused": 0,
                "heart": 0,
                "rocket": 0,
                "eyes": 0,
            },
        }
        comment = _Comment(comment_id, repo.full_name.lower(), number, data)
        self._comments[comment_id] = comment
        return comment

    def _app_json(self, login: str) -> dict[str, Any] | None:
        """The App a bot login acts for, as comments name it (caller holds the lock)."""
        for app in self._apps.values():
            if app.bot_login == login:
                return {"id": app.id, "slug": app.slug, "node_id": f"A_kwFAKE{app.id}",
                        "name": app.name, "owner": {"login": "octo-org"}}
        return None

    def _user_id(self, login: str) -> int:
        """A stable numeric id per login (caller holds the lock)."""
        return self._user_ids.setdefault(login, 1_000 + len(self._user_ids))

    def _now_iso(self) -> str:
        return _iso(self._clock())


def _search_terms(query: str) -> list[tuple[str, str]]:
    """``key:value`` terms of a search query (quoted values unquoted), lower-cased keys."""
    terms = []
    for match in re.finditer(r'(\w+):("[^"]*"|\S+)', query):
        terms.append((match.group(1).lower(), match.group(2).strip('"')))
    return terms


def _s256(verifier: str) -> str:
    """The PKCE S256 challenge of ``verifier``."""
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _iso(when: float) -> str:
    """Unix seconds as GitHub's UTC timestamp (``2026-01-15T10:13:20Z``)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


async def _comment_body(request: Request) -> str | Response:
    """The ``body`` field of a create/update request, or GitHub's 400/422 answer."""
    try:
        payload = json.loads(await request.body())
    except ValueError:
        return github_error(400, "Problems parsing JSON")
    if not isinstance(payload, dict) or not isinstance(payload.get("body"), str):
        return github_error(422, 'Invalid request.\n\n"body" wasn\'t supplied.')
    body: str = payload["body"]
    if len(body) > MAX_BODY:
        error = {
            "resource": "IssueComment",
            "code": "custom",
            "field": "body",
            "message": f"Body is too long (maximum is {MAX_BODY} characters)",
        }
        return github_error(422, "Validation Failed", errors=[error])
    return body


def _paged(request: Request, items: list[dict[str, Any]],
           wrap: Callable[[list[dict[str, Any]]], Any]) -> JSONResponse:
    """One page of ``items`` (``per_page``, default 30, at most 100; ``page``), wrapped as
    the endpoint answers, with GitHub's ``Link`` header."""
    per_page = _clamp(request.query_params.get("per_page"), default=30, low=1, high=100)
    page = _clamp(request.query_params.get("page"), default=1, low=1, high=10**6)
    chunk = items[(page - 1) * per_page : page * per_page]
    last = max(1, math.ceil(len(items) / per_page))
    return JSONResponse(wrap(chunk), headers=_link_header(request, per_page, page, last))


def _link_header(request: Request, per_page: int, page: int, last: int) -> dict[str, str]:
    """GitHub's ``Link`` header (next/last/first/prev), or nothing for a single page."""
    if last <= 1 and page <= 1:
        return {}

    def url(n: int) -> str:
        query = urlencode({"per_page": per_page, "page": n})
        return f"{_base(request)}{request.url.path}?{query}"

    links = []
    if page > 1:
        links.append(f'<{url(min(page - 1, last))}>; rel="prev"')
    if page < last:
        links.append(f'<{url(page + 1)}>; rel="next"')
        links.append(f'<{url(last)}>; rel="last"')
    if page > 1:
        links.append(f'<{url(1)}>; rel="first"')
    return {"Link": ", ".join(links)}


def _base(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}"


def _int(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def _clamp(text: str | None, *, default: int, low: int, high: int) -> int:
    value = _int(text) if text else None
    return default if value is None else min(high, max(low, value))


__all__ = [
    "DEFAULT_LOGIN",
    "DEFAULT_TOKEN",
    "FakeGitHub",
    "github_error",
]
