"""What ``coder-bridge check-config`` checks beyond loading the configuration.

``warnings`` are mistakes a valid configuration can still hold (no allowlist, a
secret GitHub never sends as written, a route for a tracker without a section).
``check_online`` tries what the first labelled issue will need, in the order it needs
it: the database and its schema, the stored tokens against the configured keys, the
Coder API, every configured template and preset (as a linked person, since templates
are visible per user), Coder's OAuth2 provider, and each tracker's credentials. Each
check prints one readable line; a failing one starts with ``FAILED`` and counts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import httpx

from service.accounts import access_token, audit_tokens
from service.coder.client import CoderClient
from service.coder.detect import describe
from service.coder.templates import choose_preset, fetch_presets, fetch_template
from service.config import Config
from service.errors import BridgeError, RemoteError
from service.store import open_store
from service.store.base import Store
from service.vault import Vault

#: A webhook secret shorter than this is easy to guess (GitHub suggests a long random one).
MIN_SECRET_LENGTH = 16


def warnings(config: Config) -> list[str]:
    """Problems of a configuration that loads: each a line for the operator."""
    found: list[str] = []
    if config.github is None and config.linear is None:
        found.append("no tracker is configured ([github] or [linear])")
    if config.github is not None and config.github.app_id is None and \
            not config.github.repositories:
        found.append("github.repositories is empty: every repository whose webhook knows the "
                     "secret can make the bridge act; list the repositories (globs such as "
                     "acme/*) it may act on")
    if not config.coder.template and config.coder.api != "chats":
        found.append("coder.template is empty: issues that match no route cannot create a "
                     "Tasks API task")
    for name, section in (("github", config.github), ("linear", config.linear)):
        if section is None:
            continue
        for index, secret in enumerate(section.webhook_secrets):
            key = f"{name}.webhook_secret" + (f"[{index}]" if
                                             len(section.webhook_secrets) > 1 else "")
            text = secret.reveal()
            if text != text.strip():
                found.append(f"{key} begins or ends with whitespace: the tracker signs with "
                             "the secret as typed in its settings, which it trims; remove "
                             "the whitespace")
            if len(text.strip()) < MIN_SECRET_LENGTH:
                found.append(f"{key} is shorter than {MIN_SECRET_LENGTH} characters: use a "
                             "long random secret (python -c \"import secrets; "
                             "print(secrets.token_hex(32))\")")
    for index, route in enumerate(config.routes):
        provider = route.match.provider
        if getattr(config, provider) is None:
            found.append(f"routes[{index}] is for {provider}, which has no [{provider}] "
                         "section: it never matches")
    return found


@dataclass
class Report:
    """Says each line of an online check, and counts the failed ones."""

    say: Callable[[str], None] = print
    failures: int = 0

    def ok(self, line: str) -> None:
        self.say(line)

    def fail(self, what: str, why: str) -> None:
        self.failures += 1
        self.ok(f"{what}: FAILED: {why}")


async def check_online(config: Config, vault: Vault, http: httpx.AsyncClient,
                       report: Report) -> None:
    """Run every online check, printing a line each (see the module docstring)."""
    token, whose = await _database(config, vault, report)
    try:
        report.ok(f"coder: {await describe(config.coder, http, token)}"
                  + (f" (probed with {whose}'s token)" if whose else ""))
    except RemoteError as exc:
        report.fail("coder", str(exc))
    await _templates(config, http, token, whose, report)
    await _coder_oauth2(config, http, report)
    await _trackers(config, http, report)


async def _database(config: Config, vault: Vault, report: Report) -> tuple[str | None, str]:
    """Database, schema and stored tokens; returns a usable linked token and whose it is
    ((None, "") when there is none)."""
    try:
        store = await open_store(config.storage.url)
    except BridgeError as exc:
        report.fail("database", str(exc))
        return None, ""
    try:
        current, latest = await store.schema_status()
        if current != latest:
            report.fail("schema", f"the database is at version {current}, this bridge needs "
                        f"{latest}: run coder-bridge migrate (serve does it on start)")
            return None, ""
        report.ok(f"database: answers, schema current (version {current})")
        return await _tokens(store, vault, report)
    except BridgeError as exc:
        report.fail("database", str(exc))
        return None, ""
    finally:
        await store.close()


async def _tokens(store: Store, vault: Vault, report: Report) -> tuple[str | None, str]:
    audit = await audit_tokens(store, vault)
    if audit.unopened:
        missing = (f" (they are under key id(s) {', '.join(audit.missing_keys)}, which "
                   "security.encryption_keys lacks)" if audit.missing_keys else "")
        report.fail("tokens", f"no configured encryption key opens the stored token of "
                    f"{', '.join(audit.unopened)}{missing}: add the key they were encrypted "
                    "with, or these people must connect again")
    elif audit.stored:
        report.ok(f"tokens: the configured keys open all {audit.stored} stored token(s)")
    else:
        report.ok("tokens: none stored yet (nobody has connected a Coder account)")
    for account, _ in await store.list_accounts():
        if account.token_status == "valid" and account.coder_username not in audit.unopened:
            return access_token(vault, account), account.coder_username
    return None, ""


async def _templates(config: Config, http: httpx.AsyncClient, token: str | None, whose: str,
                     report: Report) -> None:
    wanted: dict[tuple[str, str], str] = {}  # (template, preset) → the key that names it
    if config.coder.template:
        wanted[(config.coder.template, config.coder.preset)] = "coder.template"
    for index, route in enumerate(config.routes):
        if route.template:
            wanted.setdefault((route.template, route.preset), f"routes[{index}].template")
    if not wanted:
        return
    if token is None:
        report.ok("templates: not checked: no linked account with a usable token (templates "
                  "are visible per person; link one with coder-bridge users link)")
        return
    client = CoderClient(config.coder.url, token, http=http, timeout=config.coder.timeout)
    for (name, preset), key in wanted.items():
        what = f'template "{name}"' + (f' with preset "{preset}"' if preset else "")
        try:
            template = await fetch_template(client, config.coder.organization, name)
            if preset:
                presets = await fetch_presets(client, template.active_version_id)
                choose_preset(presets, preset, template=name)
        except RemoteError as exc:
            report.fail(key, exc.public or str(exc))
            continue
        report.ok(f"{key}: {what} found (as {whose})")


async def _coder_oauth2(config: Config, http: httpx.AsyncClient, report: Report) -> None:
    from service.app import build_coder_oauth

    oauth = build_coder_oauth(config, http)
    if oauth is None:
        return
    try:
        offered = await oauth.offered()
    except RemoteError as exc:
        report.fail("coder oauth2", str(exc))
        return
    if offered:
        report.ok("coder oauth2: the provider answers; Connect with Coder is available")
    else:
        report.fail("coder oauth2", "coder.oauth2_client_id is set, but this Coder deployment "
                    "does not serve its OAuth2 provider (Coder v2.38+ with "
                    "CODER_OAUTH2_PROVIDER_ENABLE=true)")


async def _trackers(config: Config, http: httpx.AsyncClient, report: Report) -> None:
    from service.app import build_trackers

    for name, tracker in build_trackers(config, http).items():
        check = getattr(tracker, "check", None)
        if check is None:
            continue
        try:
            report.ok(f"{name}: {await check()}")
        except RemoteError as exc:
            report.fail(name, str(exc))
