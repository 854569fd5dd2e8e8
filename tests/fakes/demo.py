"""A local demo: the Coder and GitHub fakes on fixed ports, and a signed delivery to send.

    python -m tests.fakes.demo serve     # Coder fake on :3000, GitHub fake on :3001 (Ctrl-C stops)
    python -m tests.fakes.demo send      # POST a signed labelled-issue delivery to the bridge

``serve`` creates a Coder user ``alice`` with a ``tasks-docker`` template and
prints her token (a fake, valid only against this fake), the environment the
bridge needs, and how to link. Every minute it prints the tasks and the
issue's comments, so you can watch the bridge work. Loopback only.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import uuid

import httpx

from tests.conftest import GITHUB_SECRET, fixture_bytes, github_headers
from tests.fakes.coder import FakeCoder
from tests.fakes.github import DEFAULT_TOKEN, FakeGitHub
from tests.fakes.server import serve_in_thread

CODER_PORT = 3000
GITHUB_PORT = 3001
REPOSITORY = ("Codertocat/Hello-World", 1)


def serve() -> int:
    """Run both fakes until interrupted; print what a newcomer needs."""
    coder = FakeCoder("tasks")
    coder.add_template("default", "tasks-docker", presets=[{"Name": "small", "Default": True}])
    token = coder.add_user("alice")
    github = FakeGitHub()
    with serve_in_thread(coder.app(), CODER_PORT) as coder_url, \
            serve_in_thread(github, GITHUB_PORT) as github_url:
        print(f"""Fake Coder  at {coder_url} (user alice, template tasks-docker)
Fake GitHub at {github_url} (issue Codertocat/Hello-World#1)

In another terminal, from the repository:
  export CODER_BRIDGE_KEY=$(python3 -c \\
      "import os,base64;print(base64.b64encode(os.urandom(32)).decode())")
  export GITHUB_WEBHOOK_SECRET="{GITHUB_SECRET}"
  export GITHUB_TOKEN="{DEFAULT_TOKEN}"
  echo "{token}" | .venv/bin/coder-bridge --config tests/fakes/demo.toml \\
      users link --github-id 21031067 --coder-token-stdin
  .venv/bin/coder-bridge --config tests/fakes/demo.toml serve
Then, in a third terminal:
  .venv/bin/python -m tests.fakes.demo send
""", flush=True)
        stop = threading.Event()
        try:
            while not stop.wait(5):
                for task in coder.tasks:
                    print(f"task {task['name']} for {task['owner_name']}: "
                          f"{coder_url}/tasks/{task['owner_name']}/{task['id']}", flush=True)
                for comment in github.comments(*REPOSITORY):
                    print(f"comment {comment['id']}:\n{comment['body']}\n", flush=True)
        except KeyboardInterrupt:
            return 0
    return 0


def send(bridge_url: str, fresh: bool) -> int:
    """POST the signed labelled-issue fixture (label ``bug``) to the bridge."""
    headers = github_headers("issues__labeled.json")
    if fresh:
        headers["X-GitHub-Delivery"] = str(uuid.uuid4())
    response = httpx.post(f"{bridge_url}/webhooks/github",
                          content=fixture_bytes("github/issues__labeled.json"), headers=headers)
    print(response.status_code, json.dumps(response.json()))
    return 0 if response.status_code == 200 else 1


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.demo")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the Coder and GitHub fakes")
    sending = sub.add_parser("send", help="send a signed labelled-issue delivery")
    sending.add_argument("--bridge", default="http://127.0.0.1:8080")
    sending.add_argument("--fresh", action="store_true",
                         help="use a new delivery id (otherwise it is a redelivery)")
    args = parser.parse_args()
    if args.command == "serve":
        return serve()
    return send(args.bridge, args.fresh)


if __name__ == "__main__":
    sys.exit(main())
