"""Ingest benchmark: the real service against a bare Starlette app, same load, same run.

Starts (as subprocesses, on free loopback ports) a bare Starlette app on uvicorn
(uvloop + httptools, access log off) and the real service (``python -m service
serve``, SQLite in a temporary directory, GitHub configured, Coder and GitHub
pointing at in-process fakes), and sends each the same load: signed triggering
``issues``/``labeled`` deliveries (~14 KB, distinct issues from a pre-generated
pool, a unique ``X-GitHub-Delivery`` per request) over ``--connections`` keep-alive
connections for ``--duration`` seconds after a warm-up. Load comes from wrk (with
``bench/wrk/ingest.lua``) when installed, else from a Python asyncio generator.

Prints requests/s, p50/p99 latency and non-2xx answers of each, the ratio
service/bare, the service's RSS when idle and after the load, and whether every
delivery answered 200 is in the database.

    .venv/bin/python bench/ingest.py [--duration 10] [--connections 32] [--role both] [--json]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    BareApp,
    Bridge,
    BridgeSettings,
    Cleanup,
    Delivery,
    LoadResult,
    cpu_seconds,
    labeled_deliveries,
    log,
    print_profile,
    python_load,
    rss_kib,
    run_async,
    run_wrk,
    running_fakes,
    start_py_spy,
    summarize_profile,
    temp_dir,
    write_pool,
    wrk_available,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0,
                        help="seconds of measured load per target (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="seconds of unmeasured load before each measurement (default 2)")
    parser.add_argument("--connections", type=int, default=32,
                        help="concurrent keep-alive connections (default 32)")
    parser.add_argument("--role", choices=("web", "all", "both"), default="both",
                        help="service role(s) to measure (default both: web, then all)")
    parser.add_argument("--pool", type=int, default=2000,
                        help="distinct pre-signed deliveries (issues) to cycle (default 2000)")
    parser.add_argument("--body-bytes", type=int, default=14 * 1024,
                        help="size of each delivery body (default 14336)")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto",
                        help="load generator (default: wrk if installed, else python)")
    parser.add_argument("--wrk-threads", type=int, default=1,
                        help="wrk threads (default 1: the machine has 2 cores)")
    parser.add_argument("--no-bare", action="store_true", help="skip the bare app")
    parser.add_argument("--profile", metavar="DIR",
                        help="also run py-spy on the service during each measured run and "
                             "write DIR/ingest-<role>.collapsed (figures are then perturbed)")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    return parser.parse_args()


class Runner:
    def __init__(self, args: argparse.Namespace, cleanup: Cleanup, workdir: Path,
                 pool: list[Delivery], pool_path: Path) -> None:
        self.args = args
        self.cleanup = cleanup
        self.workdir = workdir
        self.pool = pool
        self.pool_path = pool_path
        if args.loadgen == "wrk" and not wrk_available():
            raise SystemExit("--loadgen wrk: wrk is not installed (apt-get install wrk)")
        self.use_wrk = args.loadgen == "wrk" or (args.loadgen == "auto" and wrk_available())

    def load(self, port: int, prefix: str, duration: float) -> LoadResult:
        if self.use_wrk:
            return run_wrk(self.cleanup, self.workdir, port, self.pool_path, prefix=prefix,
                           connections=self.args.connections, duration=duration,
                           threads=self.args.wrk_threads)
        result: LoadResult = run_async(python_load(
            port, self.pool, prefix=prefix, connections=self.args.connections,
            duration=duration))
        return result

    def measure(self, port: int, pid: int, profile: Path | None = None) -> dict[str, Any]:
        time.sleep(1.0)  # let start-up settle before reading the idle RSS
        idle = rss_kib(pid)
        log(f"  warm-up {self.args.warmup:g} s ...")
        self.load(port, "warm", self.args.warmup)
        spy: subprocess.Popen[bytes] | None = None
        if profile is not None:
            spy = start_py_spy(self.cleanup, pid, profile, self.args.duration)
        log(f"  measuring {self.args.duration:g} s ...")
        cpu_before = cpu_seconds(pid)
        result = self.load(port, "run", self.args.duration)
        cpu = cpu_seconds(pid) - cpu_before
        if spy is not None:
            spy.wait(timeout=60)
        after = rss_kib(pid)
        return {"load": result, "rss_idle_kib": idle["VmRSS"], "rss_after_kib": after["VmRSS"],
                "rss_peak_kib": after["VmHWM"],
                "cpu_percent": round(100 * cpu / result.duration, 1) if result.duration else 0}


def job_counts(db_path: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        rows = conn.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall()
    finally:
        conn.close()
    return {str(status): int(count) for status, count in rows}


def row_of(name: str, measured: dict[str, Any]) -> dict[str, Any]:
    load: LoadResult = measured.pop("load")
    return {"target": name, **load.summary(), **measured}


def main() -> int:
    args = parse_args()
    roles = ["web", "all"] if args.role == "both" else [args.role]
    rows: list[dict[str, Any]] = []
    with Cleanup() as cleanup:
        try:
            workdir = temp_dir(cleanup, "bench-ingest-")
            numbers = list(range(1001, 1001 + args.pool))
            log(f"generating {args.pool} signed deliveries of {args.body_bytes} bytes ...")
            pool = labeled_deliveries(numbers, body_bytes=args.body_bytes)
            pool_path = workdir / "pool.bin"
            write_pool(pool_path, pool)
            runner = Runner(args, cleanup, workdir, pool, pool_path)
            log(f"load generator: {'wrk' if runner.use_wrk else 'python asyncio'}")
            profile_dir = Path(args.profile) if args.profile else None
            if profile_dir is not None:
                profile_dir.mkdir(parents=True, exist_ok=True)
            with running_fakes(numbers) as fakes:
                if not args.no_bare:
                    log("bare Starlette app (uvloop + httptools, access log off):")
                    bare = BareApp(temp_dir(cleanup, "bench-bare-"))
                    bare.start(cleanup)
                    assert bare.process is not None
                    rows.append(row_of("bare", runner.measure(bare.port, bare.process.pid)))
                    bare.stop()
                for role in roles:
                    log(f"service --role {role}:")
                    bridge = Bridge(temp_dir(cleanup, f"bench-svc-{role}-"),
                                    BridgeSettings(fakes.coder_url, fakes.github_url))
                    bridge.start(cleanup, role=role)
                    assert bridge.process is not None
                    comments_before = fakes.github.comment_count
                    profile = (profile_dir / f"ingest-{role}.collapsed"
                               if profile_dir is not None else None)
                    measured = runner.measure(bridge.port, bridge.process.pid, profile)
                    load: LoadResult = measured["load"]
                    stored = bridge.delivery_ids("run-")
                    missing = load.ok_ids - stored
                    jobs = job_counts(bridge.db_path)
                    row = row_of(f"service --role {role}", measured)
                    row.update({
                        "answered_200_ids": len(load.ok_ids),
                        "stored_run_deliveries": len(stored),
                        "answered_200_missing_from_db": len(missing),
                        "stored_not_answered_200": len(stored - load.ok_ids),
                        "jobs_right_after_load": jobs,
                        "github_comments_posted": fakes.github.comment_count - comments_before,
                    })
                    if profile is not None:
                        row["profile"] = summarize_profile(profile)
                    rows.append(row)
                    status = bridge.stop()
                    row["exit_status"] = status
                    errors = Counter(
                        json.loads(line).get("event") for line in
                        bridge.log_path.read_text(errors="replace").splitlines()
                        if '"level": "error"' in line or '"level":"error"' in line)
                    row["log_errors"] = dict(errors)
        except KeyboardInterrupt:
            log("interrupted: stopping everything")
            return 130
    report(args, rows)
    return 0


def report(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    bare = next((r for r in rows if r["target"] == "bare"), None)
    for row in rows:
        if bare is not None and row is not bare and bare["requests_per_s"]:
            row["ratio_to_bare"] = round(row["requests_per_s"] / bare["requests_per_s"], 3)
    if args.json:
        print(json.dumps({"connections": args.connections, "duration_s": args.duration,
                          "body_bytes": args.body_bytes, "rows": rows}, indent=2))
        return
    generator = rows[0]["generator"] if rows else "?"
    print(f"ingest: {args.connections} connections, {args.duration:g} s after "
          f"{args.warmup:g} s warm-up, {args.body_bytes}-byte signed labeled deliveries, "
          f"{args.pool} issues; load generator: {generator}")
    print(f"{'target':<22}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
          f"{'non-2xx':>9}{'sockerr':>9}{'ratio':>8}{'RSS idle':>10}{'RSS after':>11}"
          f"{'CPU':>8}")
    for r in rows:
        ratio = f"{r['ratio_to_bare']:.2f}" if "ratio_to_bare" in r else "-"
        print(f"{r['target']:<22}{r['requests_per_s']:>10.0f}{r['p50_ms']:>9.2f}"
              f"{r['p99_ms']:>9.2f}{r['max_ms']:>9.1f}{r['non2xx']:>9}{r['socket_errors']:>9}"
              f"{ratio:>8}{r['rss_idle_kib'] / 1024:>8.1f}MB{r['rss_after_kib'] / 1024:>9.1f}MB"
              f"{r['cpu_percent']:>7.0f}%")
    for r in rows:
        if "stored_run_deliveries" not in r:
            continue
        verdict = ("OK" if r["answered_200_missing_from_db"] == 0
                   else f"{r['answered_200_missing_from_db']} MISSING")
        print(f"{r['target']}: answered 200: {r['ok200']} ({r['answered_200_ids']} ids); "
              f"in the database: {r['stored_run_deliveries']}; answered 200 but not stored: "
              f"{verdict}; stored but not answered 200 (in flight at the end): "
              f"{r['stored_not_answered_200']}; jobs right after the load: "
              f"{r['jobs_right_after_load']}; comments posted to the GitHub fake by then: "
              f"{r['github_comments_posted']}; peak RSS {r['rss_peak_kib'] / 1024:.1f} MB; "
              f"exit status {r['exit_status']}; error log lines: {r['log_errors'] or 'none'}")
    for r in rows:
        if "profile" in r:
            print_profile(f"{r['target']} (py-spy, measured run)", r["profile"])


if __name__ == "__main__":
    sys.exit(main())
