"""Encryption of the stored Coder tokens (AES-256-GCM), with key rotation.

Configuration lists keys only (``security.encryption_keys``: base64 of 32 random
bytes each). The FIRST key encrypts; every key decrypts. A key is named by its
``key_id``, the first 16 hex digits of its SHA-256, which is stored next to each
ciphertext so the right key is found without trial decryption.

A stored blob is ``nonce (12 bytes) || ciphertext || tag (16 bytes)``. The
associated data binds the blob to its owner (the account's ``coder_user_id``):
``b"coder-bridge/token/v1:" + owner``, so a blob copied onto another account's
row fails to decrypt instead of handing one user's token to another.

Nothing here puts key material or plaintext into an exception or a repr.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from service.errors import VaultError

if TYPE_CHECKING:  # the vault itself needs no storage: config checks keys with it
    from service.store.base import Store

__all__ = ["KEY_BYTES", "Vault", "generate_key", "key_id_of", "parse_key", "rotate"]

KEY_BYTES = 32
_NONCE_BYTES = 12
_TAG_BYTES = 16
_AAD_PREFIX = b"coder-bridge/token/v1:"


def key_id_of(key: bytes) -> str:
    """The public name of ``key``: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(key).hexdigest()[:16]


def parse_key(text: str) -> bytes:
    """Decode one configured key: standard base64 of exactly 32 bytes.

    Surrounding whitespace is ignored. Raises ``VaultError`` (never quoting the text).
    """
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise VaultError(
            f"an encryption key must be standard base64 of {KEY_BYTES} bytes (generate one "
            "with `python -c 'import base64,os; print(base64.b64encode(os.urandom(32)).decode())'`)"
        ) from None
    if len(key) != KEY_BYTES:
        raise VaultError(
            f"an encryption key must be base64 of {KEY_BYTES} bytes, this one has {len(key)}"
        )
    return key


def generate_key() -> str:
    """A new random key, as the base64 text that ``parse_key`` reads."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")


def _aad(owner: str) -> bytes:
    return _AAD_PREFIX + owner.encode("utf-8")


class Vault:
    """Encrypts tokens under the primary (first) key; decrypts under any listed key."""

    __slots__ = ("_ciphers", "_primary", "_primary_key")

    def __init__(self, keys: Sequence[bytes]) -> None:
        """``keys``: raw 32-byte keys, newest (primary) first. A repeated key is ignored.

        Raises ``VaultError`` if ``keys`` is empty or a key is not 32 bytes.
        """
        if not keys:
            raise VaultError("no encryption key is configured")
        ciphers: dict[str, AESGCM] = {}
        for position, key in enumerate(keys):
            if not isinstance(key, bytes) or len(key) != KEY_BYTES:
                raise VaultError(f"encryption key #{position + 1} is not {KEY_BYTES} bytes")
            ciphers.setdefault(key_id_of(key), AESGCM(key))
        self._ciphers = ciphers
        self._primary = key_id_of(keys[0])
        self._primary_key = keys[0]

    def __repr__(self) -> str:
        return f"Vault(primary={self._primary!r}, key_ids={list(self._ciphers)!r})"

    @property
    def primary_key_id(self) -> str:
        """The id of the key that encrypts."""
        return self._primary

    @property
    def key_ids(self) -> list[str]:
        """The ids of every key that decrypts, primary first."""
        return list(self._ciphers)

    def derive(self, purpose: str) -> bytes:
        """A 32-byte key for ``purpose`` (e.g. ``comment-markers``), derived from the
        primary key with HKDF-SHA256: no extra secret to configure, and knowing it
        reveals nothing about the key that encrypts tokens. It changes when the primary
        key changes."""
        hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None,
                    info=f"coder-bridge/{purpose}".encode())
        return hkdf.derive(self._primary_key)

    def needs_rotation(self, key_id: str) -> bool:
        """True if a blob under ``key_id`` should be re-encrypted under the primary key."""
        return key_id != self._primary

    def encrypt(self, token: str, *, owner: str) -> tuple[str, bytes]:
        """(primary key id, nonce || AES-256-GCM ciphertext of ``token`` bound to ``owner``)."""
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = self._ciphers[self._primary].encrypt(nonce, token.encode("utf-8"), _aad(owner))
        return self._primary, nonce + sealed

    def decrypt(self, key_id: str, blob: bytes, *, owner: str) -> str:
        """The token sealed in ``blob`` under ``key_id`` for ``owner``.

        Raises ``VaultError`` for a key id not configured, or a blob that does not
        authenticate (wrong key, tampered, or moved to another owner's row).
        """
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise VaultError(
                f"a stored token is encrypted with key {key_id}, which is not among "
                "security.encryption_keys"
            )
        if len(blob) < _NONCE_BYTES + _TAG_BYTES:
            raise self._undecryptable(key_id)
        try:
            plain = cipher.decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], _aad(owner))
            return plain.decode("utf-8")
        except (InvalidTag, UnicodeDecodeError):
            raise self._undecryptable(key_id) from None

    @staticmethod
    def _undecryptable(key_id: str) -> VaultError:
        return VaultError(
            f"a stored token under key {key_id} cannot be decrypted: wrong key or the row "
            "was tampered with or moved"
        )


async def rotate(store: Store, vault: Vault) -> int:
    """Re-encrypt under the primary key every stored token that is not; return how many.

    Each row is swapped with ``store.replace_ciphertext`` (compare-and-swap on the
    old ciphertext), so a row re-linked meanwhile is left alone and not counted.
    Re-running after a failure is safe. Raises ``VaultError`` on a row that no
    configured key decrypts (nothing is lost: rows done so far stay done).
    """
    rotated = 0
    for account, _identities in await store.list_accounts():
        if not vault.needs_rotation(account.key_id):
            continue
        token = vault.decrypt(account.key_id, account.ciphertext, owner=account.coder_user_id)
        key_id, blob = vault.encrypt(token, owner=account.coder_user_id)
        swapped = await store.replace_ciphertext(
            account.id, old_ciphertext=account.ciphertext, key_id=key_id, ciphertext=blob
        )
        rotated += int(swapped)
    return rotated
