"""Composition root: build every dependency from the config; ``create_app(services)``.

Only this module and ``cli.py`` see everything. Roles: ``all`` (web + worker,
the default), ``web`` (accept deliveries only) and ``worker`` (run jobs only,
still serving the health endpoints).
"""

from __future__ import annotations

import base64
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx
from starlette.applications import Starlette
from starlette.routing import Route

from service.accounts import CoderTokens, audit_tokens
from service.coder.detect import ApiDetector, backend_factory
from service.coder.oauth2 import CoderOAuth
from service.config import Config
from service.core.events import Change, Comment, Decision, Ignored, Trigger
from service.core.pacing import Window
from service.errors import ConfigError, InvalidConfig, StoreError
from service.http import build_http_client
from service.logging import get_logger
from service.store import open_store
from service.store.base import Store
from service.trackers.base import IssueTracker
from service.trackers.github import webhook as github_webhook
from service.trackers.github.api import GitHubAuth, GitHubClient, TokenAuth
from service.trackers.github.app_auth import AppAuth
from service.trackers.github.oauth import GitHubSignIn
from service.trackers.github.ratelimit import ContentRateLimiter
from service.trackers.github.sweep import GitHubSweep
from service.trackers.linear import webhook as linear_webhook
from service.trackers.linear.api import LinearClient
from service.trackers.linear.oauth import LinearSignIn
from service.trackers.linear.sweep import LinearSweep
from service.vault import Vault
from service.web.admin import AdminApi
from service.web.connect import ConnectPage, SignIn
from service.web.health import MetricsEndpoint, Readiness, healthz
from service.web.ingest import GroupCommitter
from service.web.sessions import Sessions
from service.web.webhooks import Intake, WebhookEndpoint
from service.worker.context import WorkerContext
from service.worker.delegator import Delegator
from service.worker.loop import Worker, worker_id
from service.worker.reconcile import Reconciler, Source

Role = Literal["all", "web", "worker"]
DEV_KEY_FILE = Path("data") / "dev-encryption.key"
SHUTDOWN_GRACE_SECONDS = 20.0
SESSION_PURPOSE = "connect-sessions"
#: The longest a job waits for room under GitHub's content limits (80 a minute, 500 an
#: hour) before it is deferred instead: its worker slot goes to the next job (other
#: issues' tasks, Linear), and it runs again when there is room, its attempt uncounted.
MAX_PACING_WAIT_SECONDS = 5.0

log = get_logger("service.app")


def load_vault(config: Config) -> Vault:
    """The token vault from ``security.encryption_keys``.

    With the built-in development defaults (no config file) a key is generated
    once into ``data/dev-encryption.key`` (mode 0600) with a loud warning.
    """
    if config.security.encryption_keys:
        return Vault(list(config.security.encryption_keys))
    if not config.is_development_default:
        raise ValueError("security.encryption_keys is required")  # load_config prevents this
    if not DEV_KEY_FILE.exists():
        DEV_KEY_FILE.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(DEV_KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(base64.b64encode(os.urandom(32)).decode() + "\n")
        log.warning("dev_key_generated", path=str(DEV_KEY_FILE),
                    note="development only: set security.encryption_keys in production")
    return Vault([base64.b64decode(DEV_KEY_FILE.read_text().strip())])


class StoreLedger:
    """GitHub's content budget kept in the database, shared by every replica: GitHub
    counts writes per token, not per process (``trackers.github.ratelimit.Ledger``)."""

    def __init__(self, store: Store, budget: str) -> None:
        self.store = store
        self.budget = budget

    async def take(self, now: float, windows: Sequence[Window]) -> float:
        return await self.store.take_budget(self.budget, now=now, windows=windows)

    async def wait(self, now: float, windows: Sequence[Window]) -> float:
        return await self.store.take_budget(self.budget, now=now, windows=windows, take=False)


def build_trackers(config: Config, http: httpx.AsyncClient,
                   store: Store | None = None) -> dict[str, IssueTracker]:
    """One comment client per configured tracker. With ``store``, GitHub's content
    limits are counted in the database, across replicas.

    Raises ``InvalidConfig`` when the GitHub App private key cannot be used.
    """
    trackers: dict[str, IssueTracker] = {}
    github = config.github
    if github is not None:
        auth: GitHubAuth
        if github.app_id is not None and github.private_key is not None:
            try:
                auth = AppAuth(github.api_url, github.app_id, github.private_key.reveal(),
                               http=http)
            except ValueError as exc:
                raise InvalidConfig([ConfigError("github.private_key", str(exc))]) from None
        elif github.token is not None:
            auth = TokenAuth(github.token.reveal())
        else:  # load_config requires one of the two
            raise InvalidConfig([ConfigError("github.token", "no GitHub credential")])
        limiter = (ContentRateLimiter(github.content_windows, clock=time.time,
                                      ledger=StoreLedger(store, "github-content"))
                   if store is not None else ContentRateLimiter(github.content_windows))
        trackers["github"] = GitHubClient(github.api_url, auth, http=http, limiter=limiter,
                                            max_pacing_wait=MAX_PACING_WAIT_SECONDS)
    linear = config.linear
    if linear is not None and linear.api_key is not None:
        trackers["linear"] = LinearClient(linear.api_url, linear.api_key.reveal(), http=http)
    return trackers


def build_intakes(
    config: Config, clock: Callable[[], float] = time.time
) -> dict[str, Intake | None]:
    """How each tracker's deliveries are checked and read; None where the tracker is not
    configured (its deliveries are answered 404)."""
    intakes: dict[str, Intake | None] = {"github": None, "linear": None}
    command = config.delegation.command
    if config.github is not None:
        github = config.github
        github_secrets = [s.reveal() for s in github.webhook_secrets]

        def parse_github(headers: Mapping[str, str], body: bytes) -> Decision:
            decision = github_webhook.parse_github_delivery(
                headers, body, secrets=github_secrets, trigger_label=github.trigger_label,
                command=command)
            return _only_enabled(decision, github.enabled, "repository not enabled")

        intakes["github"] = Intake(github_webhook.signature_header, parse_github)
    if config.linear is not None:
        linear = config.linear
        linear_secrets = [s.reveal() for s in linear.webhook_secrets]

        def parse_linear(headers: Mapping[str, str], body: bytes) -> Decision:
            decision = linear_webhook.parse_linear_delivery(
                headers, body, secrets=linear_secrets, trigger_label=linear.trigger_label,
                now=clock(), command=command)
            return _only_enabled(decision, linear.enabled, "team not enabled")

        intakes["linear"] = Intake(linear_webhook.signature_header, parse_linear)
    return intakes


def _only_enabled(decision: Decision, enabled: Callable[[str], bool], reason: str) -> Decision:
    """``decision``, unless it asks for work in a repository or team outside the
    allowlist (``github.repositories``, ``linear.teams``): then ignored, stored nowhere."""
    if isinstance(decision, Trigger | Comment | Change) and not enabled(decision.event.scope):
        return Ignored(reason, code="not_enabled")
    return decision


def remote_services(config: Config) -> list[tuple[str, str]]:
    """Base URL → service name, for the metrics of outbound calls."""
    services = [(config.coder.url, "coder")]
    if config.github is not None:
        services.append((config.github.api_url, "github"))
    if config.linear is not None:
        services.append((config.linear.api_url, "linear"))
    return services


@dataclass
class Services:
    """Everything a running bridge holds; ``close()`` releases it all."""

    config: Config
    store: Store
    vault: Vault
    http: httpx.AsyncClient
    role: Role = "all"
    committer: GroupCommitter | None = None
    worker: Worker | None = None
    intakes: dict[str, Intake | None] = field(default_factory=dict)
    connect: ConnectPage | None = None
    reconciler: Reconciler | None = None
    clock: Callable[[], float] = time.time

    async def start(self) -> None:
        """Start the group-commit writer, the worker loop and the periodic sweep, as the
        role asks."""
        if self.committer is not None:
            await self.committer.start()
        if self.worker is not None:
            await self.worker.start()
            if self.reconciler is not None:
                self.reconciler.start(self.config.reconcile.interval)

    async def close(self) -> None:
        """Stop accepting, commit what was submitted, drain the worker, close connections.

        Safe after a start that failed half-way: whatever was opened is closed.
        """
        try:
            if self.reconciler is not None:
                await self.reconciler.stop()
            if self.committer is not None:
                await self.committer.stop()
            if self.worker is not None:
                await self.worker.stop(SHUTDOWN_GRACE_SECONDS)
        finally:
            await self.http.aclose()
            await self.store.close()


async def build_services(
    config: Config, *, role: Role = "all", migrate: bool = True,
    trackers: dict[str, IssueTracker] | None = None,
    clock: Callable[[], float] = time.time,
) -> Services:
    """Open the store (migrating unless told not to) and wire the web and worker halves.

    Whatever was opened is closed again if a later step fails.
    """
    store = await open_store(config.storage.url)
    http: httpx.AsyncClient | None = None
    try:
        if migrate:
            await store.migrate()
        vault = load_vault(config)
        await _audit_tokens(store, vault)
        http = build_http_client(remote_services(config), timeout=config.coder.timeout)
        return _wire(Services(config=config, store=store, vault=vault, http=http, role=role,
                              clock=clock), trackers)
    except BaseException:
        if http is not None:
            await http.aclose()
        await store.close()
        raise


async def _audit_tokens(store: Store, vault: Vault) -> None:
    """Say loudly at start when configured keys do not open stored tokens (a rotation
    that dropped the old key, another deployment's key on this database): found now,
    not on the first labelled issue."""
    try:
        audit = await audit_tokens(store, vault)
    except StoreError as exc:  # e.g. the schema is behind with --no-migrate: /readyz says so
        log.warning("token_audit_skipped", error=str(exc))
        return
    if audit.unopened:
        log.error("tokens_undecryptable", stored=audit.stored, unopened=len(audit.unopened),
                  accounts=list(audit.unopened), missing_keys=list(audit.missing_keys),
                  note="no key in security.encryption_keys opens these tokens: add the key "
                       "they were encrypted with (then `coder-bridge keys rotate`), or these "
                       "people must connect again; their issues fail until then")


def build_reconciler(config: Config, store: Store, trackers: Mapping[str, IssueTracker], *,
                     owner: str, clock: Callable[[], float] = time.time) -> Reconciler:
    """The reconciliation sweep over the configured trackers."""
    sources: dict[str, Source] = {}
    github, linear = trackers.get("github"), trackers.get("linear")
    if config.github is not None and isinstance(github, GitHubClient):
        sources["github"] = GitHubSweep(github, config.github)
    if config.linear is not None and isinstance(linear, LinearClient):
        sources["linear"] = LinearSweep(linear, config.linear)
    return Reconciler(store, sources, lookback=config.reconcile.lookback, owner=owner,
                      clock=clock)


def build_coder_oauth(config: Config, http: httpx.AsyncClient) -> CoderOAuth | None:
    """"Connect with Coder" (Coder's OAuth2 provider), when ``coder.oauth2_client_id`` is
    set; also what refreshes the tokens it issued."""
    client = config.coder.oauth2
    if client is None:
        return None
    return CoderOAuth(config.coder.url, client.client_id, client.client_secret.reveal(),
                      redirect_uri=f"{config.server.public_url}/connect/coder/callback",
                      http=http, timeout=config.coder.timeout)


def build_sign_in(config: Config, http: httpx.AsyncClient) -> dict[str, SignIn]:
    """The /connect page's sign-in providers: those with an OAuth client configured."""
    providers: dict[str, SignIn] = {}
    public = config.server.public_url
    if config.github is not None and config.github.oauth is not None:
        github = config.github
        assert github.oauth is not None
        providers["github"] = GitHubSignIn(
            web_url=github.web_url, api_url=github.api_url, client_id=github.oauth.client_id,
            client_secret=github.oauth.client_secret.reveal(),
            redirect_uri=f"{public}/connect/github/callback", http=http)
    if config.linear is not None and config.linear.oauth is not None:
        linear = config.linear
        assert linear.oauth is not None
        providers["linear"] = LinearSignIn(
            web_url=linear.web_url, api_url=linear.api_url, client_id=linear.oauth.client_id,
            client_secret=linear.oauth.client_secret.reveal(),
            redirect_uri=f"{public}/connect/linear/callback", http=http)
    return providers


def _wire(services: Services, trackers: dict[str, IssueTracker] | None) -> Services:
    """Give ``services`` the worker and web halves its role asks for."""
    config, store, clock, http, role = (services.config, services.store, services.clock,
                                        services.http, services.role)
    coder_oauth = build_coder_oauth(config, http)
    tokens = CoderTokens(store, services.vault, coder_oauth, clock=clock)
    trackers = trackers if trackers is not None else build_trackers(config, http, store)
    services.reconciler = build_reconciler(config, store, trackers, owner=worker_id(),
                                           clock=clock)
    if role in ("all", "worker"):
        delegator = Delegator(WorkerContext(
            config=config, store=store, vault=services.vault,
            coder_backend=backend_factory(config.coder, http, ApiDetector()),
            trackers=trackers, clock=clock, tokens=tokens,
        ))
        services.worker = Worker(store=store, delegator=delegator, config=config.worker,
                                 clock=clock)
    if role in ("all", "web"):
        on_commit = services.worker.wake if services.worker is not None else None
        services.committer = GroupCommitter(store, on_commit=on_commit)
        services.intakes = build_intakes(config, clock)
        services.connect = ConnectPage(
            config=config, store=store, vault=services.vault, http=http,
            sessions=Sessions(services.vault.derive(SESSION_PURPOSE),
                              secure=config.server.public_url.startswith("https://"),
                              clock=clock),
            tokens=tokens, sign_in=build_sign_in(config, http), coder_oauth=coder_oauth,
            clock=clock)
    return services


def create_app(services: Services) -> Starlette:
    """The ASGI app: webhooks (web role), health, readiness and metrics (every role)."""
    config = services.config
    worker = services.worker
    readiness = Readiness(
        store=services.store,
        worker_heartbeat=(lambda: worker.heartbeat) if worker is not None else None,
        heartbeat_max_age=max(30.0, 5 * config.worker.poll_interval),
        key_ids=services.vault.key_ids,
        clock=services.clock,
    )
    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readiness.handle, methods=["GET"]),
        Route("/metrics", MetricsEndpoint(services.store, services.vault.key_ids,
                                          services.clock).handle, methods=["GET"]),
    ]
    if services.connect is not None:
        routes += services.connect.routes()
    admin_token = config.security.admin_token
    if admin_token and services.role in ("all", "web"):
        routes += AdminApi(services.store, admin_token, services.reconciler,
                           clock=services.clock).routes()
    if services.committer is not None:
        webhooks = WebhookEndpoint(services.intakes, services.committer,
                                   max_body_bytes=config.server.max_body_bytes,
                                   clock=services.clock)
        routes.append(Route("/webhooks/{tracker}", webhooks, methods=["POST"]))

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        try:
            await services.start()
            log.info("bridge_started", role=services.role)
            yield
        finally:
            await services.close()
            log.info("bridge_stopped")

    return Starlette(routes=routes, lifespan=lifespan)
