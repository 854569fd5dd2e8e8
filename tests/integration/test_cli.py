"""The command line as users run it: exit statuses, messages, token handling, key rotation."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.store import load_migrations
from tests.conftest import REPO
from tests.e2e.harness import wait_for
from tests.fakes.coder import FakeCoder
from tests.fakes.server import free_port, serve_in_thread

KEY_A = base64.b64encode(b"A" * 32).decode()
KEY_B = base64.b64encode(b"B" * 32).decode()
LINEAR_ID = "0b7e4f7a-3c1d-4e2f-9a8b-7c6d5e4f3a2b"


@pytest.fixture
def coder() -> Iterator[tuple[FakeCoder, str]]:
    fake = FakeCoder("tasks")
    with serve_in_thread(fake.app()) as url:
        yield fake, url


def write_config(tmp_path: Path, coder_url: str, keys: list[str]) -> Path:
    path = tmp_path / "config.toml"
    key_list = ", ".join(f'"{k}"' for k in keys)
    path.write_text(f"""
[storage]
url = "sqlite:///{tmp_path / 'bridge.db'}"
[security]
encryption_keys = [{key_list}]
[coder]
url = "{coder_url}"
template = "tasks-docker"
""")
    return path


def run(config: Path | None, *args: str, stdin: str = "", cwd: Path | None = None
        ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODER_BRIDGE")}
    env["PYTHONPATH"] = str(REPO)
    extra = ["--config", str(config)] if config else []
    where = cwd or (config.parent if config else REPO)
    return subprocess.run([sys.executable, "-m", "service", *args, *extra], input=stdin,
                          capture_output=True, text=True, env=env, cwd=where, timeout=60,
                          check=False)


def test_check_config_lists_every_problem_and_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[server]\nport = "x"\nbogus = 1\n[coder]\napi = "soap"\n')
    result = run(path, "check-config")
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    for key in ("server.port", "server.bogus", "coder.url", "coder.api",
                "security.encryption_keys"):
        assert any(line.startswith(f"config error: {key}:") for line in lines), (key, lines)


def test_check_config_accepts_the_example_with_its_environment(tmp_path: Path) -> None:
    env_config = tmp_path / "config.toml"
    env_config.write_text((REPO / "config.example.toml").read_text()
                          .replace('"env:CODER_BRIDGE_KEY"', f'"{KEY_A}"')
                          .replace('"env:GITHUB_WEBHOOK_SECRET"', '"s"')
                          .replace('"env:GITHUB_TOKEN"', '"t"')
                          .replace('"env:LINEAR_WEBHOOK_SECRET"', '"s"')
                          .replace('"env:LINEAR_API_KEY"', '"lin_api_x"'))
    result = run(env_config, "check-config")
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout


def test_config_may_come_before_or_after_the_subcommand(
    tmp_path: Path, coder: tuple[FakeCoder, str]
) -> None:
    _, url = coder
    config = write_config(tmp_path, url, [KEY_A])
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODER_BRIDGE")}
    env["PYTHONPATH"] = str(REPO)
    for args in (["--config", str(config), "migrate"], ["migrate", "--config", str(config)]):
        result = subprocess.run([sys.executable, "-m", "service", *args], capture_output=True,
                                text=True, env=env, cwd=tmp_path, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "bridge.db").exists()
        assert not (tmp_path / "data").exists()  # not the development defaults


def test_bad_usage_exits_2() -> None:
    assert run(None, "users", "link", "--github-id", "12").returncode == 2  # no token source
    assert run(None, "frobnicate").returncode == 2


def test_link_validates_the_token_and_never_stores_a_rejected_one(
    tmp_path: Path, coder: tuple[FakeCoder, str]
) -> None:
    fake, url = coder
    config = write_config(tmp_path, url, [KEY_A])
    bad = run(config, "users", "link", "--github-id", "7", "--coder-token-stdin",
              stdin="abcde12345-AbCdEfGhIjKlMnOpQrStUv\n")
    assert bad.returncode == 1
    assert "rejected this token" in bad.stderr and "nothing was stored" in bad.stderr
    assert "AbCdEfGhIjKlMnOpQrStUv" not in bad.stderr + bad.stdout
    assert "no linked accounts" in run(config, "users", "list").stdout

    token = fake.add_user("alice")
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    good = run(config, "users", "link", "--github-id", "7", "--github-login", "al",
               "--linear-id", "5F8C3B8E-2A41-4C55-9A3E-0D6F1C2B7A10",
               "--coder-token-file", str(token_file))
    assert good.returncode == 0, good.stderr
    assert "to Coder user alice" in good.stdout
    listing = run(config, "users", "list").stdout
    assert "alice" in listing and "github:7 (al)" in listing and "token valid" in listing
    assert "linear:5f8c3b8e-2a41-4c55-9a3e-0d6f1c2b7a10" in listing
    assert token not in listing


def test_unlink_removes_identities_and_then_the_account(
    tmp_path: Path, coder: tuple[FakeCoder, str]
) -> None:
    fake, url = coder
    config = write_config(tmp_path, url, [KEY_A])
    token = fake.add_user("bob")
    assert run(config, "users", "link", "--github-id", "8", "--linear-id", LINEAR_ID,
               "--coder-token-stdin", stdin=token).returncode == 0
    assert run(config, "users", "unlink", "--github-id", "8").returncode == 0
    assert "bob" in run(config, "users", "list").stdout
    assert run(config, "users", "unlink", "--linear-id", LINEAR_ID.upper()).returncode == 0
    assert "no linked accounts" in run(config, "users", "list").stdout
    missing = run(config, "users", "unlink", "--coder-user", "bob")
    assert missing.returncode == 1 and "not linked" in missing.stderr


def test_keys_rotate_lets_the_old_key_go(tmp_path: Path, coder: tuple[FakeCoder, str]) -> None:
    fake, url = coder
    token = fake.add_user("carol")
    old = write_config(tmp_path, url, [KEY_A])
    assert run(old, "users", "link", "--github-id", "9", "--coder-token-stdin",
               stdin=token).returncode == 0

    both = write_config(tmp_path, url, [KEY_B, KEY_A])
    rotated = run(both, "keys", "rotate")
    assert rotated.returncode == 0 and "re-encrypted 1 token" in rotated.stdout

    write_config(tmp_path, url, [KEY_B])
    check = subprocess.run(
        [sys.executable, "-c", f"""
import asyncio
from service.store import open_store
from service.vault import Vault
async def main():
    store = await open_store("sqlite:///{tmp_path / 'bridge.db'}")
    account = await store.find_account("github", "9")
    print(Vault([b"B" * 32]).decrypt(account.key_id, account.ciphertext,
                                     owner=account.coder_user_id) == {token!r})
    await store.close()
asyncio.run(main())
"""], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60, check=False)
    assert check.stdout.strip() == "True", check.stderr


def test_deliveries_retry_of_an_unknown_id_is_a_user_error(
    tmp_path: Path, coder: tuple[FakeCoder, str]
) -> None:
    _, url = coder
    config = write_config(tmp_path, url, [KEY_A])
    result = run(config, "deliveries", "retry", "no-such-delivery")
    assert result.returncode == 1 and "unknown" in result.stderr
    assert "no deliveries" in run(config, "deliveries", "list").stdout


def test_migrate_reports_the_schema_version(tmp_path: Path, coder: tuple[FakeCoder, str]) -> None:
    _, url = coder
    config = write_config(tmp_path, url, [KEY_A])
    newest = load_migrations("sqlite")[-1].version
    first = run(config, "migrate")
    applied = ", ".join(str(version) for version in range(1, newest + 1))
    assert first.returncode == 0 and f"applied migrations {applied}" in first.stdout
    again = run(config, "migrate")
    assert f"schema is current (version {newest})" in again.stdout


def test_allow_others_is_switched_per_person_and_shown(
    tmp_path: Path, coder: tuple[FakeCoder, str]
) -> None:
    fake, url = coder
    config = write_config(tmp_path, url, [KEY_A])
    token = fake.add_user("alice")
    assert run(config, "users", "link", "--github-id", "1", "--coder-token-stdin",
               stdin=token).returncode == 0
    assert "only their own requests" in run(config, "users", "list").stdout
    on = run(config, "users", "allow-others", "--github-id", "1", "--on")
    assert on.returncode == 0 and "others may now delegate" in on.stdout
    assert "others may delegate" in run(config, "users", "list").stdout
    off = run(config, "users", "allow-others", "--coder-user", "alice", "--off")
    assert off.returncode == 0 and "only their own requests" in off.stdout
    assert "only their own requests" in run(config, "users", "list").stdout
    unknown = run(config, "users", "allow-others", "--linear-id", LINEAR_ID, "--on")
    assert unknown.returncode == 1 and "is not linked" in unknown.stderr
    assert run(config, "users", "allow-others", "--github-id", "1").returncode == 2  # on or off?


def test_delegations_list_filters_by_state(tmp_path: Path, coder: tuple[FakeCoder, str]) -> None:
    _, url = coder
    config = write_config(tmp_path, url, [KEY_A])
    assert run(config, "migrate").returncode == 0
    assert "no delegations" in run(config, "delegations", "list").stdout
    script = f"""
import asyncio, dataclasses
from service.core.events import IssueEvent, Person
from service.store import open_store

async def main():
    store = await open_store("sqlite:///{tmp_path / 'bridge.db'}")
    for n, state in ((1, "working"), (2, "done"), (3, "awaiting_consent")):
        d = await store.create_delegation(issue_key=f"github:1:{{n}}", tracker="github",
                                          delivery_id=f"d{{n}}", generation=1, now=1e9 + n)
        event = IssueEvent("github", f"d{{n}}", f"github:1:{{n}}", "9", str(n), "t", "",
                           "https://github.com/o/r/issues/1", "o/r", Person("1", "a"), None)
        await store.save_delegation(dataclasses.replace(
            d, state=state, trigger_json=event.to_json(), updated_at=1e9 + n,
            task_kind="task" if n < 3 else None, task_url=f"https://c/tasks/a/{{n}}"))
    await store.close()

asyncio.run(main())
"""
    subprocess.run([sys.executable, "-c", script], check=True, env={**os.environ,
                   "PYTHONPATH": str(REPO)}, cwd=REPO, timeout=60)
    every = run(config, "delegations", "list").stdout.splitlines()
    assert [line.split("\t")[0] for line in every] == ["o/r#3", "o/r#2", "o/r#1"]
    assert every[2].split("\t")[1:5] == ["-", "task", "https://c/tasks/a/1", "working"]
    active = run(config, "delegations", "list", "--state", "active").stdout
    assert active.splitlines() == [every[2]]
    assert "no delegations in state stopped" in run(config, "delegations", "list", "--state",
                                                    "stopped").stdout
    assert run(config, "delegations", "list", "--state", "bogus").returncode == 2
    assert len(run(config, "delegations", "list", "--limit", "1").stdout.splitlines()) == 1


def test_commands_that_do_not_serve_need_no_tracker_secrets(
    tmp_path: Path, coder: tuple[FakeCoder, str]
) -> None:
    fake, url = coder
    config = write_config(tmp_path, url, [KEY_A])
    config.write_text(config.read_text() + """
[github]
webhook_secret = "env:GITHUB_WEBHOOK_SECRET"
token = "env:GITHUB_TOKEN"
app_id = "env:GITHUB_APP_ID_UNUSED"
[linear]
webhook_secret = "file:/nonexistent/linear-secret"
api_key = "env:LINEAR_API_KEY"
""")
    token = fake.add_user("dora")
    link = run(config, "users", "link", "--github-id", "5", "--coder-token-stdin", stdin=token)
    assert link.returncode == 0, link.stderr
    for args in (("users", "list"), ("deliveries", "list"), ("delegations", "list"),
                 ("migrate",), ("keys", "rotate"),
                 ("users", "allow-others", "--github-id", "5", "--on")):
        result = run(config, *args)
        assert result.returncode == 0, (args, result.stderr)
    assert "dora" in run(config, "users", "list").stdout
    serving = run(config, "check-config")
    assert serving.returncode == 1
    for key in ("github.webhook_secret", "github.token", "linear.webhook_secret",
                "linear.api_key"):
        assert f"config error: {key}" in serving.stderr, (key, serving.stderr)


def test_readers_never_migrate_and_say_how(tmp_path: Path, coder: tuple[FakeCoder, str]) -> None:
    _, url = coder
    config = write_config(tmp_path, url, [KEY_A])
    for args in (("users", "list"), ("deliveries", "list"), ("delegations", "list")):
        result = run(config, *args)
        assert result.returncode == 1, args
        assert "schema is at version 0" in result.stderr
        assert "run `coder-bridge migrate`" in result.stderr
    assert run(config, "migrate").returncode == 0
    assert run(config, "users", "list").stdout.strip() == "no linked accounts"


def test_writers_migrate_and_say_so(tmp_path: Path, coder: tuple[FakeCoder, str]) -> None:
    fake, url = coder
    config = write_config(tmp_path, url, [KEY_A])
    link = run(config, "users", "link", "--github-id", "3", "--coder-token-stdin",
               stdin=fake.add_user("erin"))
    assert link.returncode == 0 and "applied schema migrations" in link.stderr
    again = run(config, "users", "link", "--github-id", "4", "--coder-token-stdin",
                stdin=fake.add_user("finn"))
    assert again.returncode == 0 and "migrations" not in again.stderr


def test_a_linear_id_must_be_a_uuid() -> None:
    result = run(None, "users", "link", "--linear-id", "ada@example.com", "--coder-token-stdin")
    assert result.returncode == 2 and "is not a Linear user id (a UUID" in result.stderr


def test_config_refuses_an_empty_secret_list_and_a_coder_url_with_a_path(
    tmp_path: Path,
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f"""
[security]
encryption_keys = ["{KEY_A}"]
[coder]
url = "https://coder.example.com/api/v2"
[github]
webhook_secret = []
token = "t"
""")
    result = run(path, "check-config")
    assert result.returncode == 1
    assert "config error: github.webhook_secret: lists no secret" in result.stderr
    assert ("config error: coder.url: must be the deployment's address without a path: "
            "https://coder.example.com, not https://coder.example.com/api/v2") in result.stderr


def test_check_config_warns_about_secrets_trackers_would_not_match(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f"""
[security]
encryption_keys = ["{KEY_A}"]
[coder]
url = "https://coder.example.com"
template = "t"
[github]
webhook_secret = ["short", "a-long-enough-secret-with-a-space "]
token = "t"
repositories = ["acme/*"]
[[routes]]
match = {{ provider = "linear", team = "ENG" }}
template = "x"
""")
    result = run(path, "check-config")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning:")]
    assert any("github.webhook_secret[0] is shorter than 16 characters" in w for w in warnings)
    assert any("github.webhook_secret[1] begins or ends with whitespace" in w for w in warnings)
    assert any("routes[0] is for linear, which has no [linear] section" in w for w in warnings)
    assert "short" not in result.stdout.replace("shorter", "")  # the secret itself never


def test_serve_takes_host_and_port_and_a_taken_port_is_exit_1(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        result = run(None, "serve", "--port", str(port), cwd=tmp_path)
    finally:
        taken.close()
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: another process listens there" in result.stderr
    assert not (tmp_path / "data").exists()  # nothing was started or created

    free = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODER_BRIDGE")}
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--host", "127.0.0.1", "--port", str(free)],
        cwd=tmp_path, env={**env, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        def healthy() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{free}/healthz", timeout=1).is_success
            except httpx.HTTPError:
                return False

        wait_for(healthy, what="serve --port to answer")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
