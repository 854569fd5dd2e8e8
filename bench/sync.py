"""Status-sync benchmark: what following 1,000 running tasks of 50 people costs.

Starts the Coder (Tasks API) and GitHub fakes on loopback threads and the real service
(``python -m service serve``, SQLite, ``sync.interval`` of ``--interval`` seconds),
links ``--users`` Coder accounts (50) and labels ``--per-user`` issues of each (20):
1,000 tasks, each with its status comment. Then, on the fakes:

1. every task starts working: each comment must show **Working** (one edit each);
2. nothing changes for ``--quiet`` intervals: the steady cost of following the work;
3. ``--changes`` tasks (100) end their turn: each of those comments must show **Done**.

Prints, per phase: Coder requests (list calls and single-task reads) per interval, the
bridge's CPU seconds per interval (one status round for every account), and comment
writes per state change. Targets: at most one list call per person and interval plus
one read per changed task; exactly one comment edit per change people can see.

    .venv/bin/python bench/sync.py [--users 50] [--per-user 20] [--interval 5]
                                   [--quiet 6] [--changes 100] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import http.client
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    FIXTURES,
    REPOSITORY,
    Bridge,
    BridgeSettings,
    Cleanup,
    cpu_seconds,
    log,
    running_fakes,
    temp_dir,
    wait_until,
)

from tests.conftest import sign_github
from tests.fakes.coder import FakeCoder

LIST_PATH = "/api/v2/tasks"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--per-user", type=int, default=20)
    parser.add_argument("--interval", type=float, default=5.0,
                        help="sync.interval in seconds (default 5; 15 in production)")
    parser.add_argument("--quiet", type=int, default=6, help="intervals without a change")
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--json", action="store_true")
    return parser.parse_args()


def github_id(user: int) -> int:
    return 90_000 + user


def issue_body(number: int, user: int, delivery_id: str) -> bytes:
    """The fixture's ``labeled`` delivery for issue ``number``, written and labelled by
    person ``user``."""
    payload = json.loads((FIXTURES / "github" / "issues__labeled.json").read_bytes())
    payload = copy.deepcopy(payload)
    issue = payload["issue"]
    issue.update(number=number, id=444_500_041 + number, title=f"Issue {number}",
                 html_url=f"https://github.com/{REPOSITORY}/issues/{number}")
    person = {**payload["sender"], "id": github_id(user), "login": f"person{user}"}
    issue["user"] = person
    payload["sender"] = person
    payload["bench_nonce"] = delivery_id
    return json.dumps(payload).encode()


async def link_people(bridge: Bridge, coder: FakeCoder, coder_url: str, users: int) -> None:
    """Link each person's GitHub id to a Coder user of their own, as ``users link`` does
    (token checked with Coder, encrypted under the bridge's key), straight in the store."""
    import httpx

    from service.app import load_vault
    from service.coder.client import CoderClient
    from service.config import load_config
    from service.store import open_store
    from service.store.base import Identity

    bridge.write_config()
    config = load_config(bridge.config_path, bridge.env())
    vault = load_vault(config)
    store = await open_store(config.storage.url)
    try:
        await store.migrate()
        async with httpx.AsyncClient() as http:
            for user in range(users):
                token = coder.add_user(f"person{user}")
                me = await CoderClient(coder_url, token, http=http, timeout=10).fetch_me()
                key_id, ciphertext = vault.encrypt(token, owner=me.id)
                await store.link_account(
                    coder_user_id=me.id, coder_username=me.username, key_id=key_id,
                    ciphertext=ciphertext,
                    identities=[Identity("github", str(github_id(user)), f"person{user}")])
    finally:
        await store.close()


def coder_requests(coder: FakeCoder, since: int) -> tuple[int, int, int]:
    """(list calls, single-task reads, everything) among the fake's requests after index
    ``since``."""
    seen = coder.requests[since:]
    lists = sum(1 for method, path in seen if method == "GET" and path == LIST_PATH)
    reads = sum(1 for method, path in seen
                if method == "GET" and path.startswith(LIST_PATH + "/"))
    return lists, reads, len(seen)


def bodies_showing(github: Any, numbers: list[int], state: str) -> int:
    return sum(1 for n in numbers
               if any(c["body"].startswith(f"**{state}**")
                      for c in github.comments(REPOSITORY, n)))


def measure(phase: str, bridge: Bridge, coder: FakeCoder, github: Any, interval: float,
            run: Any) -> dict[str, Any]:
    """Run ``run()`` (which returns once the phase is over) and report its costs."""
    assert bridge.process is not None
    pid = bridge.process.pid
    requests_before = len(coder.requests)
    writes_before = github.comment_count
    cpu_before = cpu_seconds(pid)
    started = time.monotonic()
    extra = run()
    elapsed = time.monotonic() - started
    lists, reads, total = coder_requests(coder, requests_before)
    intervals = elapsed / interval
    result = {
        "phase": phase, "seconds": round(elapsed, 1), "intervals": round(intervals, 1),
        "list_calls": lists, "reads": reads, "coder_requests": total,
        "list_calls_per_interval": round(lists / intervals, 1),
        "reads_per_interval": round(reads / intervals, 1),
        "cpu_s_per_interval": round((cpu_seconds(pid) - cpu_before) / intervals, 3),
        "comment_writes": github.comment_count - writes_before,
        **(extra or {}),
    }
    log(f"  {phase}: {json.dumps(result)}")
    return result


def main() -> int:
    args = parse_args()
    people = args.users
    numbers = list(range(1, people * args.per_user + 1))
    owner = {n: (n - 1) // args.per_user for n in numbers}
    results: dict[str, Any] = {"users": people, "tasks": len(numbers),
                               "interval_s": args.interval, "phases": []}
    with Cleanup() as cleanup, running_fakes(numbers) as fakes:
        coder, github = fakes.coder, fakes.github
        bridge = Bridge(temp_dir(cleanup, "bench-sync-"),
                        BridgeSettings(fakes.coder_url, fakes.github_url, concurrency=8,
                                       poll_interval=0.2, sync_interval=args.interval))
        log(f"linking {people} people ...")
        asyncio.run(link_people(bridge, coder, fakes.coder_url, people))
        bridge.start(cleanup)
        log(f"labelling {len(numbers)} issues ...")
        conn = http.client.HTTPConnection("127.0.0.1", bridge.port, timeout=30)
        for n in numbers:
            delivery_id = f"sync-{n}"
            body = issue_body(n, owner[n], delivery_id)
            conn.request("POST", "/webhooks/github", body=body, headers={
                "Content-Type": "application/json", "X-GitHub-Event": "issues",
                "X-GitHub-Delivery": delivery_id, "X-Hub-Signature-256": sign_github(body)})
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"delivery {n} answered {response.status}")
        conn.close()
        if not github.wait_linked(len(numbers), timeout=args.timeout):
            raise RuntimeError("not every issue got its task link")
        tasks = {int(t["display_name"].split("#")[1].split(":")[0]): t for t in coder.tasks}

        def all_working() -> dict[str, Any]:
            for task in tasks.values():
                coder.set_task_state(task["id"], status="active", state="working",
                                     message="Working on it")
            wait_until(lambda: bodies_showing(github, numbers, "Working") == len(numbers),
                       timeout=args.timeout, what="every comment to show Working")
            return {"changed": len(numbers)}

        def quiet() -> None:
            time.sleep(args.quiet * args.interval)

        changed = numbers[:: max(1, len(numbers) // args.changes)][: args.changes]

        def some_done() -> dict[str, Any]:
            for n in changed:
                coder.set_task_state(tasks[n]["id"], status="active", state="idle",
                                     message=f"Finished issue {n}")
            wait_until(lambda: bodies_showing(github, changed, "Done") == len(changed),
                       timeout=args.timeout, what="the changed comments to show Done")
            return {"changed": len(changed)}

        log("phase 1: every task starts working ...")
        results["phases"].append(measure("all_working", bridge, coder, github, args.interval,
                                         all_working))
        time.sleep(2 * args.interval)  # the rounds after the change settle
        log(f"phase 2: {args.quiet} intervals without a change ...")
        results["phases"].append(measure("quiet", bridge, coder, github, args.interval, quiet))
        log(f"phase 3: {len(changed)} tasks end their turn ...")
        results["phases"].append(measure("some_done", bridge, coder, github, args.interval,
                                         some_done))
        bridge.stop()
    report(args, results)
    return 0


def report(args: argparse.Namespace, results: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{results['tasks']} running tasks of {results['users']} people, "
          f"sync.interval {results['interval_s']} s")
    print(f"{'phase':<12} {'seconds':>8} {'intervals':>9} {'changed':>8} {'list calls':>10} "
          f"{'reads':>6} {'reads/change':>12} {'writes/change':>13} {'CPU s/interval':>14}")
    for p in results["phases"]:
        changed = p.get("changed", 0)
        reads = f"{p['reads'] / changed:.2f}" if changed else "-"
        writes = f"{p['comment_writes'] / changed:.2f}" if changed else "-"
        print(f"{p['phase']:<12} {p['seconds']:>8} {p['intervals']:>9} {changed:>8} "
              f"{p['list_calls']:>10} {p['reads']:>6} {reads:>12} {writes:>13} "
              f"{p['cpu_s_per_interval']:>14}")


if __name__ == "__main__":
    sys.exit(main())
