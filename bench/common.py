"""Shared helpers of the benchmarks: signed deliveries, fakes, processes, load generators.

Everything talks over loopback (127.0.0.1) only. Processes started here are put in
their own session (so a Ctrl-C in the terminal reaches only the benchmark, which
then stops them in order) and registered with a ``Cleanup`` that terminates them and
removes the temporary directories, also on Ctrl-C or SIGTERM.

Run as a script (``python bench/common.py bare-app --port N``) it serves the bare
Starlette app the ingest benchmark compares the service with.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
import http.client
import json
import math
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.conftest import FIXTURES, GITHUB_SECRET, sign_github  # noqa: E402
from tests.fakes.coder import FakeCoder  # noqa: E402
from tests.fakes.github import CONTENT_LIMITS, DEFAULT_TOKEN, FakeGitHub  # noqa: E402
from tests.fakes.server import free_port, serve_in_thread  # noqa: E402

BENCH = Path(__file__).resolve().parent
ENCRYPTION_KEY = base64.b64encode(b"bench-key-32-bytes-long-........"[:32]).decode()
REPOSITORY = "Codertocat/Hello-World"
AUTHOR_GITHUB_ID = "21031067"  # Codertocat, the author of the fixture issue
TRIGGER_LABEL = "bug"  # the label the fixture's ``labeled`` delivery adds
TEMPLATE = "tasks-docker"
DEFAULT_BODY_BYTES = 14 * 1024
WEBHOOK_PATH = "/webhooks/github"


def log(message: str) -> None:
    """Progress goes to stderr, so stdout carries only the results."""
    print(message, file=sys.stderr, flush=True)


# -- cleanup -------------------------------------------------------------------------------
class Cleanup:
    """Stops registered processes (newest first) and removes registered directories."""

    def __init__(self) -> None:
        self._actions: list[Callable[[], None]] = []

    def process(self, proc: subprocess.Popen[bytes], *, grace: float = 15.0) -> None:
        def stop() -> None:
            stop_process(proc, grace=grace)

        self._actions.append(stop)

    def directory(self, path: Path) -> None:
        self._actions.append(lambda: shutil.rmtree(path, ignore_errors=True))

    def callback(self, action: Callable[[], None]) -> None:
        self._actions.append(action)

    def run(self) -> None:
        while self._actions:
            action = self._actions.pop()
            with contextlib.suppress(Exception):
                action()

    def __enter__(self) -> Cleanup:
        def on_term(signum: int, frame: FrameType | None) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, on_term)
        return self

    def __exit__(self, *exc: object) -> None:
        # A second Ctrl-C during clean-up must not leave processes behind.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self.run()
        finally:
            signal.signal(signal.SIGINT, previous)


def stop_process(proc: subprocess.Popen[bytes], *, grace: float = 15.0) -> int | None:
    """SIGTERM, wait ``grace`` seconds, then SIGKILL; returns the exit status."""
    if proc.poll() is not None:
        return proc.returncode
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        return proc.wait(timeout=10)


def checkout(cleanup: Cleanup, ref: str) -> Path:
    """A detached git worktree of ``ref`` (another version of the bridge, to measure
    beside this one), removed again by ``cleanup``."""
    path = temp_dir(cleanup, "bench-baseline-") / "tree"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--quiet", "--detach",
                    str(path), ref], check=True)
    cleanup.callback(lambda: subprocess.run(
        ["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)], check=False))
    return path


def temp_dir(cleanup: Cleanup, prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    cleanup.directory(path)
    return path


def process_tree(pid: int) -> list[int]:
    """``pid`` and its living descendants (the service's ingest writer process)."""
    tree = [pid]
    for member in tree:
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{member}/task").iterdir():
                with contextlib.suppress(OSError):
                    tree.extend(int(child) for child in (task / "children").read_text().split())
    return tree


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process and its descendants, summed, in KiB.

    The sum counts pages the processes share (the interpreter's code) once per
    process, so it overstates their memory a little; ``processes`` says how many.
    """
    values = {"VmRSS": 0, "VmHWM": 0, "processes": 0}
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] += int(rest.split()[0])
            values["processes"] += 1
    return values


def steal_and_total_ticks() -> tuple[int, int]:
    """The machine's CPU time stolen by the hypervisor, and all CPU time, in ticks."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def cpu_seconds(pid: int, *, tree: bool = True) -> float:
    """User + system CPU time a process (and, with ``tree``, its living descendants)
    has used so far, in seconds."""
    total = 0
    for member in process_tree(pid) if tree else [pid]:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def wait_until(condition: Callable[[], bool], *, timeout: float, what: str,
               interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def http_status(port: int, path: str, timeout: float = 1.0) -> int | None:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            conn.request("GET", path)
            return conn.getresponse().status
        finally:
            conn.close()
    except OSError:
        return None


# -- signed deliveries ---------------------------------------------------------------------
NONCE_PLACEHOLDER = "@@DELIVERY-ID@@"


@dataclass(frozen=True)
class Delivery:
    """An ``issues``/``labeled`` body for issue ``number``, as a template: each request
    writes its delivery id into the body (field ``bench_nonce``, which the bridge
    ignores) and signs the result, so that no two requests carry the same bytes (the
    bridge takes the same signed bytes under a new id for a replay)."""

    number: int
    head: bytes
    tail: bytes

    def body(self, delivery_id: str) -> bytes:
        return self.head + delivery_id.encode() + self.tail

    def signed(self, delivery_id: str) -> tuple[bytes, str]:
        """(body, ``X-Hub-Signature-256``) of the request with this delivery id."""
        body = self.body(delivery_id)
        return body, sign_github(body)


def labeled_deliveries(numbers: Sequence[int], *,
                       body_bytes: int = DEFAULT_BODY_BYTES) -> list[Delivery]:
    """``labeled`` deliveries of distinct issues, each padded to about ``body_bytes``.

    Starts from the shared fixture (13.8 KB as GitHub pretty-prints it); the issue's
    number, id, URLs and title change per issue and ``issue.body`` is padded with
    text so every delivery is ``body_bytes`` long (when the fixture is shorter).
    """
    base = json.loads((FIXTURES / "github" / "issues__labeled.json").read_bytes())
    out: list[Delivery] = []
    for number in numbers:
        payload = copy.deepcopy(base)
        issue = payload["issue"]
        issue["number"] = number
        issue["id"] = 444_500_041 + number
        for key in ("url", "labels_url", "comments_url", "events_url", "html_url"):
            issue[key] = issue[key].replace("/issues/1", f"/issues/{number}")
        issue["title"] = f"{issue['title']} ({number})"
        payload["bench_nonce"] = NONCE_PLACEHOLDER
        body = json.dumps(payload, indent=2).encode()
        missing = body_bytes - len(body)
        if missing > 0:
            filler = (" The quick brown fox jumps over the lazy dog." * (missing // 40 + 2))
            issue["body"] = issue["body"] + filler[:missing]
            body = json.dumps(payload, indent=2).encode()
        head, tail = body.split(NONCE_PLACEHOLDER.encode())
        out.append(Delivery(number, head, tail))
    return out


def github_headers(delivery_id: str, signature: str) -> dict[str, str]:
    """The headers GitHub sends with a delivery (``X-GitHub-Delivery`` is not signed)."""
    return {
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/044aadd",
        "X-GitHub-Event": "issues",
        "X-GitHub-Delivery": delivery_id,
        "X-GitHub-Hook-ID": "292430182",
        "X-Hub-Signature-256": signature,
    }


def write_pool(path: Path, deliveries: Sequence[Delivery]) -> None:
    """The request pool for ``bench/wrk/ingest.lua``:
    ``<head length> <tail length>\n<head><tail>\n``."""
    with path.open("wb") as handle:
        for d in deliveries:
            handle.write(f"{len(d.head)} {len(d.tail)}\n".encode())
            handle.write(d.head + d.tail + b"\n")


# -- fakes ---------------------------------------------------------------------------------
class RecordingGitHub(FakeGitHub):
    """The GitHub fake, plus a hook: the moment each issue first carries the task link.

    ``_insert`` (comment creation) and ``_update`` (edits) are where a comment body
    changes; both run on the fake's server thread, so waiters get a
    ``threading.Condition`` instead of polling.
    """

    def __init__(self, link_prefix: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.link_prefix = link_prefix
        self.linked_at: dict[int, float] = {}  # issue number → perf_counter()
        self.comment_count = 0
        self.write_times: list[float] = []  # perf_counter() of each creation or edit
        self.changed = threading.Condition()

    def _seen(self, number: int, body: str) -> None:
        now = time.perf_counter()
        with self.changed:
            self.comment_count += 1
            self.write_times.append(now)
            if self.link_prefix in body and number not in self.linked_at:
                self.linked_at[number] = now
            self.changed.notify_all()

    def _insert(self, repo: Any, number: int, body: str, login: str, base: str) -> Any:
        comment = super()._insert(repo, number, body, login, base)
        self._seen(number, body)
        return comment

    async def _update(self, request: Any, login: str) -> Any:
        response = await super()._update(request, login)
        if response.status_code == 200:
            data = json.loads(bytes(response.body))
            number = int(str(data["issue_url"]).rsplit("/", 1)[1])
            self._seen(number, str(data["body"]))
        return response

    def wait_linked(self, count: int, timeout: float) -> bool:
        """Block until ``count`` issues carry the task link (False on timeout)."""
        with self.changed:
            return self.changed.wait_for(lambda: len(self.linked_at) >= count, timeout)

    def wait_issue(self, number: int, timeout: float) -> float | None:
        """Block until issue ``number`` carries the task link; its perf_counter() time."""
        with self.changed:
            self.changed.wait_for(lambda: number in self.linked_at, timeout)
            return self.linked_at.get(number)


@dataclass
class Fakes:
    coder: FakeCoder
    github: RecordingGitHub
    coder_url: str
    github_url: str


@contextlib.contextmanager
def running_fakes(issue_numbers: Sequence[int], *, content_limits: bool = False
                  ) -> Iterator[Fakes]:
    """Coder (Tasks API) and GitHub fakes on loopback threads; every issue exists. With
    ``content_limits`` GitHub refuses writes beyond 80 a minute or 500 an hour (403)."""
    coder = FakeCoder("tasks")
    coder.add_template("default", TEMPLATE)
    port = free_port()
    coder_url = f"http://127.0.0.1:{port}"
    github = RecordingGitHub(f"{coder_url}/tasks/", rate_limit=10**9)
    if content_limits:
        github.content_limits = CONTENT_LIMITS
    for number in issue_numbers:
        github.add_issue(REPOSITORY, number)
    with serve_in_thread(coder.app(), port) as url, serve_in_thread(github) as github_url:
        assert url == coder_url
        yield Fakes(coder, github, coder_url, github_url)


def postgres_schema(cleanup: Cleanup, server_url: str) -> str:
    """A fresh schema on ``server_url`` (dropped on cleanup); a URL that selects it."""
    import asyncpg  # only the PostgreSQL runs need it

    schema = f"bench_{os.getpid()}_{int(time.time())}"

    def run(sql: str) -> None:
        async def go() -> None:
            conn = await asyncpg.connect(server_url)
            try:
                await conn.execute(sql)
            finally:
                await conn.close()
        asyncio.run(go())

    run(f"CREATE SCHEMA {schema}")
    cleanup.callback(lambda: run(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    separator = "&" if "?" in server_url else "?"
    return f"{server_url}{separator}search_path={schema}"


# -- the service ---------------------------------------------------------------------------
@dataclass
class BridgeSettings:
    coder_url: str
    github_url: str
    concurrency: int = 4
    poll_interval: float = 1.0
    lease_seconds: int = 120
    sync_interval: float = 15.0
    #: GitHub's content limits as the bridge paces itself (0 and 0: no pacing at all)
    comments_per_minute: int = 0
    comments_per_hour: int = 0
    #: ``storage.url``; empty: SQLite in the bridge's temporary directory
    storage_url: str = ""


@dataclass
class Bridge:
    """``python -m service serve`` in a temporary directory, as an operator runs it."""

    workdir: Path
    settings: BridgeSettings
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    code_root: Path = REPO  # the checkout whose ``service`` package runs

    @property
    def config_path(self) -> Path:
        return self.workdir / "config.toml"

    @property
    def db_path(self) -> Path:
        return self.workdir / "bridge.db"

    @property
    def log_path(self) -> Path:
        return self.workdir / "bridge.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CODER_BRIDGE")}
        env.update({
            "CODER_BRIDGE_KEY": ENCRYPTION_KEY,
            "GITHUB_WEBHOOK_SECRET": GITHUB_SECRET,
            "GITHUB_TOKEN": DEFAULT_TOKEN,
            "PYTHONPATH": str(self.code_root),
        })
        return env

    def write_config(self) -> None:
        s = self.settings
        storage_url = s.storage_url or f"sqlite:///{self.db_path}"
        self.config_path.write_text(f"""
[server]
host = "127.0.0.1"
port = {self.port}
public_url = "https://bridge.example.test"

[storage]
url = "{storage_url}"

[security]
encryption_keys = ["env:CODER_BRIDGE_KEY"]

[coder]
url = "{s.coder_url}"
template = "{TEMPLATE}"
api = "tasks"
timeout = 10

[github]
webhook_secret = "env:GITHUB_WEBHOOK_SECRET"
api_url = "{s.github_url}"
token = "env:GITHUB_TOKEN"
trigger_label = "{TRIGGER_LABEL}"
# GitHub's content limits as the bridge paces itself (0 = off)
comments_per_minute = {s.comments_per_minute}
comments_per_hour = {s.comments_per_hour}

[worker]
concurrency = {s.concurrency}
lease_seconds = {s.lease_seconds}
poll_interval = {s.poll_interval}

[sync]
interval = {s.sync_interval}
""")

    def cli(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        self.write_config()
        return subprocess.run(
            [sys.executable, "-m", "service", *args, "--config", str(self.config_path)],
            cwd=self.workdir, env=self.env(), input=stdin, capture_output=True, text=True,
            timeout=60, check=False)

    def link_author(self, coder: FakeCoder) -> None:
        """Link the fixture's author to a new Coder user (token through stdin)."""
        token = coder.add_user("codertocat")
        result = self.cli("users", "link", "--github-id", AUTHOR_GITHUB_ID,
                          "--github-login", "Codertocat", "--coder-token-stdin", stdin=token)
        if result.returncode != 0:
            raise RuntimeError(f"users link failed: {result.stderr}")

    def start(self, cleanup: Cleanup, role: str = "all") -> None:
        self.write_config()
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service", "serve", "--config", str(self.config_path),
                 "--role", role],
                cwd=self.workdir, env=self.env(), stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        cleanup.process(self.process, grace=30)
        self._wait_ready()

    def _wait_ready(self) -> None:
        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"the bridge exited with {self.process.returncode}:\n"
                                   + self.log_path.read_text(errors="replace")[-4000:])
            return http_status(self.port, "/readyz") == 200

        wait_until(ready, timeout=30, what="the bridge to become ready")

    def stop(self) -> int | None:
        return stop_process(self.process, grace=30) if self.process is not None else None

    def delivery_ids(self, prefix: str) -> set[str]:
        """Delivery ids stored in the database (read-only, alongside the running bridge)."""
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30)
        try:
            rows = conn.execute(
                "SELECT delivery_id FROM deliveries WHERE tracker = 'github' "
                "AND delivery_id LIKE ? || '%'", (prefix,)).fetchall()
        finally:
            conn.close()
        return {str(row[0]) for row in rows}


# -- the bare app --------------------------------------------------------------------------
class BareApp:
    """``python bench/common.py bare-app``: Starlette on uvicorn (uvloop + httptools)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, cleanup: Cleanup) -> None:
        with (self.workdir / "bare.log").open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, str(BENCH / "common.py"), "bare-app", "--port", str(self.port)],
                cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        cleanup.process(self.process)

        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError("the bare app exited")
            return http_status(self.port, "/healthz") == 200

        wait_until(ready, timeout=20, what="the bare app to become ready")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


def _serve_bare_app(port: int) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    async def webhook(request: Request) -> Response:
        body = await request.body()
        return JSONResponse({"status": "accepted", "bytes": len(body)})

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route(WEBHOOK_PATH, webhook, methods=["POST"]),
                            Route("/healthz", healthz, methods=["GET"])])
    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                access_log=False, log_level="warning", proxy_headers=True, server_header=False)


# -- load generators -----------------------------------------------------------------------
def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class LoadResult:
    """What one load run measured. Latencies are in milliseconds."""

    generator: str
    duration: float
    requests: int
    ok200: int
    non2xx: int
    socket_errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    ok_ids: set[str] = field(default_factory=set, repr=False)
    #: The share of the machine's CPU time its hypervisor gave to others meanwhile.
    steal_percent: float = 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.duration if self.duration else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "generator": self.generator, "duration_s": round(self.duration, 3),
            "requests": self.requests, "requests_per_s": round(self.rps, 1),
            "ok200": self.ok200, "non2xx": self.non2xx, "socket_errors": self.socket_errors,
            "p50_ms": round(self.p50_ms, 2), "p99_ms": round(self.p99_ms, 2),
            "max_ms": round(self.max_ms, 2),
        }


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(cleanup: Cleanup, workdir: Path, port: int, pool_path: Path, *, prefix: str,
            connections: int, duration: float, threads: int = 1) -> LoadResult:
    """Run ``bench/wrk/ingest.lua`` against ``port`` for ``duration`` seconds."""
    ids_path = workdir / f"ok-ids-{prefix}.txt"
    env = dict(os.environ, BENCH_REQUESTS=str(pool_path), BENCH_PREFIX=prefix,
               BENCH_IDS_OUT=str(ids_path), BENCH_SECRET=GITHUB_SECRET)
    seconds = max(1, round(duration))
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
               "-s", str(BENCH / "wrk" / "ingest.lua"), f"http://127.0.0.1:{port}{WEBHOOK_PATH}"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    cleanup.process(proc, grace=2)
    try:
        out, err = proc.communicate(timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise RuntimeError("wrk did not finish") from None
    marker = b"BENCHJSON "
    lines = [line for line in out.splitlines() if line.startswith(marker)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{out.decode()}\n{err.decode()}")
    data = json.loads(lines[-1][len(marker):])
    ok_ids = set(ids_path.read_text().split()) if ids_path.exists() else set()
    errors = data["errors"]
    return LoadResult(
        generator=f"wrk ({threads} thread{'s' if threads > 1 else ''})",
        duration=data["duration_us"] / 1e6, requests=data["requests"], ok200=data["ok200"],
        non2xx=data["non2xx"],
        socket_errors=errors["connect"] + errors["read"] + errors["write"] + errors["timeout"],
        p50_ms=data["p50_us"] / 1000, p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000, ok_ids=ok_ids)


class _Conn:
    """One keep-alive HTTP/1.1 connection (asyncio streams), enough for our two servers."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, head: bytes, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        self.writer.write(head + body)
        status_line_and_headers = await self.reader.readuntil(b"\r\n\r\n")
        lines = status_line_and_headers.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = 0
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            lowered = name.strip().lower()
            if lowered == b"content-length":
                length = int(value)
            elif lowered == b"connection" and value.strip().lower() == b"close":
                close = True
        payload = await self.reader.readexactly(length) if length else b""
        if close:
            self.close()
        return status, payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def request_head(port: int, body: bytes, delivery_id: str, signature: str) -> bytes:
    headers = github_headers(delivery_id, signature)
    lines = [f"POST {WEBHOOK_PATH} HTTP/1.1", f"Host: 127.0.0.1:{port}",
             f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def python_load(port: int, pool: Sequence[Delivery], *, prefix: str, connections: int,
                      duration: float | None = None, total: int | None = None,
                      on_first_send: Callable[[], None] | None = None) -> LoadResult:
    """``connections`` keep-alive connections sending pool deliveries in a loop.

    Stops after ``duration`` seconds, or after ``total`` requests (each pool entry
    at most once per cycle); every request carries delivery id ``{prefix}-{n}``.
    """
    latencies: list[float] = []
    ok_ids: set[str] = set()
    counts = {"ok200": 0, "non2xx": 0, "errors": 0}
    counter = iter(range(10**12))
    first = True
    start = time.perf_counter()
    deadline = start + duration if duration is not None else math.inf

    async def client() -> None:
        nonlocal first
        conn = _Conn(port)
        try:
            while time.perf_counter() < deadline:
                n = next(counter)
                if total is not None and n >= total:
                    return
                delivery = pool[n % len(pool)]
                delivery_id = f"{prefix}-{n}"
                if first:
                    first = False
                    if on_first_send is not None:
                        on_first_send()
                body, signature = delivery.signed(delivery_id)
                sent = time.perf_counter()
                try:
                    status, _ = await conn.request(
                        request_head(port, body, delivery_id, signature), body)
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    counts["errors"] += 1
                    conn.close()
                    continue
                latencies.append((time.perf_counter() - sent) * 1000)
                if status == 200:
                    counts["ok200"] += 1
                    ok_ids.add(delivery_id)
                if not 200 <= status < 300:
                    counts["non2xx"] += 1
        finally:
            conn.close()

    await asyncio.gather(*(client() for _ in range(connections)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    return LoadResult(
        generator="python asyncio", duration=elapsed, requests=len(latencies),
        ok200=counts["ok200"], non2xx=counts["non2xx"], socket_errors=counts["errors"],
        p50_ms=percentile(latencies, 50), p99_ms=percentile(latencies, 99),
        max_ms=latencies[-1] if latencies else math.nan, ok_ids=ok_ids)


def run_async(coro: Any) -> Any:
    """Run a coroutine on uvloop when available (a faster load generator)."""
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)


def post_delivery(conn: http.client.HTTPConnection, delivery: Delivery,
                  delivery_id: str) -> int:
    """POST one delivery on a keep-alive ``http.client`` connection; the status."""
    body, signature = delivery.signed(delivery_id)
    conn.request("POST", WEBHOOK_PATH, body=body, headers=github_headers(delivery_id, signature))
    response = conn.getresponse()
    response.read()
    return response.status


# -- profiling -----------------------------------------------------------------------------
def start_py_spy(cleanup: Cleanup, pid: int, path: Path,
                 duration: float) -> subprocess.Popen[bytes]:
    """``py-spy record`` of ``pid`` for ``duration`` s into ``path`` (collapsed stacks)."""
    spy = Path(sys.executable).parent / "py-spy"
    if not spy.exists():
        raise SystemExit(f"--profile needs py-spy: {Path(sys.executable).parent}/pip install "
                         "py-spy")
    command = [str(spy), "record", "--pid", str(pid), "--duration", str(max(1, round(duration))),
               "--rate", "200", "--threads", "--format", "raw", "--output", str(path)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    cleanup.process(proc, grace=5)
    return proc


def summarize_profile(path: Path, *, top: int = 30) -> dict[str, Any]:
    """Where the samples of a ``py-spy --format raw --threads`` file went.

    Per thread: its share of the samples. For the main (event loop) thread: the
    inclusive share of each function (line numbers dropped; frames present in
    every sample left out) and the self share of each leaf function; C code
    (uvloop, httptools, socket calls, hashing) counts toward the Python frame
    that called it.
    """
    threads: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    main = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        thread = frames[0].split(": ", 1)[-1]
        threads[thread] += n
        if thread != "MainThread":
            continue
        main += n
        names = [re.sub(r":\d+\)$", ")", f) for f in frames[1:]]
        for name in set(names):
            inclusive[name] += n
        own[names[-1]] += n
    total = sum(threads.values()) or 1
    main = main or 1
    return {
        "samples": total,
        "threads_percent": {t: round(100 * n / total, 1) for t, n in threads.most_common()},
        "main_inclusive_percent": [
            (name, round(100 * n / main, 1)) for name, n in inclusive.most_common()
            if n < 0.99 * main][:top],
        "main_self_percent": [(name, round(100 * n / main, 1))
                              for name, n in own.most_common(top // 2)],
    }


def print_profile(title: str, summary: dict[str, Any]) -> None:
    print(f"profile {title}: {summary['samples']} samples; threads: "
          + ", ".join(f"{t} {p}%" for t, p in summary["threads_percent"].items()))
    print("  main thread, inclusive:")
    for name, share in summary["main_inclusive_percent"]:
        print(f"    {share:5.1f}%  {name}")
    print("  main thread, self:")
    for name, share in summary["main_self_percent"]:
        print(f"    {share:5.1f}%  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    bare = sub.add_parser("bare-app", help="serve the bare Starlette app")
    bare.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    if args.command == "bare-app":
        _serve_bare_app(args.port)


if __name__ == "__main__":
    main()
