"""Connected Coder accounts: storing a person's token, acting with it, and what waits for it.

One place for what ``users link``, the ``/connect`` page and the worker share:

* ``connect`` stores a token checked with Coder (encrypted, bound to the Coder user),
  links the person's tracker identities to that account, and lets every delegation
  waiting for one of them (``needs_link``: nobody had connected, or Coder had rejected
  the token) run again at once: its trigger is queued again, and the same comment turns
  into the task link (interface §4.1, step 2);
* ``CoderTokens`` opens the token to act with; a token from Coder's OAuth2 provider is
  refreshed shortly before it expires, once per account at a time (a refresh replaces
  both tokens, so two at once would lose one).

A pasted token is stored as it is. An OAuth pair is stored as one sealed JSON object
(``{"access_token", "refresh_token"}``), so that key rotation and every other reader
treat both kinds alike; ``Account.token_expires_at`` says when the access token ends.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from service.coder.base import CoderUser
from service.core.events import IssueEvent
from service.errors import TokenRejected, VaultError
from service.logging import get_logger
from service.oauth import OAuthTokens
from service.store.base import Account, Identity, Store
from service.vault import Vault

log = get_logger("service.accounts")

#: An OAuth access token is refreshed when it has less than this left.
REFRESH_MARGIN_SECONDS = 600.0


class TokenRefresher(Protocol):
    """What refreshes an OAuth pair (``service.coder.oauth2.CoderOAuth``)."""

    async def refresh(self, refresh_token: str) -> OAuthTokens: ...


def seal(vault: Vault, token: str | OAuthTokens, *, owner: str) -> tuple[str, bytes]:
    """(key id, ciphertext) of a pasted token or an OAuth pair, bound to ``owner``."""
    if isinstance(token, OAuthTokens):
        plain = json.dumps({"access_token": token.access_token,
                            "refresh_token": token.refresh_token})
        return vault.encrypt(plain, owner=owner)
    return vault.encrypt(token, owner=owner)


def open_pair(vault: Vault, account: Account) -> OAuthTokens:
    """The OAuth pair of an ``oauth`` account (``VaultError`` if it cannot be read)."""
    plain = vault.decrypt(account.key_id, account.ciphertext, owner=account.coder_user_id)
    try:
        data = json.loads(plain)
        return OAuthTokens(str(data["access_token"]), str(data["refresh_token"]),
                           account.token_expires_at)
    except (ValueError, KeyError, TypeError):
        raise VaultError("a stored OAuth token pair is unreadable") from None


def access_token(vault: Vault, account: Account) -> str:
    """The token to call Coder with, whatever its kind (no refresh)."""
    if account.token_kind == "oauth":
        return open_pair(vault, account).access_token
    return vault.decrypt(account.key_id, account.ciphertext, owner=account.coder_user_id)


def opens(vault: Vault, account: Account) -> bool:
    """Whether a configured key opens the account's stored token."""
    try:
        access_token(vault, account)
    except VaultError:
        return False
    return True


@dataclass(frozen=True)
class TokenAudit:
    """Which stored tokens the configured encryption keys open."""

    stored: int
    #: Coder usernames whose token no configured key opens
    unopened: tuple[str, ...]
    #: the key ids those tokens are under that ``security.encryption_keys`` lacks
    missing_keys: tuple[str, ...]

    @property
    def none_open(self) -> bool:
        """Tokens are stored and not one of them can be used."""
        return self.stored > 0 and len(self.unopened) == self.stored


async def audit_tokens(store: Store, vault: Vault) -> TokenAudit:
    """Try every stored token with the configured keys (nothing is sent anywhere)."""
    accounts = [account for account, _ in await store.list_accounts()]
    unopened = [a for a in accounts if not opens(vault, a)]
    missing = sorted({a.key_id for a in unopened} - set(vault.key_ids))
    return TokenAudit(len(accounts), tuple(a.coder_username for a in unopened), tuple(missing))


async def connect(
    store: Store, vault: Vault, *, user: CoderUser, token: str | OAuthTokens,
    identities: Sequence[Identity], now: float,
) -> tuple[Account, int]:
    """Store ``token`` (already checked with Coder as ``user``) and link ``identities``
    to it; then resume what waited for them. Returns the account and how many waiting
    delegations were queued again."""
    key_id, ciphertext = seal(vault, token, owner=user.id)
    oauth = isinstance(token, OAuthTokens)
    account = await store.link_account(
        coder_user_id=user.id, coder_username=user.username, key_id=key_id,
        ciphertext=ciphertext, identities=identities, token_kind="oauth" if oauth else "token",
        token_expires_at=token.expires_at if isinstance(token, OAuthTokens) else None)
    resumed = await resume_waiting(store, identities, now=now)
    log.info("account_connected", coder_user=user.username, kind=account.token_kind,
             identities=[f"{i.provider}:{i.external_id}" for i in identities], resumed=resumed)
    return account, resumed


async def resume_waiting(store: Store, identities: Sequence[Identity], *, now: float) -> int:
    """Queue again the trigger of every delegation that waits for one of ``identities``
    to connect (``needs_link`` and naming them as author or labeler). Its job then finds
    the account and goes on; the issue's comment turns into the task link."""
    wanted = {(i.provider, i.external_id) for i in identities}
    resumed = 0
    for d, _ in await store.list_delegations(states=["needs_link"], limit=10_000):
        if not d.trigger_json:
            continue
        trigger = IssueEvent.from_json(d.trigger_json)
        people = {(trigger.tracker, p.id) for p in (trigger.author, trigger.labeler) if p}
        if people & wanted and await store.requeue_delivery(d.delivery_id, now=now):
            resumed += 1
    return resumed


class CoderTokens:
    """Opens the token an account acts with, refreshing an OAuth pair when it is about to
    expire (``refresher`` None: OAuth is not configured, a pair is used as it is)."""

    def __init__(self, store: Store, vault: Vault, refresher: TokenRefresher | None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.vault = vault
        self.refresher = refresher
        self.clock = clock
        self._locks: dict[int, asyncio.Lock] = {}

    async def token_for(self, account: Account) -> str:
        """The token to call Coder with now (``VaultError`` when it cannot be opened;
        ``TokenRejected`` when an expired pair cannot be refreshed)."""
        if account.token_kind != "oauth":
            return access_token(self.vault, account)
        pair = open_pair(self.vault, account)
        expires = account.token_expires_at
        if self.refresher is None or expires is None or (
                expires - self.clock() > REFRESH_MARGIN_SECONDS):
            return pair.access_token
        return (await self.refresh(account)).access_token

    async def refresh(self, account: Account) -> OAuthTokens:
        """Refresh an OAuth pair once per account at a time; a pair another process
        refreshed meanwhile is taken as it is. ``TokenRejected`` when Coder refuses the
        refresh token (the person must connect again)."""
        if self.refresher is None:
            raise TokenRejected("coder", "Coder's OAuth2 sign-in is not configured, so the "
                                "connection cannot be renewed")
        lock = self._locks.setdefault(account.id, asyncio.Lock())
        async with lock:
            current = await self.store.get_account(account.id)
            if current is None:
                raise TokenRejected("coder", "the Coder account was disconnected")
            if current.ciphertext != account.ciphertext:
                return open_pair(self.vault, current)  # refreshed by someone else
            fresh = await self.refresher.refresh(open_pair(self.vault, current).refresh_token)
            key_id, ciphertext = seal(self.vault, fresh, owner=current.coder_user_id)
            swapped = await self.store.replace_tokens(
                current.id, old_ciphertext=current.ciphertext, key_id=key_id,
                ciphertext=ciphertext, expires_at=fresh.expires_at, now=self.clock())
            if not swapped:
                again = await self.store.get_account(account.id)
                if again is None:
                    raise TokenRejected("coder", "the Coder account was disconnected")
                return open_pair(self.vault, again)
            log.info("coder_token_refreshed", coder_user=current.coder_username)
            return fresh
