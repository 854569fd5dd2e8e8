"""Configuration: TOML → frozen dataclasses, fully checked once at start-up.

Every string value may be ``"env:NAME"`` (read from the environment) or
``"file:/path"`` (read from a file, one trailing newline stripped). Unknown
keys are errors. ``load_config`` collects every problem and raises
``InvalidConfig`` listing them all, each naming its dotted key; nothing reads
the environment after start-up. Secrets are wrapped in ``Secret`` so that a
repr or a log line never shows them.
"""

from __future__ import annotations

import fnmatch
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlparse

from service.errors import ConfigError, InvalidConfig, VaultError
from service.vault import parse_key

T = TypeVar("T")
N = TypeVar("N", int, float)

DEFAULT_TRIGGER_LABEL = "delegate-to-agent"
DEFAULT_COMMAND = "/agent"
#: owner/name, where either part may be a glob (``acme/*``, ``acme/api-*``).
_REPOSITORY_GLOB = re.compile(r"[A-Za-z0-9_.*?\[\]-]+/[A-Za-z0-9_.*?\[\]-]+")
_TEAM_KEY = re.compile(r"[A-Za-z0-9_]{1,20}")
STATUS_LABEL_PREFIX = "agent: "
ACTING_USER_CHOICES = ("author", "labeler")
CODER_API_CHOICES = ("auto", "tasks", "chats")


class Secret:
    """A secret string whose repr and str never show the value; ``reveal()`` returns it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself: pass it only to the code that must send or check it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True)
class ServerConfig:
    """``[server]``: where the HTTP server listens and how people reach it."""

    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = "http://127.0.0.1:8080"
    max_body_bytes: int = 26_214_400


@dataclass(frozen=True)
class StorageConfig:
    """``[storage]``: ``sqlite:///path`` or ``postgresql://...``."""

    url: str = "sqlite:///./data/coder-bridge.db"


@dataclass(frozen=True)
class SecurityConfig:
    """``[security]``: token encryption keys (first encrypts, all decrypt) and the admin token."""

    encryption_keys: tuple[bytes, ...] = ()
    admin_token: Secret | None = None

    def __repr__(self) -> str:
        keys = len(self.encryption_keys)
        return f"SecurityConfig(encryption_keys=<{keys} keys>, admin_token=...)"


@dataclass(frozen=True)
class OAuthClient:
    """An OAuth application the bridge signs people in with (or connects Coder with)."""

    client_id: str
    client_secret: Secret


@dataclass(frozen=True)
class CoderConfig:
    """``[coder]``: the Coder deployment and the default template and preset."""

    url: str = "http://127.0.0.1:3000"
    organization: str = "default"
    template: str = ""
    preset: str = ""
    api: Literal["auto", "tasks", "chats"] = "auto"
    timeout: float = 30.0
    workspace_build_timeout: float = 600.0
    oauth2: OAuthClient | None = None


#: Seconds added to GitHub's content-limit windows (see ``GitHubConfig.content_windows``).
PACING_MARGIN = 1.0


@dataclass(frozen=True)
class GitHubConfig:
    """``[github]``: webhook secrets, API endpoint and credentials (token or App)."""

    webhook_secrets: tuple[Secret, ...]
    api_url: str = "https://api.github.com"
    token: Secret | None = None
    app_id: int | None = None
    private_key: Secret | None = None
    trigger_label: str = DEFAULT_TRIGGER_LABEL
    comments_per_minute: int = 80
    comments_per_hour: int = 500
    status_labels: bool = False
    web_url: str = "https://github.com"
    oauth: OAuthClient | None = None
    repositories: tuple[str, ...] = ()

    def enabled(self, repository: str) -> bool:
        """Whether the bridge acts on ``owner/name`` (every repository when the list is
        empty); globs, case-insensitive."""
        return not self.repositories or any(
            fnmatch.fnmatchcase(repository.lower(), pattern.lower())
            for pattern in self.repositories)

    @property
    def content_windows(self) -> tuple[tuple[int, float], ...]:
        """(limit, seconds) windows for comment creation and edits; 0 disables a window.

        Each window is ``PACING_MARGIN`` longer than GitHub's: GitHub counts requests as
        they arrive, and a write sent a minute after another may arrive a little less
        than a minute after it when the first one was slower on the way."""
        windows = ((self.comments_per_minute, 60.0), (self.comments_per_hour, 3600.0))
        return tuple((limit, span + PACING_MARGIN) for limit, span in windows if limit > 0)


@dataclass(frozen=True)
class LinearConfig:
    """``[linear]``: webhook secrets, GraphQL endpoint and API key."""

    webhook_secrets: tuple[Secret, ...]
    api_url: str = "https://api.linear.app/graphql"
    api_key: Secret | None = None
    trigger_label: str = DEFAULT_TRIGGER_LABEL
    web_url: str = "https://linear.app"
    oauth: OAuthClient | None = None
    teams: tuple[str, ...] = ()

    def enabled(self, team: str) -> bool:
        """Whether the bridge acts on issues of team ``team`` (its key, e.g. ``ENG``;
        every team when the list is empty)."""
        return not self.teams or team.lower() in (t.lower() for t in self.teams)


@dataclass(frozen=True)
class DelegationConfig:
    """``[delegation]``: whose Coder account runs the task, tried in order, and the word
    that starts a command in an issue comment."""

    acting_user: tuple[str, ...] = ("author",)
    command: str = DEFAULT_COMMAND


@dataclass(frozen=True)
class SyncConfig:
    """``[sync]``: how the comment follows the work. ``interval`` 0 turns status checks
    off; ``max_runtime`` 0 means no limit."""

    interval: float = 15.0
    stop_on_unlabel: bool = True
    stop_on_close: bool = True
    max_runtime: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.interval > 0


@dataclass(frozen=True)
class ReconcileConfig:
    """``[reconcile]``: how often to look for labelled issues whose webhook never arrived
    (0: only on demand), and how far back."""

    interval: float = 900.0
    lookback: float = 86400.0


@dataclass(frozen=True)
class WorkerConfig:
    """``[worker]``: job concurrency, retry budget, lease length and idle poll interval."""

    concurrency: int = 4
    max_attempts: int = 8
    lease_seconds: float = 120.0
    poll_interval: float = 1.0


@dataclass(frozen=True)
class RouteMatch:
    """``routes[].match``: ``provider``, and a ``repository`` glob (GitHub) or ``team`` (Linear)."""

    provider: Literal["github", "linear"]
    repository: str | None = None
    team: str | None = None

    def matches(self, tracker: str, scope: str) -> bool:
        """True if an issue of ``tracker`` in ``scope`` (``owner/repo`` or team key) matches."""
        if tracker != self.provider:
            return False
        if self.repository is not None:
            return fnmatch.fnmatchcase(scope.lower(), self.repository.lower())
        if self.team is not None:
            return scope.lower() == self.team.lower()
        return True


@dataclass(frozen=True)
class Route:
    """``[[routes]]``: issues matching ``match`` use this template and preset."""

    match: RouteMatch
    template: str
    preset: str = ""


@dataclass(frozen=True)
class Config:
    """The whole configuration. ``source`` is the file it came from (None: built-in defaults)."""

    server: ServerConfig = field(default_factory=ServerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    coder: CoderConfig = field(default_factory=CoderConfig)
    github: GitHubConfig | None = None
    linear: LinearConfig | None = None
    delegation: DelegationConfig = field(default_factory=DelegationConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    reconcile: ReconcileConfig = field(default_factory=ReconcileConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    routes: tuple[Route, ...] = ()
    source: Path | None = None

    @property
    def is_development_default(self) -> bool:
        """True when no config file was found and built-in defaults are in use."""
        return self.source is None

    def route_for(self, tracker: str, scope: str) -> tuple[str, str]:
        """(template, preset) for an issue: the first matching route, else ``[coder]``."""
        for route in self.routes:
            if route.match.matches(tracker, scope):
                return route.template, route.preset
        return self.coder.template, self.coder.preset


def _is_https_or_loopback(url: str) -> bool:
    """An https URL, or an http one on this machine (development)."""
    parsed = urlparse(url)
    return parsed.scheme == "https" or parsed.hostname in ("127.0.0.1", "localhost", "::1")


def resolve_config_path(cli_path: str | None, environ: Mapping[str, str]) -> Path | None:
    """``--config``, else ``$CODER_BRIDGE_CONFIG``, else ``./config.toml`` if present, else None."""
    if cli_path:
        return Path(cli_path)
    if environ.get("CODER_BRIDGE_CONFIG"):
        return Path(environ["CODER_BRIDGE_CONFIG"])
    default = Path("config.toml")
    return default if default.exists() else None


#: What a command that does not serve may leave unresolved: ``needs`` lists key prefixes.
EVERYTHING: tuple[str, ...] = ("",)
STORE_ONLY = ("storage.", "security.encryption_keys")


def load_config(path: Path | None, environ: Mapping[str, str] | None = None, *,
                needs: tuple[str, ...] = EVERYTHING) -> Config:
    """Load and check the configuration at ``path`` (None: development defaults).

    ``needs``: the keys (dotted prefixes) the caller uses. An ``env:``/``file:``
    reference elsewhere that cannot be resolved is then no problem: the value is left
    empty (``users list`` needs no tracker secret). Raises ``InvalidConfig`` listing
    every problem, each naming its key.
    """
    env = os.environ if environ is None else environ
    if path is None:
        return Config()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidConfig([ConfigError("--config", f"file {path} does not exist")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidConfig([ConfigError("--config", f"cannot read {path}: {exc}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidConfig([ConfigError("--config", f"{path} is not valid TOML: {exc}")]) from None
    reader = _Reader(env, needs)
    config = reader.config(raw, path)
    if reader.problems:
        raise InvalidConfig(reader.problems)
    return config


#: The value of a reference the caller does not need and that could not be resolved.
UNRESOLVED = "<unresolved>"


class _Missing(Exception):
    """Internal: a required value was absent or invalid; the problem is already recorded."""


class _Reader:
    """Walks the parsed TOML, resolving references and recording every problem."""

    def __init__(self, environ: Mapping[str, str], needs: tuple[str, ...] = EVERYTHING) -> None:
        self.environ = environ
        self.needs = needs
        self.problems: list[ConfigError] = []

    # -- the sections --------------------------------------------------------------
    def config(self, raw: dict[str, Any], path: Path) -> Config:
        sections = ("server", "storage", "security", "coder", "github", "linear",
                    "delegation", "sync", "reconcile", "worker", "routes")
        self._reject_unknown("", raw, sections)
        for name in sections[:-1]:
            if name in raw and not isinstance(raw[name], dict):
                self._problem(name, "must be a table ([" + name + "])")
                raw[name] = {}
        server = self._section(raw.get("server", {}), self.server)
        storage = self._section(raw.get("storage", {}), self.storage)
        security = self._section(raw.get("security", {}), self.security)
        coder = self._section(raw.get("coder"), self.coder, required="coder")
        github = self._section(raw["github"], self.github) if "github" in raw else None
        linear = self._section(raw["linear"], self.linear) if "linear" in raw else None
        delegation = self._section(raw.get("delegation", {}), self.delegation)
        sync = self._section(raw.get("sync", {}), self.sync)
        reconcile = self._section(raw.get("reconcile", {}), self.reconcile)
        worker = self._section(raw.get("worker", {}), self.worker)
        routes = self.routes(raw.get("routes", []))
        if None in (server, storage, security, coder, delegation, sync, reconcile, worker):
            return Config(source=path)
        assert server is not None and coder is not None
        oauth_keys = [key for key, client in (
            ("github.oauth_client_id", github.oauth if github else None),
            ("linear.oauth_client_id", linear.oauth if linear else None),
            ("coder.oauth2_client_id", coder.oauth2)) if client is not None]
        if oauth_keys and not _is_https_or_loopback(server.public_url):
            self._problem("server.public_url", "must be an https URL when sign-in or Connect "
                          f"with Coder is configured ({', '.join(oauth_keys)}): the session "
                          "cookies and OAuth redirects must not travel in the clear")
        assert server and storage and security and coder and delegation and sync and worker
        assert reconcile is not None
        return Config(server=server, storage=storage, security=security, coder=coder,
                      github=github, linear=linear, delegation=delegation, sync=sync,
                      reconcile=reconcile, worker=worker, routes=routes, source=path)

    def _section(
        self, raw: dict[str, Any] | None, build: Callable[[dict[str, Any]], T],
        required: str | None = None,
    ) -> T | None:
        if raw is None:
            if required:
                self._problem(required, f"the [{required}] section is required")
            return None
        try:
            return build(raw)
        except _Missing:
            return None

    def server(self, raw: dict[str, Any]) -> ServerConfig:
        self._reject_unknown("server", raw, ("host", "port", "public_url", "max_body_bytes"))
        host = self._str(raw, "server.host", "127.0.0.1")
        port = self._int(raw, "server.port", 8080, minimum=1, maximum=65535)
        public_url = self._url(raw, "server.public_url", f"http://{host}:{port}")
        max_body = self._int(raw, "server.max_body_bytes", 26_214_400, minimum=1024)
        return ServerConfig(host, port, public_url.rstrip("/"), max_body)

    def storage(self, raw: dict[str, Any]) -> StorageConfig:
        self._reject_unknown("storage", raw, ("url",))
        url = self._str(raw, "storage.url", StorageConfig.url)
        if not url.startswith(("sqlite:///", "postgresql://", "postgres://")):
            self._problem("storage.url", "must start with sqlite:/// or postgresql://")
        return StorageConfig(url)

    def security(self, raw: dict[str, Any]) -> SecurityConfig:
        self._reject_unknown("security", raw, ("encryption_keys", "admin_token"))
        keys: list[bytes] = []
        texts = self._str_list(raw, "security.encryption_keys", [])
        if not texts:
            self._problem("security.encryption_keys",
                          "at least one key is required (base64 of 32 random bytes; "
                          "make one with: python -c \"import os,base64;"
                          "print(base64.b64encode(os.urandom(32)).decode())\")")
        for index, text in enumerate(texts):
            try:
                keys.append(parse_key(text.reveal()))
            except VaultError as exc:
                self._problem(f"security.encryption_keys[{index}]", str(exc))
        admin = self._str(raw, "security.admin_token", "", secret=True)
        return SecurityConfig(tuple(keys), Secret(admin) if admin else None)

    def coder(self, raw: dict[str, Any]) -> CoderConfig:
        self._reject_unknown(
            "coder", raw, ("url", "organization", "template", "preset", "api", "timeout",
                           "workspace_build_timeout", "oauth2_client_id",
                           "oauth2_client_secret"))
        if "url" not in raw:
            self._problem("coder.url",
                          "is required (the Coder deployment, e.g. https://coder.example.com)")
        url = self._url(raw, "coder.url", "http://127.0.0.1:3000").rstrip("/")
        parsed = urlparse(url)
        if parsed.path or parsed.query or parsed.fragment:
            self._problem("coder.url", f"must be the deployment's address without a path: "
                          f"{parsed.scheme}://{parsed.netloc}, not {url} (the bridge adds "
                          "/api/v2 and the other paths itself)")
        api = self._str(raw, "coder.api", "auto")
        if api not in CODER_API_CHOICES:
            choices = ", ".join(CODER_API_CHOICES)
            self._problem("coder.api", f"must be one of {choices}, not {api!r}")
            api = "auto"
        return CoderConfig(
            url=url,
            organization=self._str(raw, "coder.organization", "default", nonempty=True),
            template=self._str(raw, "coder.template", ""),
            preset=self._str(raw, "coder.preset", ""),
            api=api,  # type: ignore[arg-type]  # checked against CODER_API_CHOICES above
            timeout=self._float(raw, "coder.timeout", 30.0, minimum=0.1),
            workspace_build_timeout=self._float(raw, "coder.workspace_build_timeout", 600.0,
                                                minimum=1),
            oauth2=self._oauth(raw, "coder.oauth2_client_id", "coder.oauth2_client_secret"),
        )

    def github(self, raw: dict[str, Any]) -> GitHubConfig:
        self._reject_unknown("github", raw, ("webhook_secret", "api_url", "token", "app_id",
                                             "private_key", "trigger_label",
                                             "comments_per_minute", "comments_per_hour",
                                             "status_labels", "web_url", "oauth_client_id",
                                             "oauth_client_secret", "repositories"))
        secrets = self._secrets(raw, "github.webhook_secret")
        token = self._str(raw, "github.token", "", secret=True)
        app_id = self._int(raw, "github.app_id", 0, minimum=1) if "app_id" in raw else None
        private_key = self._str(raw, "github.private_key", "", secret=True)
        if token and (app_id or private_key):
            self._problem("github.token", "set either token or app_id + private_key, not both")
        if bool(app_id) != bool(private_key):
            key = "github.private_key" if app_id else "github.app_id"
            self._problem(key, "app_id and private_key must be set together")
        if not token and "token" not in raw and not app_id and not private_key:
            self._problem("github.token", "set a token, or app_id + private_key, to post comments")
        trigger_label = self._str(raw, "github.trigger_label", DEFAULT_TRIGGER_LABEL,
                                  nonempty=True)
        if trigger_label.lower().startswith(STATUS_LABEL_PREFIX):
            self._problem("github.trigger_label",
                          f"must not start with {STATUS_LABEL_PREFIX!r}: those are the status "
                          "labels (github.status_labels)")
        return GitHubConfig(
            webhook_secrets=secrets,
            api_url=self._url(raw, "github.api_url", "https://api.github.com").rstrip("/"),
            token=Secret(token) if token else None,
            app_id=app_id,
            private_key=Secret(private_key) if private_key else None,
            trigger_label=trigger_label,
            comments_per_minute=self._int(raw, "github.comments_per_minute", 80, minimum=0),
            comments_per_hour=self._int(raw, "github.comments_per_hour", 500, minimum=0),
            status_labels=self._bool(raw, "github.status_labels", False),
            web_url=self._url(raw, "github.web_url", "https://github.com").rstrip("/"),
            oauth=self._oauth(raw, "github.oauth_client_id", "github.oauth_client_secret"),
            repositories=self._names(raw, "github.repositories", shape="owner/name",
                                     pattern=_REPOSITORY_GLOB),
        )

    def linear(self, raw: dict[str, Any]) -> LinearConfig:
        self._reject_unknown("linear", raw, ("webhook_secret", "api_url", "api_key",
                                             "trigger_label", "web_url", "oauth_client_id",
                                             "oauth_client_secret", "teams"))
        secrets = self._secrets(raw, "linear.webhook_secret")
        api_key = self._str(raw, "linear.api_key", "", secret=True)
        if not api_key:
            self._problem("linear.api_key", "is required to post comments on Linear issues")
        return LinearConfig(
            webhook_secrets=secrets,
            api_url=self._url(raw, "linear.api_url", "https://api.linear.app/graphql"),
            api_key=Secret(api_key) if api_key else None,
            trigger_label=self._str(raw, "linear.trigger_label", DEFAULT_TRIGGER_LABEL,
                                    nonempty=True),
            web_url=self._url(raw, "linear.web_url", "https://linear.app").rstrip("/"),
            oauth=self._oauth(raw, "linear.oauth_client_id", "linear.oauth_client_secret"),
            teams=self._names(raw, "linear.teams", shape="a team key such as ENG",
                              pattern=_TEAM_KEY),
        )

    def delegation(self, raw: dict[str, Any]) -> DelegationConfig:
        self._reject_unknown("delegation", raw, ("acting_user", "command"))
        choices = self._plain_list(raw, "delegation.acting_user", ["author"])
        if not choices:
            self._problem("delegation.acting_user", "must name at least one of author, labeler")
        for choice in choices:
            if choice not in ACTING_USER_CHOICES:
                self._problem("delegation.acting_user",
                              f"{choice!r} is not one of {', '.join(ACTING_USER_CHOICES)}")
        if len(set(choices)) != len(choices):
            self._problem("delegation.acting_user", "lists the same choice twice")
        command = self._str(raw, "delegation.command", DEFAULT_COMMAND, nonempty=True)
        if len(command.split()) != 1:
            self._problem("delegation.command", f"must be one word, like {DEFAULT_COMMAND}")
            command = DEFAULT_COMMAND
        return DelegationConfig(tuple(choices) or ("author",), command.strip())

    def sync(self, raw: dict[str, Any]) -> SyncConfig:
        self._reject_unknown("sync", raw, ("interval", "stop_on_unlabel", "stop_on_close",
                                           "max_runtime"))
        interval = self._float(raw, "sync.interval", 15.0, minimum=0)
        if 0 < interval < 1:
            self._problem("sync.interval", "must be 0 (no status sync) or at least 1")
            interval = 15.0
        return SyncConfig(
            interval=interval,
            stop_on_unlabel=self._bool(raw, "sync.stop_on_unlabel", True),
            stop_on_close=self._bool(raw, "sync.stop_on_close", True),
            max_runtime=self._float(raw, "sync.max_runtime", 0.0, minimum=0),
        )

    def reconcile(self, raw: dict[str, Any]) -> ReconcileConfig:
        self._reject_unknown("reconcile", raw, ("interval", "lookback"))
        interval = self._float(raw, "reconcile.interval", 900.0, minimum=0)
        if 0 < interval < 60:
            self._problem("reconcile.interval", "must be 0 (only on demand) or at least 60: "
                          "GitHub's search allows 30 requests a minute")
            interval = 900.0
        return ReconcileConfig(interval=interval, lookback=self._float(
            raw, "reconcile.lookback", 86400.0, minimum=60))

    def worker(self, raw: dict[str, Any]) -> WorkerConfig:
        self._reject_unknown("worker", raw, ("concurrency", "max_attempts", "lease_seconds",
                                             "poll_interval"))
        return WorkerConfig(
            concurrency=self._int(raw, "worker.concurrency", 4, minimum=1, maximum=256),
            max_attempts=self._int(raw, "worker.max_attempts", 8, minimum=1, maximum=100),
            lease_seconds=self._float(raw, "worker.lease_seconds", 120.0, minimum=5),
            poll_interval=self._float(raw, "worker.poll_interval", 1.0, minimum=0.01),
        )

    def routes(self, raw: Any) -> tuple[Route, ...]:
        if not isinstance(raw, list):
            self._problem("routes", "must be an array of tables ([[routes]])")
            return ()
        routes: list[Route] = []
        for index, item in enumerate(raw):
            key = f"routes[{index}]"
            if not isinstance(item, dict):
                self._problem(key, "must be a table")
                continue
            self._reject_unknown(key, item, ("match", "template", "preset"))
            match = self._route_match(item.get("match"), f"{key}.match")
            template = self._str(item, f"{key}.template", "")
            preset = self._str(item, f"{key}.preset", "")
            if match is not None:
                routes.append(Route(match, template, preset))
        return tuple(routes)

    def _route_match(self, raw: Any, key: str) -> RouteMatch | None:
        if not isinstance(raw, dict):
            self._problem(key, 'is required, e.g. { provider = "github", repository = "acme/*" }')
            return None
        self._reject_unknown(key, raw, ("provider", "repository", "team"))
        provider = self._str(raw, f"{key}.provider", "")
        if provider not in ("github", "linear"):
            self._problem(f"{key}.provider", "must be \"github\" or \"linear\"")
            return None
        repository = self._str(raw, f"{key}.repository", "") or None
        team = self._str(raw, f"{key}.team", "") or None
        if repository and provider != "github":
            self._problem(f"{key}.repository", "only applies to provider \"github\"")
        if team and provider != "linear":
            self._problem(f"{key}.team", "only applies to provider \"linear\"")
        return RouteMatch(provider, repository, team)  # type: ignore[arg-type]

    # -- values ---------------------------------------------------------------------
    def _names(self, raw: dict[str, Any], key: str, *, shape: str,
               pattern: re.Pattern[str]) -> tuple[str, ...]:
        """A list of plain names (repository globs, team keys), each checked."""
        value = raw.get(key.rsplit(".", 1)[-1], [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self._problem(key, "must be an array of strings")
            return ()
        for index, name in enumerate(value):
            if not pattern.fullmatch(name):
                self._problem(f"{key}[{index}]", f"{name!r} is not {shape}")
        return tuple(value)

    def _oauth(self, raw: dict[str, Any], id_key: str, secret_key: str) -> OAuthClient | None:
        """An OAuth client from its id and secret keys: both or neither."""
        client_id = self._str(raw, id_key, "").strip()
        secret = self._str(raw, secret_key, "", secret=True)
        if bool(client_id) != bool(secret):
            missing = secret_key if client_id else id_key
            self._problem(missing, f"{id_key} and {secret_key} must be set together")
            return None
        return OAuthClient(client_id, Secret(secret)) if client_id else None

    def _problem(self, key: str, message: str) -> None:
        self.problems.append(ConfigError(key, message))

    def _reject_unknown(self, prefix: str, raw: dict[str, Any], known: tuple[str, ...]) -> None:
        for name in raw:
            if name not in known:
                where = f"{prefix}.{name}" if prefix else name
                self._problem(where, f"unknown key (known here: {', '.join(known)})")

    def _resolve(self, key: str, value: str) -> str:
        """Apply ``env:`` and ``file:`` references. One that cannot be resolved is a
        problem, unless the caller does not need ``key``: then it is the placeholder
        ``UNRESOLVED``, which every reader below turns into its default."""
        if value.startswith("env:"):
            name = value[4:]
            if name not in self.environ:
                return self._unresolved(key, f"environment variable {name} is not set")
            return self.environ[name]
        if value.startswith("file:"):
            path = Path(value[5:])
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                return self._unresolved(key, f"cannot read {path}: {exc.strerror or exc}")
            return text[:-1] if text.endswith("\n") else text
        return value

    def _unresolved(self, key: str, problem: str) -> str:
        if any(key.startswith(prefix) for prefix in self.needs):
            self._problem(key, problem)
            raise _Missing
        return UNRESOLVED

    def _str(self, raw: dict[str, Any], key: str, default: str, *, nonempty: bool = False,
             secret: bool = False) -> str:
        name = key.rsplit(".", 1)[-1]
        if name not in raw:
            return default
        value = raw[name]
        if not isinstance(value, str):
            self._problem(key, f"must be a string, not {type(value).__name__}")
            return default
        try:
            resolved = self._resolve(key, value)
        except _Missing:
            return default
        if resolved is UNRESOLVED:
            return UNRESOLVED
        if nonempty and not resolved.strip():
            self._problem(key, "must not be empty")
            return default
        return resolved

    def _plain_list(self, raw: dict[str, Any], key: str, default: list[str]) -> list[str]:
        """A string or array of strings that is not secret (``env:``/``file:`` resolved)."""
        return [item.reveal() for item in self._str_list(raw, key, default)]

    def _str_list(self, raw: dict[str, Any], key: str, default: list[str]) -> list[Secret]:
        name = key.rsplit(".", 1)[-1]
        value = raw.get(name, default)
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            self._problem(key, "must be a string or an array of strings")
            return []
        resolved: list[Secret] = []
        for index, item in enumerate(items):
            try:
                resolved.append(Secret(self._resolve(f"{key}[{index}]", item)))
            except _Missing:
                continue
        return resolved

    def _secrets(self, raw: dict[str, Any], key: str) -> tuple[Secret, ...]:
        name = key.rsplit(".", 1)[-1]
        if name not in raw:
            self._problem(key, "is required: deliveries are only accepted when signed")
            return ()
        secrets = self._str_list(raw, key, [])
        if raw[name] == []:
            self._problem(key, "lists no secret: deliveries are only accepted when signed "
                          "with one (give the secret set in the tracker's webhook settings)")
        if any(not s.reveal() for s in secrets):
            self._problem(key, "must not contain an empty secret")
        return tuple(s for s in secrets if s.reveal())

    def _bool(self, raw: dict[str, Any], key: str, default: bool) -> bool:
        value = raw.get(key.rsplit(".", 1)[-1], default)
        if isinstance(value, str):
            try:
                text = self._resolve(key, value)
            except _Missing:
                return default
            if text is UNRESOLVED:
                return default
            value = {"true": True, "false": False}.get(text.lower(), value)
        if not isinstance(value, bool):
            self._problem(key, "must be true or false")
            return default
        return value

    def _int(self, raw: dict[str, Any], key: str, default: int, *, minimum: int | None = None,
             maximum: int | None = None) -> int:
        name = key.rsplit(".", 1)[-1]
        value = raw.get(name, default)
        if isinstance(value, str):
            try:
                text = self._resolve(key, value)
                if text is UNRESOLVED:
                    return default
                value = int(text)
            except _Missing:
                return default
            except ValueError:
                self._problem(key, "must be an integer")
                return default
        if isinstance(value, bool) or not isinstance(value, int):
            self._problem(key, f"must be an integer, not {type(value).__name__}")
            return default
        return self._bounded(key, value, default, minimum, maximum)

    def _float(self, raw: dict[str, Any], key: str, default: float, *,
               minimum: float | None = None) -> float:
        name = key.rsplit(".", 1)[-1]
        value = raw.get(name, default)
        if isinstance(value, str):
            try:
                text = self._resolve(key, value)
                if text is UNRESOLVED:
                    return default
                value = float(text)
            except _Missing:
                return default
            except ValueError:
                value = None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
                value):
            self._problem(key, "must be a number of seconds")
            return default
        return self._bounded(key, float(value), default, minimum, None)

    def _bounded(self, key: str, value: N, default: N, minimum: N | None,
                 maximum: N | None) -> N:
        if minimum is not None and value < minimum:
            self._problem(key, f"must be at least {minimum}")
            return default
        if maximum is not None and value > maximum:
            self._problem(key, f"must be at most {maximum}")
            return default
        return value

    def _url(self, raw: dict[str, Any], key: str, default: str) -> str:
        value = self._str(raw, key, default)
        if value is UNRESOLVED:
            return default
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            self._problem(key, f"must be an http(s) URL, not {value!r}")
            return default
        return value

