"""Token encryption: round trips, owner binding, tampering, key rotation, no leaks."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service.errors import VaultError
from service.store.base import Identity
from service.store.sqlite import SQLiteStore
from service.vault import Vault, generate_key, key_id_of, parse_key, rotate

TOKEN = "coder-session-7f3a9c-SECRET-token-value"
OLD_KEY = bytes(range(32))
NEW_KEY = bytes(range(100, 132))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = await SQLiteStore.open(tmp_path / "vault.db")
    await opened.migrate()
    yield opened
    await opened.close()


def test_round_trip_under_the_primary_key() -> None:
    vault = Vault([NEW_KEY, OLD_KEY])
    key_id, blob = vault.encrypt(TOKEN, owner="user-1")
    assert key_id == vault.primary_key_id == key_id_of(NEW_KEY)
    assert len(key_id) == 16 and int(key_id, 16) >= 0
    assert TOKEN.encode() not in blob
    assert vault.decrypt(key_id, blob, owner="user-1") == TOKEN
    assert vault.encrypt(TOKEN, owner="user-1")[1] != blob  # fresh nonce every time


def test_an_old_key_still_decrypts_and_is_flagged_for_rotation() -> None:
    old_id, blob = Vault([OLD_KEY]).encrypt(TOKEN, owner="user-1")
    vault = Vault([NEW_KEY, OLD_KEY])
    assert vault.decrypt(old_id, blob, owner="user-1") == TOKEN
    assert vault.needs_rotation(old_id) is True
    assert vault.needs_rotation(vault.primary_key_id) is False
    assert vault.key_ids == [key_id_of(NEW_KEY), key_id_of(OLD_KEY)]


def test_a_ciphertext_moved_to_another_owner_does_not_decrypt() -> None:
    vault = Vault([NEW_KEY])
    key_id, blob = vault.encrypt(TOKEN, owner="user-1")
    with pytest.raises(VaultError, match="tampered with or moved"):
        vault.decrypt(key_id, blob, owner="user-2")


@pytest.mark.parametrize("position", [0, 5, 12, -1])
def test_a_tampered_byte_does_not_decrypt(position: int) -> None:
    vault = Vault([NEW_KEY])
    key_id, blob = vault.encrypt(TOKEN, owner="user-1")
    tampered = bytearray(blob)
    tampered[position] ^= 0x01
    with pytest.raises(VaultError, match="cannot be decrypted"):
        vault.decrypt(key_id, bytes(tampered), owner="user-1")
    with pytest.raises(VaultError, match="cannot be decrypted"):
        vault.decrypt(key_id, blob[:20], owner="user-1")


def test_the_wrong_key_under_a_known_id_does_not_decrypt() -> None:
    _, blob = Vault([OLD_KEY]).encrypt(TOKEN, owner="user-1")
    vault = Vault([NEW_KEY])
    with pytest.raises(VaultError, match="wrong key"):
        vault.decrypt(vault.primary_key_id, blob, owner="user-1")


def test_an_unknown_key_id_is_named_but_no_key_material() -> None:
    old_id, blob = Vault([OLD_KEY]).encrypt(TOKEN, owner="user-1")
    with pytest.raises(VaultError) as caught:
        Vault([NEW_KEY]).decrypt(old_id, blob, owner="user-1")
    message = str(caught.value)
    assert old_id in message
    assert base64.b64encode(OLD_KEY).decode() not in message and TOKEN not in message


@pytest.mark.parametrize(
    "text",
    [
        base64.b64encode(bytes(31)).decode(),
        base64.b64encode(bytes(33)).decode(),
        "not base64 at all!",
        base64.urlsafe_b64encode(bytes([251] * 32)).decode(),  # URL-safe alphabet: refused
        "",
    ],
)
def test_bad_key_text_is_refused_without_echoing_it(text: str) -> None:
    with pytest.raises(VaultError) as caught:
        parse_key(text)
    assert text == "" or text not in str(caught.value)


def test_generated_keys_parse_and_differ() -> None:
    first, second = generate_key(), generate_key()
    assert len(parse_key(first)) == 32 and first != second
    assert parse_key(f"  {first}\n") == parse_key(first)
    vault = Vault([parse_key(first), parse_key(second)])
    assert vault.primary_key_id == key_id_of(parse_key(first))


@pytest.mark.parametrize("keys", [[], [bytes(16)], [NEW_KEY, bytes(33)]])
def test_a_vault_needs_32_byte_keys(keys: list[bytes]) -> None:
    with pytest.raises(VaultError):
        Vault(keys)


def test_repr_shows_key_ids_only() -> None:
    vault = Vault([NEW_KEY, OLD_KEY])
    text = repr(vault)
    assert key_id_of(NEW_KEY) in text and key_id_of(OLD_KEY) in text
    for key in (NEW_KEY, OLD_KEY):
        assert base64.b64encode(key).decode() not in text and key.hex() not in text


async def test_rotate_moves_every_row_to_the_primary_key(store: SQLiteStore) -> None:
    old_vault = Vault([OLD_KEY])
    for n in range(3):
        key_id, blob = old_vault.encrypt(f"{TOKEN}-{n}", owner=f"user-{n}")
        await store.link_account(
            coder_user_id=f"user-{n}",
            coder_username=f"name-{n}",
            key_id=key_id,
            ciphertext=blob,
            identities=[Identity("github", str(n))],
        )
    both = Vault([NEW_KEY, OLD_KEY])
    assert await rotate(store, both) == 3
    assert await rotate(store, both) == 0  # nothing left to do

    new_only = Vault([NEW_KEY])  # the old key can now be removed from the config
    for account, _ in await store.list_accounts():
        assert account.key_id == new_only.primary_key_id
        suffix = account.coder_user_id.removeprefix("user-")
        decrypted = new_only.decrypt(
            account.key_id, account.ciphertext, owner=account.coder_user_id
        )
        assert decrypted == f"{TOKEN}-{suffix}"


async def test_rotate_fails_loudly_on_a_row_no_key_decrypts(store: SQLiteStore) -> None:
    key_id, blob = Vault([OLD_KEY]).encrypt(TOKEN, owner="user-1")
    await store.link_account(
        coder_user_id="user-1",
        coder_username="alice",
        key_id=key_id,
        ciphertext=blob,
        identities=[Identity("github", "1")],
    )
    with pytest.raises(VaultError, match=key_id):
        await rotate(store, Vault([NEW_KEY]))


def read_database_files(folder: Path) -> tuple[list[str], bytes]:
    """The names and concatenated raw bytes of the database, WAL and shared-memory files."""
    files = sorted(p for p in folder.iterdir() if p.name.startswith("vault.db"))
    return [p.name for p in files], b"".join(p.read_bytes() for p in files)


async def test_the_plaintext_token_never_reaches_the_database_files(
    store: SQLiteStore, tmp_path: Path
) -> None:
    vault = Vault([NEW_KEY])
    key_id, blob = vault.encrypt(TOKEN, owner="user-1")
    await store.link_account(
        coder_user_id="user-1",
        coder_username="alice",
        key_id=key_id,
        ciphertext=blob,
        identities=[Identity("github", "1")],
    )
    names, raw = read_database_files(tmp_path)
    assert "vault.db-wal" in names  # the commit sits in the WAL, which is searched too
    assert blob in raw  # the ciphertext is stored: the search below is meaningful
    assert TOKEN.encode() not in raw
    assert TOKEN.encode("utf-16-le") not in raw
