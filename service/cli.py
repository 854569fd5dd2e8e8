"""The ``coder-bridge`` command line (interface §1): argparse wiring, no logic of its own.

Exit status: 0 success; 1 a user error, with a message on stderr; 2 bad usage.
Tokens are read from standard input or a file, never from argv, and never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import json
import os
import resource
import signal
import socket
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import httpx
import uvicorn

from service import checks
from service.accounts import connect, opens
from service.coder.client import CoderClient
from service.config import EVERYTHING, STORE_ONLY, Config, load_config, resolve_config_path
from service.core.events import IssueEvent
from service.core.prompt import issue_reference
from service.core.work import STATE_FILTERS
from service.errors import BridgeError, InvalidConfig, RemoteError, TokenRejected, UserError
from service.logging import configure_logging, get_logger
from service.store import open_store
from service.store.base import Identity, Store
from service.vault import rotate
from service.web.connections import guarded_protocol

if TYPE_CHECKING:  # service.app is imported lazily: most commands need little of it
    from service.app import Role

log = get_logger("service.cli")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: otherwise a subcommand's default (None) would overwrite a --config given
    # before the subcommand name (coder-bridge --config X serve).
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                        help="config file (default: $CODER_BRIDGE_CONFIG, else ./config.toml, "
                             "else built-in development defaults)")
    parser = argparse.ArgumentParser(
        prog="coder-bridge", parents=[common],
        description="Label an issue; get an AI coding task on the author's Coder deployment.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", parents=[common], help="run the HTTP server and worker")
    serve.add_argument("--role", choices=("all", "web", "worker"), default="all",
                       help="run both halves (default) or only one, for scaled-out deployments")
    serve.add_argument("--no-migrate", action="store_true",
                       help="do not apply schema migrations on start")
    serve.add_argument("--host", help="listen on this address (overrides server.host)")
    serve.add_argument("--port", type=_port, help="listen on this port (overrides server.port)")

    check = commands.add_parser("check-config", parents=[common],
                                help="validate the configuration")
    check.add_argument("--online", action="store_true",
                       help="also check that Coder, GitHub and Linear answer")

    commands.add_parser("migrate", parents=[common], help="apply schema migrations and exit")

    users = commands.add_parser("users", parents=[common], help="linked accounts")
    users_sub = users.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    link = users_sub.add_parser("link", parents=[common],
                                help="link tracker identities to a Coder account")
    link.add_argument("--github-id", type=_positive_int, metavar="N",
                      help="numeric GitHub user id")
    link.add_argument("--github-login", metavar="NAME", help="GitHub login (informational)")
    link.add_argument("--linear-id", type=_uuid, metavar="UUID",
                      help="Linear user id (a UUID)")
    source = link.add_mutually_exclusive_group(required=True)
    source.add_argument("--coder-token-stdin", action="store_true",
                        help="read the Coder token from standard input")
    source.add_argument("--coder-token-file", metavar="PATH",
                        help="read the Coder token from a file")
    users_sub.add_parser("list", parents=[common], help="list linked accounts")
    unlink = users_sub.add_parser("unlink", parents=[common], help="remove a link")
    target = unlink.add_mutually_exclusive_group(required=True)
    target.add_argument("--github-id", type=_positive_int, metavar="N")
    target.add_argument("--linear-id", type=_uuid, metavar="UUID")
    target.add_argument("--coder-user", metavar="NAME")
    allow = users_sub.add_parser(
        "allow-others", parents=[common],
        help="whether others may delegate this person's issues to their Coder account")
    whom = allow.add_mutually_exclusive_group(required=True)
    whom.add_argument("--github-id", type=_positive_int, metavar="N")
    whom.add_argument("--linear-id", type=_uuid, metavar="UUID")
    whom.add_argument("--coder-user", metavar="NAME")
    switch = allow.add_mutually_exclusive_group(required=True)
    switch.add_argument("--on", dest="allow", action="store_true", default=None)
    switch.add_argument("--off", dest="allow", action="store_false")

    keys = commands.add_parser("keys", parents=[common], help="encryption keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    keys_sub.add_parser("rotate", parents=[common],
                        help="re-encrypt every stored token under the first key")

    deliveries = commands.add_parser("deliveries", parents=[common], help="recent deliveries")
    deliveries_sub = deliveries.add_subparsers(dest="deliveries_command", required=True,
                                               metavar="ACTION")
    listing = deliveries_sub.add_parser("list", parents=[common], help="recent deliveries")
    listing.add_argument("--limit", type=_positive_int, default=50)
    listing.add_argument("--json", action="store_true",
                         help="one JSON object (as GET /admin/deliveries answers)")
    retry = deliveries_sub.add_parser("retry", parents=[common],
                                      help="run a stored delivery again")
    retry.add_argument("delivery_id", metavar="ID")

    commands.add_parser("reconcile", parents=[common],
                        help="look now for labelled issues whose webhook never arrived")

    delegations = commands.add_parser("delegations", parents=[common],
                                      help="what the bridge did about each issue")
    delegations_sub = delegations.add_subparsers(dest="delegations_command", required=True,
                                                 metavar="ACTION")
    shown = delegations_sub.add_parser("list", parents=[common],
                                       help="one line per delegation, newest first")
    shown.add_argument("--state", choices=tuple(STATE_FILTERS), default="all")
    shown.add_argument("--limit", type=_positive_int, default=50)
    return parser


def _uuid(text: str) -> str:
    """A Linear user id: a UUID (Linear's ids are), lower-cased."""
    try:
        return str(uuid.UUID(text.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a Linear user id (a UUID such as "
            "5f8c3b8e-2a41-4c55-9a3e-0d6f1c2b7a10; a display name or an email does not "
            "work)") from None


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1-65535)")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    _no_core_dumps()
    configure_logging()
    try:
        config = _load(args)
        return _dispatch(args, config)
    except InvalidConfig as exc:
        for problem in exc.problems:
            print(f"config error: {problem}", file=sys.stderr)
        return 1
    except BridgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _no_core_dumps() -> None:
    """A crash must not write the process's memory, decrypted tokens included, to disk."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _load(args: argparse.Namespace) -> Config:
    path = resolve_config_path(getattr(args, "config", None), os.environ)
    config = load_config(path, needs=_needs(args))
    if config.is_development_default and args.command in ("serve", "check-config"):
        print("WARNING: no config file found: using built-in development defaults "
              "(SQLite under ./data/, 127.0.0.1:8080). No tracker is configured, so no "
              "webhook will be accepted. Copy config.example.toml to config.toml.",
              file=sys.stderr)
    return config


def _needs(args: argparse.Namespace) -> tuple[str, ...]:
    """The configuration a command uses: the commands that do not serve resolve no
    tracker secrets (``users list`` works without ``GITHUB_TOKEN``)."""
    if args.command in ("serve", "check-config", "reconcile"):
        return EVERYTHING
    if args.command == "users" and args.users_command == "link":
        return (*STORE_ONLY, "coder.url", "coder.timeout")  # the token is checked with Coder
    return STORE_ONLY


def _dispatch(args: argparse.Namespace, config: Config) -> int:
    command: str = args.command
    if command == "serve":
        return _serve(config, role=cast("Role", args.role), migrate=not args.no_migrate,
                      host=args.host or config.server.host,
                      port=args.port or config.server.port)
    if command == "check-config":
        return _check_config(config, online=args.online)
    handlers: dict[str, Callable[[Store], Awaitable[int]]] = {
        "migrate": _migrate,
        "users.link": lambda store: _users_link(store, config, args),
        "users.list": lambda store: _users_list(store, config),
        "users.unlink": lambda store: _users_unlink(store, args),
        "users.allow-others": lambda store: _users_allow_others(store, args),
        "keys.rotate": lambda store: _keys_rotate(store, config),
        "deliveries.list": lambda store: _deliveries_list(store, args.limit, as_json=args.json),
        "deliveries.retry": lambda store: _deliveries_retry(store, args.delivery_id),
        "delegations.list": lambda store: _delegations_list(store, args.state, args.limit),
        "reconcile": lambda store: _reconcile(store, config),
    }
    sub = getattr(args, f"{command}_command", None)
    name = f"{command}.{sub}" if sub else command
    schema: SchemaUse = ("as_is" if command == "migrate" else
                         "current" if name in READERS else "migrate")
    return asyncio.run(_with_store(config, handlers[name], schema=schema))


SchemaUse = Literal["as_is", "current", "migrate"]
#: Commands that only read: they never change the schema (they say when it is behind).
READERS = frozenset({"users.list", "deliveries.list", "delegations.list"})


async def _with_store(
    config: Config, handler: Callable[[Store], Awaitable[int]],
    *, schema: SchemaUse,
) -> int:
    """Run ``handler`` on the configured store. ``schema``: leave it (``migrate`` itself),
    require it current (readers), or bring it up to date and say so (commands that write:
    they need the schema, e.g. ``users link`` on a new database)."""
    store = await open_store(config.storage.url)
    try:
        if schema == "migrate":
            applied = await store.migrate()
            if applied:
                print(f"note: applied schema migrations {', '.join(map(str, applied))} to the "
                      "database first", file=sys.stderr)
        elif schema == "current":
            current, latest = await store.schema_status()
            if current < latest:
                raise UserError(f"the database schema is at version {current}, this "
                                f"coder-bridge needs {latest}: run `coder-bridge migrate` "
                                "(serve does it on start); nothing was changed")
        return await handler(store)
    finally:
        await store.close()


# -- serve ---------------------------------------------------------------------------
def _serve(config: Config, *, role: Role, migrate: bool, host: str, port: int) -> int:
    from service.app import build_services, create_app

    if role != "all" and config.storage.url.startswith("sqlite"):
        log.warning("split_roles_on_sqlite",
                    note="--role web/worker share one SQLite file only on one host; "
                         "use PostgreSQL to scale out")
    listener = _listen(host, port)  # before anything else: a taken port fails at once

    async def run() -> None:
        services = await build_services(config, role=role, migrate=migrate)
        app = create_app(services)
        _tune_gc()
        # access_log=False: the webhook outcome lines take the access log's place.
        server_config = uvicorn.Config(
            app, host=host, port=port, log_config=None,
            access_log=False, proxy_headers=True, server_header=False,
            timeout_graceful_shutdown=30, http=guarded_protocol())
        _after_shutdown_ignore(signal.SIGTERM, signal.SIGINT)
        await uvicorn.Server(server_config).serve(sockets=[listener])

    try:
        import uvloop

        uvloop.run(run())
    except ImportError:  # pragma: no cover - uvloop is a dependency via uvicorn[standard]
        asyncio.run(run())
    finally:
        listener.close()
    return 0


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``; ``UserError`` (exit status 1) if it is taken
    or not an address of this machine."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror} (server.host, or "
                        "serve --host)") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        hint = (": another process listens there (serve --port picks another port)"
                if exc.errno == errno.EADDRINUSE else f": {exc.strerror}")
        raise UserError(f"cannot listen on {host}:{port}{hint}") from None
    sock.set_inheritable(True)
    return sock


def _after_shutdown_ignore(*signals: signal.Signals) -> None:
    """Make ``signals`` do nothing once uvicorn has shut down gracefully.

    uvicorn handles SIGTERM and SIGINT while it serves; when it has stopped it puts
    back the handlers it found and raises the signal again, so that the process
    ends as the signal would end it ("killed by SIGTERM"). The interface promises
    exit status 0 after a graceful stop instead, so the handlers it finds are these.
    """
    for number in signals:
        signal.signal(number, lambda *_: None)


def _tune_gc() -> None:
    """Keep the cyclic garbage collector off the request path.

    Every delivery decodes a 14 KB payload into hundreds of short-lived objects, so
    with the default thresholds a collection ran every request or two and scanned
    the whole heap now and then. Objects that live for the whole process are frozen
    out of the scans, and young collections wait for more allocations. Our code
    makes few reference cycles, so memory stays flat (see bench/README.md).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


# -- check-config --------------------------------------------------------------------
def _check_config(config: Config, *, online: bool) -> int:
    from service.app import build_trackers, load_vault

    configure_logging(level="CRITICAL")  # readable lines only: the checks print their own
    asyncio.run(_build_clients(config, build_trackers))  # raises InvalidConfig (bad App key)
    where = config.source or "built-in development defaults"
    print(f"configuration OK ({where})")
    for warning in checks.warnings(config):
        print(f"warning: {warning}")
    if not online:
        return 0
    report = checks.Report()

    async def run() -> None:
        async with httpx.AsyncClient(timeout=config.coder.timeout) as http:
            await checks.check_online(config, load_vault(config), http, report)

    asyncio.run(run())
    return 1 if report.failures else 0


async def _build_clients(config: Config, build: Callable[[Config, httpx.AsyncClient], Any]) -> None:
    async with httpx.AsyncClient() as http:
        build(config, http)


# -- migrate -------------------------------------------------------------------------
async def _migrate(store: Store) -> int:
    applied = await store.migrate()
    current, _ = await store.schema_status()
    if applied:
        print(f"applied migrations {', '.join(map(str, applied))}; schema is at version {current}")
    else:
        print(f"schema is current (version {current})")
    return 0


# -- users ---------------------------------------------------------------------------
def _read_token(args: argparse.Namespace) -> str:
    if args.coder_token_file:
        try:
            text = Path(args.coder_token_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise UserError(f"cannot read {args.coder_token_file}: {exc.strerror}") from None
    else:
        if sys.stdin.isatty():
            print("Paste the Coder token, then press Enter:", file=sys.stderr)
            text = sys.stdin.readline()
        else:
            text = sys.stdin.read()
    token = text.strip()
    if not token:
        raise UserError("no Coder token was given")
    if any(ch.isspace() for ch in token):
        raise UserError("the Coder token must be a single line without spaces")
    return token


async def _users_link(store: Store, config: Config, args: argparse.Namespace) -> int:
    from service.app import load_vault

    identities: list[Identity] = []
    if args.github_id:
        identities.append(Identity("github", str(args.github_id), args.github_login or ""))
    elif args.github_login:
        raise UserError("--github-login needs --github-id (logins change; ids do not)")
    if args.linear_id:
        identities.append(Identity("linear", args.linear_id.strip().lower()))
    if not identities:
        raise UserError("give at least one of --github-id, --linear-id")
    token = _read_token(args)
    vault = load_vault(config)
    async with httpx.AsyncClient() as http:
        client = CoderClient(config.coder.url, token, http=http, timeout=config.coder.timeout)
        try:
            user = await client.fetch_me()
        except TokenRejected:
            raise UserError(f"Coder at {config.coder.url} rejected this token (expired, "
                            "revoked or mistyped); nothing was stored") from None
        except RemoteError as exc:
            raise UserError(f"could not validate the token with Coder at {config.coder.url}: "
                            f"{exc}; nothing was stored") from None
    _, resumed = await connect(store, vault, user=user, token=token, identities=identities,
                               now=time.time())
    linked = ", ".join(f"{i.provider} {i.external_id}" for i in identities)
    print(f"linked {linked} to Coder user {user.username}")
    if resumed:
        print(f"{resumed} delegation(s) waiting for this account queued again; a running "
              "bridge continues them")
    return 0


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "never"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


async def _users_list(store: Store, config: Config) -> int:
    from service.app import load_vault

    vault = load_vault(config)
    accounts = await store.list_accounts()
    if not accounts:
        print("no linked accounts")
    for account, identities in accounts:
        names = ", ".join(
            f"{i.provider}:{i.external_id}" + (f" ({i.login})" if i.login else "")
            for i in identities) or "-"
        others = "others may delegate" if account.allow_others else "only their own requests"
        status = account.token_status if opens(vault, account) else "undecryptable"
        print(f"{account.coder_username}\t{names}\ttoken {status}\t"
              f"last used {_when(account.last_used_at)}\t{others}")
    return 0


async def _users_unlink(store: Store, args: argparse.Namespace) -> int:
    if args.coder_user:
        removed = await store.unlink(coder_username=args.coder_user)
        what = f"Coder user {args.coder_user}"
    elif args.github_id:
        removed = await store.unlink(provider="github", external_id=str(args.github_id))
        what = f"github {args.github_id}"
    else:
        removed = await store.unlink(provider="linear", external_id=args.linear_id.lower())
        what = f"linear {args.linear_id}"
    if not removed:
        raise UserError(f"{what} is not linked")
    print(f"unlinked {what}")
    return 0


async def _users_allow_others(store: Store, args: argparse.Namespace) -> int:
    if args.coder_user:
        changed = await store.set_allow_others(coder_username=args.coder_user, allow=args.allow)
        what = f"Coder user {args.coder_user}"
    elif args.github_id:
        changed = await store.set_allow_others(provider="github", external_id=str(args.github_id),
                                               allow=args.allow)
        what = f"github {args.github_id}"
    else:
        changed = await store.set_allow_others(provider="linear",
                                               external_id=args.linear_id.strip().lower(),
                                               allow=args.allow)
        what = f"linear {args.linear_id}"
    if not changed:
        raise UserError(f"{what} is not linked")
    if args.allow:
        print(f"{what}: others may now delegate their issues to their Coder account")
    else:
        print(f"{what}: only their own requests now run on their Coder account")
    return 0


# -- keys ----------------------------------------------------------------------------
async def _keys_rotate(store: Store, config: Config) -> int:
    from service.app import load_vault

    count = await rotate(store, load_vault(config))
    print(f"re-encrypted {count} token(s) under the first key")
    return 0


# -- deliveries ----------------------------------------------------------------------
DELIVERY_COLUMNS = ("RECEIVED", "TRACKER", "DELIVERY", "ISSUE", "KIND", "JOB", "OUTCOME",
                    "ATTEMPTS", "TASK", "LAST ERROR")


async def _deliveries_list(store: Store, limit: int, *, as_json: bool) -> int:
    from service.web.admin import delivery_json

    records = await store.list_deliveries(limit=limit)
    if as_json:
        print(json.dumps({"deliveries": [delivery_json(r) for r in records]}, indent=2))
        return 0
    if not records:
        print("no deliveries")
        return 0
    print("\t".join(DELIVERY_COLUMNS))
    for r in records:
        fields = [_when(r.received_at), r.tracker, r.delivery_id, r.issue or r.issue_key,
                  r.kind, r.job_status or "-", r.outcome or "-", str(r.attempts),
                  r.task_url or "-", r.last_error or "-"]
        print("\t".join(fields))
    return 0


async def _delegations_list(store: Store, state: str, limit: int) -> int:
    chosen = STATE_FILTERS[state]
    rows = await store.list_delegations(states=sorted(chosen) if chosen is not None else None,
                                        limit=limit)
    if not rows:
        print("no delegations" if state == "all" else f"no delegations in state {state}")
    for d, coder_user in rows:
        trigger = IssueEvent.from_json(d.trigger_json) if d.trigger_json else None
        fields = [
            issue_reference(trigger) if trigger is not None else d.issue_key,
            coder_user or "-", d.task_kind or "-", d.task_url or "-", d.state,
            _when(d.updated_at),
        ]
        print("\t".join(fields))
    return 0


async def _reconcile(store: Store, config: Config) -> int:
    from service.app import build_reconciler, build_trackers, remote_services
    from service.http import build_http_client

    http = build_http_client(remote_services(config), timeout=config.coder.timeout)
    try:
        reconciler = build_reconciler(config, store, build_trackers(config, http, store),
                                      owner=f"cli:{os.getpid()}")
        if not reconciler.sources:
            print("no tracker is configured: nothing to look for")
            return 0
        findings = await reconciler.sweep()
    finally:
        await http.aclose()
    if findings is None:
        print("another bridge process is sweeping right now; its findings are in its log")
        return 0
    words = {"queued": "queued as if its labelled delivery had arrived",
             "delegated": "has a delegation already: left alone",
             "already_queued": "already queued by an earlier sweep"}
    for finding in findings:
        print(f"{finding.tracker}\t{finding.issue}\t{words[finding.outcome]}")
    queued = sum(1 for f in findings if f.outcome == "queued")
    print(f"found {len(findings)} labelled open issue(s); queued {queued}")
    return 0


async def _deliveries_retry(store: Store, delivery_id: str) -> int:
    if not await store.requeue_delivery(delivery_id, now=time.time()):
        raise UserError(f"delivery {delivery_id} is unknown, or is already queued or running")
    print(f"delivery {delivery_id} queued again; a running bridge picks it up shortly")
    return 0
