"""A local demo: the bridge against the Coder and GitHub fakes, in one command or by hand.

    python -m tests.fakes.demo run       # everything: fakes, link, serve, send, the comment, stop
    python -m tests.fakes.demo serve     # by hand: the fakes on :3000 and :3001 (Ctrl-C stops)
    python -m tests.fakes.demo send      # by hand: POST a signed labelled-issue delivery

``serve`` starts from a clean demo database (``data/demo.db``, what
``tests/fakes/demo.toml`` uses; ``run`` uses a temporary one). Both create a Coder
user ``alice`` with a ``tasks-docker`` template and a token for her (a fake, valid
only against this fake). ``serve`` prints the commands to link and start the bridge, then, as they
happen, each new task and each new or edited comment on the issue. The fake Coder
also serves the task page the comment links to. Loopback only.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route

from tests.conftest import GITHUB_SECRET, REPO, fixture_bytes, github_headers, sign_github
from tests.fakes.coder import FakeCoder
from tests.fakes.github import DEFAULT_TOKEN, FakeGitHub
from tests.fakes.server import serve_in_thread

CODER_PORT = 3000
GITHUB_PORT = 3001
BRIDGE_URL = "http://127.0.0.1:8080"
ISSUE = ("Codertocat/Hello-World", 1)
CONFIG = REPO / "tests" / "fakes" / "demo.toml"
DATABASE = Path("data") / "demo.db"  # storage.url of demo.toml, relative to the repository
TRIGGER_LABEL = "delegate-to-agent"  # demo.toml's trigger label (the default)


@dataclass
class Fakes:
    coder: FakeCoder
    github: FakeGitHub
    coder_url: str
    github_url: str
    token: str  # alice's Coder token


@contextmanager
def running_fakes(coder_port: int, github_port: int) -> Iterator[Fakes]:
    """Both fakes on loopback, alice and her template in Coder, the issue on GitHub."""
    coder = FakeCoder("tasks")
    coder.add_template("default", "tasks-docker", presets=[{"Name": "small", "Default": True}])
    token = coder.add_user("alice")
    github = FakeGitHub()
    with serve_in_thread(coder_with_pages(coder), coder_port) as coder_url, \
            serve_in_thread(github, github_port) as github_url:
        yield Fakes(coder, github, coder_url, github_url, token)


def coder_with_pages(coder: FakeCoder) -> Starlette:
    """The fake Coder's API, plus the page a task link opens (``/tasks/{owner}/{id}``)."""

    async def task_page(request: Request) -> Response:
        wanted = request.path_params["task"]
        for task in coder.tasks:
            if task["id"] == wanted and task["owner_name"] == request.path_params["owner"]:
                return HTMLResponse(
                    f"<!doctype html><title>{html.escape(task['name'])}</title>"
                    f"<h1>Task {html.escape(task['name'])} of {html.escape(task['owner_name'])}"
                    f"</h1><p>Status: {html.escape(str(task['status']))}</p>"
                    f"<pre>{html.escape(str(task.get('initial_prompt', '')))}</pre>")
        return HTMLResponse("<!doctype html><h1>No such task</h1>", status_code=404)

    return Starlette(routes=[Route("/tasks/{owner}/{task}", task_page, methods=["GET"]),
                             Mount("/", app=coder.app())])


def fresh_database() -> None:
    """Remove the demo database, so that a rerun starts clean (its links and deliveries
    belong to fakes that no longer run)."""
    for suffix in ("", "-wal", "-shm"):
        (REPO / f"{DATABASE}{suffix}").unlink(missing_ok=True)


def labelled_delivery() -> tuple[bytes, dict[str, str]]:
    """GitHub's example ``issues``/``labeled`` delivery, with the label the demo
    configures, signed with the demo's webhook secret."""
    payload = json.loads(fixture_bytes("github/issues__labeled.json"))
    payload["label"]["name"] = TRIGGER_LABEL
    for label in payload["issue"]["labels"]:
        if label["id"] == payload["label"]["id"]:
            label["name"] = TRIGGER_LABEL
    body = json.dumps(payload, indent=2).encode()
    headers = github_headers("issues__labeled.json")
    headers["X-Hub-Signature-256"] = sign_github(body)
    headers.pop("X-Hub-Signature", None)  # the SHA-1 signature would not match the new body
    return body, headers


def send(bridge_url: str) -> tuple[int, dict[str, object]]:
    """POST the delivery (the same id and body each time: GitHub redelivering it)."""
    body, headers = labelled_delivery()
    response = httpx.post(f"{bridge_url}/webhooks/github", content=body, headers=headers,
                          timeout=10)
    return response.status_code, response.json()


def bridge_env(key: str) -> dict[str, str]:
    """The environment demo.toml reads its secrets from."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODER_BRIDGE")}
    env.update(CODER_BRIDGE_KEY=key, GITHUB_WEBHOOK_SECRET=GITHUB_SECRET,
               GITHUB_TOKEN=DEFAULT_TOKEN, PYTHONPATH=str(REPO))
    return env


def watch(fakes: Fakes, stop: threading.Event) -> None:
    """Print each new task and each new or edited comment on the issue, as they happen."""
    seen_tasks: set[str] = set()
    seen_comments: dict[int, str] = {}
    while not stop.wait(0.5):
        for task in fakes.coder.tasks:
            if task["id"] not in seen_tasks:
                seen_tasks.add(task["id"])
                print(f"task {task['name']} for {task['owner_name']}: "
                      f"{fakes.coder_url}/tasks/{task['owner_name']}/{task['id']}", flush=True)
        for comment in fakes.github.comments(*ISSUE):
            if seen_comments.get(comment["id"]) != comment["body"]:
                what = "edited" if comment["id"] in seen_comments else "new"
                seen_comments[comment["id"]] = comment["body"]
                print(f"comment {comment['id']} ({what}):\n{comment['body']}\n", flush=True)


def serve() -> int:
    """Run both fakes until interrupted; print what to run and, then, what happens."""
    fresh_database()
    with running_fakes(CODER_PORT, GITHUB_PORT) as fakes:
        print(f"""Fake Coder  at {fakes.coder_url} (user alice, template tasks-docker)
Fake GitHub at {fakes.github_url} (issue Codertocat/Hello-World#1)

In another terminal, from the repository:
  export CODER_BRIDGE_KEY=$(python3 -c \\
      "import os,base64;print(base64.b64encode(os.urandom(32)).decode())")
  export GITHUB_WEBHOOK_SECRET="{GITHUB_SECRET}"
  export GITHUB_TOKEN="{DEFAULT_TOKEN}"
  export ALICES_TOKEN="{fakes.token}"
  echo "$ALICES_TOKEN" | .venv/bin/coder-bridge --config tests/fakes/demo.toml \\
      users link --github-id 21031067 --coder-token-stdin
  .venv/bin/coder-bridge --config tests/fakes/demo.toml serve
Then, in a third terminal:
  .venv/bin/python -m tests.fakes.demo send
""", flush=True)
        stop = threading.Event()
        try:
            watch(fakes, stop)
        except KeyboardInterrupt:
            return 0
    return 0


def run(coder_port: int, github_port: int, bridge_port: int) -> int:
    """The whole demo in one process tree, its database in a temporary directory; exit
    status 0 when the issue got its link."""
    with running_fakes(coder_port, github_port) as fakes, \
            tempfile.TemporaryDirectory(prefix="coder-bridge-demo-") as scratch:
        config = Path(scratch) / "demo.toml"
        config.write_text(CONFIG.read_text()
                          .replace(f"127.0.0.1:{CODER_PORT}", f"127.0.0.1:{coder_port}")
                          .replace(f"127.0.0.1:{GITHUB_PORT}", f"127.0.0.1:{github_port}")
                          .replace("port = 8080", f"port = {bridge_port}")
                          .replace("127.0.0.1:8080", f"127.0.0.1:{bridge_port}")
                          .replace(f"./{DATABASE}", f"{scratch}/demo.db"))
        env = bridge_env(base64.b64encode(os.urandom(32)).decode())
        command = [sys.executable, "-m", "service", "--config", str(config)]
        print("$ coder-bridge users link --github-id 21031067 --coder-token-stdin", flush=True)
        linked = subprocess.run([*command, "users", "link", "--github-id", "21031067",
                                 "--coder-token-stdin"], input=fakes.token, text=True,
                                capture_output=True, env=env, cwd=REPO, check=False)
        print(linked.stdout.strip() or linked.stderr.strip(), flush=True)
        if linked.returncode != 0:
            return 1
        print("$ coder-bridge serve", flush=True)
        log_path = Path(scratch) / "bridge.log"
        with log_path.open("wb") as log:
            bridge = subprocess.Popen([*command, "serve"], env=env, cwd=REPO, stdout=log,
                                      stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{bridge_port}"
        try:
            if not _until(lambda: _ready(url), seconds=30):
                print("the bridge did not become ready:\n"
                      + log_path.read_text(errors="replace")[-3000:], file=sys.stderr)
                return 1
            for label in ("the labelled issue's delivery", "GitHub redelivers it"):
                status, answer = send(url)
                print(f"$ send: {label} → {status} {json.dumps(answer)}", flush=True)
            link = f"{fakes.coder_url}/tasks/alice/"
            if not _until(lambda: any(link in c["body"]
                                      for c in fakes.github.comments(*ISSUE)), seconds=30):
                print("no comment with the task link within 30 s", file=sys.stderr)
                return 1
            [comment] = fakes.github.comments(*ISSUE)
            print(f"\nThe comment on {ISSUE[0]}#{ISSUE[1]}:\n\n{comment['body']}\n", flush=True)
            [task] = fakes.coder.tasks
            page = httpx.get(f"{fakes.coder_url}/tasks/alice/{task['id']}", timeout=5)
            print(f"The link opens the task's page on the fake Coder: HTTP {page.status_code}",
                  flush=True)
            return 0
        finally:
            bridge.send_signal(signal.SIGTERM)
            try:
                bridge.wait(timeout=30)
            except subprocess.TimeoutExpired:
                bridge.kill()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _until(condition: Callable[[], bool], *, seconds: float) -> bool:
    """Poll ``condition`` every 0.1 s until it is true or time runs out."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.demo")
    sub = parser.add_subparsers(dest="command", required=True)
    whole = sub.add_parser("run", help="the whole demo in one command")
    whole.add_argument("--coder-port", type=int, default=CODER_PORT)
    whole.add_argument("--github-port", type=int, default=GITHUB_PORT)
    whole.add_argument("--bridge-port", type=int, default=8080)
    sub.add_parser("serve", help="run the Coder and GitHub fakes")
    sending = sub.add_parser("send", help="send a signed labelled-issue delivery")
    sending.add_argument("--bridge", default=BRIDGE_URL)
    args = parser.parse_args()
    if args.command == "run":
        return run(args.coder_port, args.github_port, args.bridge_port)
    if args.command == "serve":
        return serve()
    status, answer = send(args.bridge)
    print(status, json.dumps(answer))
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
