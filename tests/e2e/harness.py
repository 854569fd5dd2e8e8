"""End-to-end harness: the real bridge as a subprocess, fakes of Coder and GitHub on loopback.

The bridge is started exactly as an operator would (``python -m service serve
--config FILE``), secrets reach it only through the environment, and tokens
through standard input. Tests talk to it over HTTP and read the outcome from
the fakes, the CLI and the log file.
"""

from __future__ import annotations

import base64
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import (
    GITHUB_SECRET,
    LINEAR_FIXTURE,
    LINEAR_SECRET,
    REPO,
    fixture_bytes,
    github_headers,
    linear_delivery,
    sign_github,
    sign_linear,
)
from tests.fakes.coder import FakeCoder
from tests.fakes.github import DEFAULT_LOGIN, DEFAULT_TOKEN, FakeGitHub
from tests.fakes.linear import DEFAULT_API_KEY, FIXTURE_ISSUE_ID, FakeLinear
from tests.fakes.server import free_port, serve_in_thread

T = TypeVar("T")

ENCRYPTION_KEY = base64.b64encode(b"e2e-test-key-32-bytes-long-....."[:32]).decode()
AUTHOR_GITHUB_ID = "21031067"  # Codertocat, the author in every GitHub fixture
AUTHOR_LINEAR_ID = "5f8c3b8e-2a41-4c55-9a3e-0d6f1c2b7a10"  # Ada, creator of the Linear fixture
REPOSITORY = "Codertocat/Hello-World"
#: ``running_bridge(github_app=True)``: the bridge acts as this GitHub App (one installation
#: on REPOSITORY) instead of with a token; its comments are the bot's.
APP_ID = 4242
APP_LOGIN = "my-app[bot]"
_APP_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
APP_KEY_PEM = _APP_KEY.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()).decode()
APP_PUBLIC_PEM = _APP_KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
FIXTURE_REPOSITORY_ID = 186853002  # the repository id in every GitHub fixture


def _is_reply(body: str) -> bool:
    """Whether a bridge comment is a short reply to a command (not the status comment)."""
    return not body.startswith(("**Starting**", "**Working**", "**Needs input**", "**Done**",
                                "**Failed**", "**Stopped**", "**Waiting"))


def wait_for(condition: Callable[[], T], *, timeout: float = 15.0, what: str = "condition") -> T:
    """Poll ``condition`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


@dataclass
class Bridge:
    """A running (or stopped) bridge process with its fakes and files."""

    workdir: Path
    coder: FakeCoder
    github: FakeGitHub
    linear: FakeLinear
    coder_url: str
    github_url: str
    linear_url: str
    port: int
    settings: dict[str, Any] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    relabels: int = 0
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.workdir / "bridge.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "config.toml"

    @property
    def db_path(self) -> Path:
        return self.workdir / "bridge.db"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CODER_BRIDGE")}
        env.update({f"CODER_BRIDGE_KEY_{i}": key for i, key in enumerate(self.keys)})
        env.update({
            "GITHUB_WEBHOOK_SECRET": GITHUB_SECRET,
            "GITHUB_TOKEN": DEFAULT_TOKEN,
            "LINEAR_WEBHOOK_SECRET": LINEAR_SECRET,
            "LINEAR_API_KEY": DEFAULT_API_KEY,
            "PYTHONPATH": str(REPO),
        })
        return env

    @property
    def keys(self) -> list[str]:
        """``security.encryption_keys`` (``settings["encryption_keys"]``), newest first."""
        return list(self.settings.get("encryption_keys", [ENCRYPTION_KEY]))

    def write_config(self) -> None:
        s = self.settings
        keys = [f"env:CODER_BRIDGE_KEY_{i}" for i in range(len(self.keys))]
        self.config_path.write_text(f"""
[server]
host = "127.0.0.1"
port = {self.port}
public_url = "{s.get("public_url", "https://bridge.example.test").replace("SELF", self.url)}"
max_body_bytes = {s.get("max_body_bytes", 1048576)}

[storage]
url = "{s.get("storage_url", f"sqlite:///{self.db_path}")}"

[security]
encryption_keys = {json.dumps(keys)}
admin_token = "{s.get("admin_token", "")}"

[coder]
url = "{self.coder_url}"
template = "{s.get("template", "tasks-docker")}"
preset = "{s.get("preset", "")}"
api = "{s.get("api", "auto")}"
timeout = {s.get("coder_timeout", 2.0)}
{self._oauth_keys("coder", "oauth2_client", None)}

[github]
webhook_secret = "env:GITHUB_WEBHOOK_SECRET"
api_url = "{self.github_url}"
{self._github_credential()}
trigger_label = "bug"
status_labels = {str(s.get("status_labels", False)).lower()}
repositories = {json.dumps(s.get("repositories", []))}
comments_per_minute = {s.get("comments_per_minute", 80)}
comments_per_hour = {s.get("comments_per_hour", 500)}
{self._oauth_keys("github", "oauth_client", self.github_url)}

[linear]
webhook_secret = "env:LINEAR_WEBHOOK_SECRET"
api_url = "{self.linear_url}/graphql"
api_key = "env:LINEAR_API_KEY"
{self._oauth_keys("linear", "oauth_client", self.linear_url)}

[delegation]
acting_user = {s.get("acting_user", '["author"]')}

[reconcile]
interval = {s.get("reconcile_interval", 0)}

[sync]
interval = {s.get("sync_interval", 1)}
stop_on_unlabel = {str(s.get("stop_on_unlabel", True)).lower()}
stop_on_close = {str(s.get("stop_on_close", True)).lower()}
max_runtime = {s.get("max_runtime", 0)}

[worker]
concurrency = 4
max_attempts = {s.get("max_attempts", 8)}
lease_seconds = {s.get("lease_seconds", 5)}
poll_interval = 0.05
{s.get("extra_toml", "")}
""")

    def _github_credential(self) -> str:
        """``token``, or with ``settings["github_app"]`` the App's id and key (the fake
        knows the App: ``running_bridge`` set it up)."""
        if not self.settings.get("github_app"):
            return 'token = "env:GITHUB_TOKEN"'
        key = self.workdir / "github-app.pem"
        key.write_text(APP_KEY_PEM)
        return f'app_id = {APP_ID}\nprivate_key = "file:{key}"'

    def _oauth_keys(self, provider: str, prefix: str, web_url: str | None) -> str:
        """The OAuth client keys of a section, from ``settings[f"{provider}_oauth"]``
        (client id, secret); ``web_url``: where people sign in (the fake)."""
        client = self.settings.get(f"{provider}_oauth")
        if client is None:
            return ""
        lines = [f'{prefix}_id = "{client[0]}"', f'{prefix}_secret = "{client[1]}"']
        if web_url is not None:
            lines.append(f'web_url = "{web_url}"')
        return "\n".join(lines)

    # -- the process -----------------------------------------------------------------
    def start(self, *args: str, ready: bool = True) -> None:
        """Start ``coder-bridge serve`` and wait until /readyz answers 200 (``ready``), or
        /healthz (not ``ready``: a bridge expected to report itself not ready)."""
        self.write_config()
        log = self.log_path.open("ab")
        nofile = self.settings.get("nofile")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--config", str(self.config_path), *args],
            cwd=self.workdir, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=(lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile)))
            if nofile else None,
        )
        log.close()

        def is_ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"bridge exited with {self.process.returncode}:\n"
                                     + self.log_path.read_text())
            try:
                probe = "/readyz" if ready else "/healthz"
                return httpx.get(f"{self.url}{probe}", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(is_ready, timeout=20, what="the bridge to become ready")

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit status."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)

    def kill(self) -> None:
        """SIGKILL: the process dies on the spot, as in a crash."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)

    def cli(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        """Run ``coder-bridge ARGS --config FILE`` and return the finished process."""
        self.write_config()
        return subprocess.run(
            [sys.executable, "-m", "service", *args, "--config", str(self.config_path)],
            cwd=self.workdir, env=self.env(), input=stdin, capture_output=True, text=True,
            timeout=60, check=False,
        )

    # -- helpers ---------------------------------------------------------------------
    def link_author(self, username: str = "codertocat") -> str:
        """Create the Coder user and link the fixtures' authors to it; returns the token."""
        token = self.coder.add_user(username)
        result = self.cli("users", "link", "--github-id", AUTHOR_GITHUB_ID,
                          "--github-login", "Codertocat", "--linear-id", AUTHOR_LINEAR_ID,
                          "--coder-token-stdin", stdin=token)
        assert result.returncode == 0, result.stderr
        return token

    def deliver_linear(self, *, sent_at: float | None = None, delivery_id: str | None = None
                       ) -> httpx.Response:
        """POST the Linear fixture, re-stamped with ``sent_at`` (default now) and re-signed."""
        body, headers = linear_delivery(sent_at=time.time() if sent_at is None else sent_at)
        if delivery_id:
            headers["Linear-Delivery"] = delivery_id
        return httpx.post(f"{self.url}/webhooks/linear", content=body, headers=headers,
                          timeout=10)

    def linear_comments(self) -> list[dict[str, Any]]:
        return self.linear.comments(FIXTURE_ISSUE_ID)

    def deliver(self, fixture: str = "issues__labeled.json", *, delivery_id: str | None = None,
                body: bytes | None = None, headers: dict[str, str] | None = None
                ) -> httpx.Response:
        """POST a GitHub fixture (signed), optionally under another delivery id."""
        sent_headers = github_headers(fixture)
        if delivery_id:
            sent_headers["X-GitHub-Delivery"] = delivery_id
        sent_headers.update(headers or {})
        content = body if body is not None else fixture_bytes(f"github/{fixture}")
        return httpx.post(f"{self.url}/webhooks/github", content=content,
                          headers=sent_headers, timeout=10)

    def relabel(self, delivery_id: str, *, sender_id: int | None = None,
                sender_login: str | None = None) -> httpx.Response:
        """POST a new ``labeled`` delivery of the fixture's issue, as GitHub sends it when
        someone adds the label again now (not at the issue's creation): its own body,
        signed, under ``delivery_id``. Each relabel is a second after the one before, as
        two people's clicks would be (GitHub's times have whole seconds)."""
        self.relabels += 1
        payload = json.loads(fixture_bytes("github/issues__labeled.json"))
        payload["issue"]["updated_at"] = time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + self.relabels))
        if sender_id is not None:
            payload["sender"].update(id=sender_id, login=sender_login or f"user{sender_id}")
        body = json.dumps(payload).encode()
        return self.deliver(body=body, delivery_id=delivery_id,
                            headers={"X-Hub-Signature-256": sign_github(body)})

    def deliver_issue(self, number: int, delivery_id: str | None = None, *,
                      sender: tuple[int, str] | None = None) -> httpx.Response:
        """POST the fixture's ``labeled`` delivery as if for issue ``number`` of the same
        repository (which the GitHub fake then has), signed; ``sender`` (id, login) is
        who added the label (default: the author)."""
        self.github.add_issue(REPOSITORY, number)
        payload = json.loads(fixture_bytes("github/issues__labeled.json"))
        payload["issue"].update(number=number, id=444500000 + number,
                                html_url=f"https://github.com/{REPOSITORY}/issues/{number}")
        if sender is not None:
            payload["sender"].update(id=sender[0], login=sender[1])
        body = json.dumps(payload).encode()
        return self.deliver(body=body, delivery_id=delivery_id or f"issue-{number}",
                            headers={"X-Hub-Signature-256": sign_github(body)})

    def open_issue_as_outsider(self, delivery_id: str) -> httpx.Response:
        """The fixture's ``opened`` delivery (with the trigger label) for an issue written
        by someone without access to the repository (``author_association`` ``NONE``)."""
        payload = json.loads(fixture_bytes("github/issues__opened.json"))
        payload["issue"]["author_association"] = "NONE"
        return self.send_github("issues", payload, delivery_id)

    def comments(self, number: int = 1) -> list[dict[str, Any]]:
        return self.github.comments(REPOSITORY, number)

    def bridge_comments(self, number: int = 1) -> list[dict[str, Any]]:
        """The comments the bridge's account (its token's user, or its App's bot) wrote on
        the issue."""
        login = APP_LOGIN if self.settings.get("github_app") else DEFAULT_LOGIN
        return [c for c in self.comments(number) if c["user"]["login"] == login]

    def status(self, number: int = 1) -> str:
        """The first line of the bridge's status comment (the state in bold)."""
        [comment] = [c for c in self.bridge_comments(number) if c["body"].startswith("**")
                     and "coder-bridge:" in c["body"] and not _is_reply(c["body"])]
        return str(comment["body"]).splitlines()[0]

    def wait_for_status(self, state: str, *, contains: str = "", number: int = 1,
                        timeout: float = 20.0) -> dict[str, Any]:
        """The bridge's status comment once its first line starts with ``**state**`` (and
        its body contains ``contains``)."""
        def shown() -> dict[str, Any] | None:
            for comment in self.bridge_comments(number):
                body = str(comment["body"])
                if body.startswith(f"**{state}**") and contains in body:
                    return comment
            return None

        return wait_for(shown, timeout=timeout, what=f"the status comment to show {state}"
                        + (f" with {contains!r}" if contains else ""))

    def send_github(self, event: str, payload: dict[str, Any], delivery_id: str
                    ) -> httpx.Response:
        """POST ``payload`` as a signed GitHub delivery of ``event``."""
        return self.post_github(*github_delivery(event, payload, delivery_id))

    def post_github(self, body: bytes, headers: dict[str, str]) -> httpx.Response:
        """POST a delivery's bytes and headers to the bridge's GitHub webhook."""
        return httpx.post(f"{self.url}/webhooks/github", content=body, headers=headers,
                          timeout=10)

    def say(self, text: str, *, user_id: int = int(AUTHOR_GITHUB_ID),
            login: str = "Codertocat", user_type: str = "User", number: int = 1) -> int:
        """Someone comments ``text`` on the issue: the comment appears on the GitHub fake
        and its ``issue_comment`` ``created`` delivery reaches the bridge. Returns its id."""
        comment_id, payload = self.comment(text, user_id=user_id, login=login,
                                           user_type=user_type, number=number)
        answer = self.send_github("issue_comment", payload, f"comment-{comment_id}")
        assert answer.status_code == 200, answer.text
        return comment_id

    def comment(self, text: str, *, user_id: int = int(AUTHOR_GITHUB_ID),
                login: str = "Codertocat", user_type: str = "User", number: int = 1
                ) -> tuple[int, dict[str, Any]]:
        """A comment on the GitHub fake, and the payload of its ``issue_comment``
        ``created`` delivery (not sent)."""
        comment_id = self.github.add_comment(REPOSITORY, number, text, login=login)
        [stored] = [c for c in self.comments(number) if c["id"] == comment_id]
        stored["user"].update(id=user_id, type=user_type)
        labeled = json.loads(fixture_bytes("github/issues__labeled.json"))
        labeled["issue"]["number"] = number
        sender = {**labeled["sender"], "login": login, "id": user_id, "type": user_type}
        return comment_id, {"action": "created", "issue": labeled["issue"], "comment": stored,
                            "repository": labeled["repository"], "sender": sender}

    def unlabel(self, delivery_id: str, *, sender_id: int = int(AUTHOR_GITHUB_ID),
                sender_login: str = "Codertocat") -> httpx.Response:
        """The trigger label is removed from issue 1 by ``sender``."""
        payload = json.loads(fixture_bytes("github/issues__unlabeled.json"))
        payload["sender"].update(id=sender_id, login=sender_login)
        return self.send_github("issues", payload, delivery_id)

    def close_issue(self, delivery_id: str, *, sender_id: int = int(AUTHOR_GITHUB_ID),
                    sender_login: str = "Codertocat") -> httpx.Response:
        """Issue 1 is closed (as completed) by ``sender``."""
        payload = json.loads(fixture_bytes("github/issues__labeled.json"))
        payload["action"] = "closed"
        payload.pop("label", None)
        payload["issue"].update(state="closed", state_reason="completed",
                                closed_at=payload["issue"]["updated_at"])
        payload["sender"].update(id=sender_id, login=sender_login)
        return self.send_github("issues", payload, delivery_id)

    def send_linear(self, payload: dict[str, Any], delivery_id: str) -> httpx.Response:
        """POST ``payload`` as a signed, fresh Linear delivery."""
        payload["webhookTimestamp"] = round(time.time() * 1000)
        body = json.dumps(payload).encode()
        _, headers = linear_delivery()
        headers.update({"Linear-Delivery": delivery_id, "Linear-Signature": sign_linear(body),
                        "Linear-Event": str(payload["type"])})
        return httpx.post(f"{self.url}/webhooks/linear", content=body, headers=headers,
                          timeout=10)

    def say_on_linear(self, text: str, *, user_id: str = AUTHOR_LINEAR_ID,
                      name: str = "Ada Lovelace") -> str:
        """Someone comments ``text`` on the Linear fixture's issue; returns its id."""
        comment_id = self.linear.add_comment(FIXTURE_ISSUE_ID, text, user=name)
        issue = json.loads(fixture_bytes(LINEAR_FIXTURE))["data"]
        payload = {
            "action": "create", "type": "Comment", "createdAt": issue["updatedAt"],
            "organizationId": "dc844923-f9a4-40a3-825c-dea7747e57d6",
            "url": f"{issue['url']}#comment-{comment_id[:8]}",
            "webhookId": "000042e3-d123-4980-b49f-8e140eef9329",
            "data": {"id": comment_id, "body": text, "issueId": FIXTURE_ISSUE_ID,
                     "userId": user_id, "user": {"id": user_id, "name": name},
                     "issue": {key: issue[key] for key in
                               ("id", "identifier", "title", "url", "teamId", "team")},
                     "botActor": None, "createdAt": issue["updatedAt"],
                     "updatedAt": issue["updatedAt"], "reactionData": {}},
        }
        answer = self.send_linear(payload, f"linear-comment-{comment_id}")
        assert answer.status_code == 200, answer.text
        return comment_id

    def change_linear_issue(self, delivery_id: str, *, state_type: str | None = None,
                            remove_trigger_label: bool = False) -> httpx.Response:
        """An ``Issue`` ``update`` of the fixture's issue: moved to a state of
        ``state_type``, or with the trigger label removed."""
        payload = json.loads(fixture_bytes(LINEAR_FIXTURE))
        data = payload["data"]
        if state_type is not None:
            payload["updatedFrom"] = {"stateId": data["stateId"]}
            data["state"] = {"id": "s-closed", "name": state_type.title(), "color": "#000",
                             "type": state_type}
            data["stateId"] = "s-closed"
        if remove_trigger_label:
            payload["updatedFrom"] = {"labelIds": list(data["labelIds"])}
            trigger = [label for label in data["labels"] if label["name"] == "delegate-to-agent"]
            data["labelIds"] = [i for i in data["labelIds"] if i != trigger[0]["id"]]
            data["labels"] = [label for label in data["labels"] if label not in trigger]
        return self.send_linear(payload, delivery_id)

    def rss_bytes(self) -> int:
        """The bridge process's resident memory now."""
        assert self.process is not None
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        [kib] = [line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")]
        return int(kib) * 1024

    def wait_for_comment(self, contains: str, *, timeout: float = 15.0,
                         number: int = 1) -> dict[str, Any]:
        """Issue ``number``'s bridge comment, once its body contains ``contains``."""
        def found() -> dict[str, Any] | None:
            matching = [c for c in self.comments(number) if contains in c["body"]]
            return matching[0] if matching else None

        return wait_for(found, timeout=timeout, what=f"a comment containing {contains!r}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def github_delivery(event: str, payload: dict[str, Any], delivery_id: str
                    ) -> tuple[bytes, dict[str, str]]:
    """``payload`` as the body and headers of a signed GitHub delivery of ``event``."""
    body = json.dumps(payload).encode()
    headers = github_headers("issues__labeled.json")
    headers.update({"X-GitHub-Event": event, "X-GitHub-Delivery": delivery_id,
                    "X-Hub-Signature-256": sign_github(body)})
    headers.pop("X-Hub-Signature", None)
    return body, headers


@contextmanager
def running_bridge(tmp_path: Path, *, coder_mode: str = "tasks", start: bool = True,
                   **settings: Any) -> Iterator[Bridge]:
    """Fakes on loopback plus a bridge configured against them (started unless ``start=False``)."""
    coder = FakeCoder(coder_mode)
    coder.add_template("default", "tasks-docker", presets=settings.pop("presets", ()))
    github = FakeGitHub()
    github.set_repository_id(REPOSITORY, FIXTURE_REPOSITORY_ID)
    if settings.get("github_app"):
        github.configure_app(APP_ID, APP_PUBLIC_PEM, installations={1: [REPOSITORY]})
    linear = FakeLinear()
    with ExitStack() as stack:
        coder_url = stack.enter_context(serve_in_thread(coder.app()))
        github_url = stack.enter_context(serve_in_thread(github))
        linear_url = stack.enter_context(serve_in_thread(linear))
        bridge = Bridge(tmp_path, coder, github, linear, coder_url, github_url, linear_url,
                        free_port(), settings=settings)
        try:
            if start:
                bridge.start()
            yield bridge
        finally:
            if bridge.process is not None and bridge.process.poll() is None:
                bridge.process.kill()
                bridge.process.wait(timeout=10)
