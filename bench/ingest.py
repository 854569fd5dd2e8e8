"""Ingest benchmark: the real service against a bare Starlette app, same load, same run.

Starts (as subprocesses, on free loopback ports) a bare Starlette app on uvicorn
(uvloop + httptools, access log off) and the real service (``python -m service
serve``, SQLite in a temporary directory, GitHub configured, Coder and GitHub
pointing at in-process fakes), and sends each the same load: signed triggering
``issues``/``labeled`` deliveries (~14 KB, distinct issues from a pre-generated
pool, a unique ``X-GitHub-Delivery`` per request) over ``--connections`` keep-alive
connections for ``--duration`` seconds after a warm-up. Load comes from wrk (with
``bench/wrk/ingest.lua``) when installed, else from a Python asyncio generator.

The bare app and ``--role web`` are measured in alternating rounds (``--rounds``,
both processes started once): on a shared VM the machine's speed drifts by tens of
percent within a minute, and alternating keeps the drift from landing on one side
of the ratio. With ``--baseline REF`` another version of the bridge (a git ref,
checked out in a temporary worktree) joins the alternation as a third target, so
that a change is measured before and after in one run. ``--role all`` is measured
once afterwards (its worker keeps draining jobs after a round, which would disturb
the next round's bare measurement).

Prints, per round, requests/s, p50/p99 latency and non-2xx answers of each and the
ratio service/bare; then the totals over all rounds (requests over time; the
latencies of the middle round), the median ratio, the service's RSS when idle and
after the load, and whether every delivery answered 200 is in the database.

    .venv/bin/python bench/ingest.py [--duration 10] [--rounds 5] [--connections 32]
                                     [--role both] [--baseline REF] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sqlite3
import statistics
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
    checkout,
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
    steal_and_total_ticks,
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
    parser.add_argument("--rounds", type=int, default=5,
                        help="alternating bare/--role web measurements (default 5)")
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
    parser.add_argument("--baseline", metavar="REF",
                        help="also measure this git ref's --role web, in the same rounds")
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

    def prepare(self, port: int, pid: int) -> int:
        """Let start-up settle, read the idle RSS (KiB), then warm up."""
        time.sleep(1.0)
        idle = rss_kib(pid)["VmRSS"]
        log(f"  warm-up {self.args.warmup:g} s ...")
        self.load(port, "warm", self.args.warmup)
        return idle

    def measure(self, port: int, pid: int, prefix: str,
                profile: Path | None = None) -> tuple[LoadResult, float]:
        """One measured run; its result and the target's CPU use in percent of one core."""
        spy: subprocess.Popen[bytes] | None = None
        if profile is not None:
            spy = start_py_spy(self.cleanup, pid, profile, self.args.duration)
        log(f"  measuring {self.args.duration:g} s ...")
        cpu_before = cpu_seconds(pid)
        steal_before, total_before = steal_and_total_ticks()
        result = self.load(port, prefix, self.args.duration)
        cpu = cpu_seconds(pid) - cpu_before
        steal_after, total_after = steal_and_total_ticks()
        if total_after > total_before:
            result = dataclasses.replace(result, steal_percent=round(
                100 * (steal_after - steal_before) / (total_after - total_before), 1))
        if spy is not None:
            spy.wait(timeout=60)
        return result, round(100 * cpu / result.duration, 1) if result.duration else 0.0


class Target:
    """One measured process: its rounds and memory."""

    def __init__(self, name: str, pid: int, port: int, idle_kib: int) -> None:
        self.name, self.pid, self.port, self.idle_kib = name, pid, port, idle_kib
        self.rounds: list[tuple[LoadResult, float]] = []
        self.comments_before: int | None = None

    def row(self) -> dict[str, Any]:
        """Totals over the rounds; latencies and CPU of the median round (by req/s)."""
        results = [result for result, _ in self.rounds]
        by_rps = sorted(self.rounds, key=lambda item: item[0].rps)
        median, cpu = by_rps[len(by_rps) // 2]
        total = LoadResult(
            generator=median.generator, duration=sum(r.duration for r in results),
            requests=sum(r.requests for r in results), ok200=sum(r.ok200 for r in results),
            non2xx=sum(r.non2xx for r in results),
            socket_errors=sum(r.socket_errors for r in results),
            p50_ms=median.p50_ms, p99_ms=median.p99_ms, max_ms=max(r.max_ms for r in results),
            ok_ids=set().union(*(r.ok_ids for r in results)))
        after = rss_kib(self.pid)
        return {"target": self.name, **total.summary(), "rounds": len(results),
                "round_rps": [round(r.rps) for r in results],
                "round_steal_percent": [r.steal_percent for r in results],
                "rss_idle_kib": self.idle_kib,
                "rss_after_kib": after["VmRSS"], "rss_peak_kib": after["VmHWM"],
                "cpu_percent": cpu, "_ok_ids": total.ok_ids}


def start_bridge(cleanup: Cleanup, fakes: Any, role: str, code_root: Path | None = None
                 ) -> Bridge:
    bridge = Bridge(temp_dir(cleanup, f"bench-svc-{role}-"),
                    BridgeSettings(fakes.coder_url, fakes.github_url))
    if code_root is not None:
        bridge.code_root = code_root
    bridge.start(cleanup, role=role)
    return bridge


def check_stored(row: dict[str, Any], bridge: Bridge) -> None:
    """Every delivery answered 200 must be in the database; then stop the bridge."""
    ok_ids: set[str] = row["_ok_ids"]
    stored = bridge.delivery_ids("run")
    row.update({
        "answered_200_ids": len(ok_ids),
        "stored_run_deliveries": len(stored),
        "answered_200_missing_from_db": len(ok_ids - stored),
        "stored_not_answered_200": len(stored - ok_ids),
        "jobs_right_after_load": job_counts(bridge.db_path),
    })
    row["exit_status"] = bridge.stop()
    errors = Counter(
        json.loads(line).get("event") for line in
        bridge.log_path.read_text(errors="replace").splitlines()
        if '"level": "error"' in line or '"level":"error"' in line)
    row["log_errors"] = dict(errors)


def print_round(number: int, targets: list[Target]) -> None:
    """One line per round on stderr: each target's req/s, and the ratio."""
    figures = {t.name: t.rounds[-1][0].rps for t in targets}
    text = ", ".join(f"{t.name} {t.rounds[-1][0].rps:.0f} req/s "
                     f"(steal {t.rounds[-1][0].steal_percent:g} %)" for t in targets)
    if figures.get("bare"):
        text += "".join(f"; {name} ratio {rps / figures['bare']:.2f}"
                        for name, rps in figures.items() if name != "bare")
    log(f"  round {number}: {text}")


def slug(name: str) -> str:
    """A target's name as part of a file name."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


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
                alternating: list[Target] = []
                bridges: dict[str, Bridge] = {}
                if not args.no_bare:
                    log("bare Starlette app (uvloop + httptools, access log off):")
                    bare = BareApp(temp_dir(cleanup, "bench-bare-"))
                    bare.start(cleanup)
                    assert bare.process is not None
                    alternating.append(Target("bare", bare.process.pid, bare.port,
                                              runner.prepare(bare.port, bare.process.pid)))
                if args.baseline:
                    name = f"baseline {args.baseline} --role web"
                    log(f"{name}:")
                    bridge = start_bridge(cleanup, fakes, "web",
                                          code_root=checkout(cleanup, args.baseline))
                    assert bridge.process is not None
                    bridges[name] = bridge
                    alternating.append(Target(name, bridge.process.pid, bridge.port,
                                              runner.prepare(bridge.port, bridge.process.pid)))
                if "web" in roles:
                    log("service --role web:")
                    bridge = start_bridge(cleanup, fakes, "web")
                    assert bridge.process is not None
                    bridges["service --role web"] = bridge
                    alternating.append(Target("service --role web", bridge.process.pid,
                                              bridge.port,
                                              runner.prepare(bridge.port, bridge.process.pid)))
                for number in range(1, args.rounds + 1):
                    for target in alternating:
                        log(f"round {number}/{args.rounds}, {target.name}:")
                        profile = (profile_dir / f"ingest-{slug(target.name)}.collapsed"
                                   if profile_dir is not None and number == 1
                                   and target.name != "bare" else None)
                        target.rounds.append(runner.measure(
                            target.port, target.pid, f"run{number}", profile))
                    print_round(number, alternating)
                targets = list(alternating)
                if "all" in roles:
                    log("service --role all:")
                    bridge = start_bridge(cleanup, fakes, "all")
                    assert bridge.process is not None
                    bridges["service --role all"] = bridge
                    target = Target("service --role all", bridge.process.pid, bridge.port,
                                    runner.prepare(bridge.port, bridge.process.pid))
                    target.comments_before = fakes.github.comment_count
                    target.rounds.append(runner.measure(
                        bridge.port, bridge.process.pid, "run1",
                        profile_dir / "ingest-all.collapsed" if profile_dir else None))
                    targets.append(target)
                for target in targets:
                    row = target.row()
                    if target.comments_before is not None:
                        row["github_comments_posted"] = (fakes.github.comment_count
                                                         - target.comments_before)
                    bridge_of = bridges.get(target.name)
                    if bridge_of is not None:
                        check_stored(row, bridge_of)
                    if profile_dir is not None and target.name != "bare":
                        row["profile"] = summarize_profile(
                            profile_dir / f"ingest-{slug(target.name)}.collapsed")
                    rows.append(row)
        except KeyboardInterrupt:
            log("interrupted: stopping everything")
            return 130
    report(args, rows)
    return 0


def report(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    bare = next((r for r in rows if r["target"] == "bare"), None)
    for row in rows:
        row.pop("_ok_ids", None)
        if bare is not None and row is not bare and bare["requests_per_s"]:
            row["ratio_to_bare"] = round(row["requests_per_s"] / bare["requests_per_s"], 3)
            if len(row["round_rps"]) == len(bare["round_rps"]) > 1:
                ratios = [s / b for s, b in zip(row["round_rps"], bare["round_rps"], strict=True)
                          if b]
                row["round_ratios"] = [round(r, 3) for r in ratios]  # in round order
                row["median_round_ratio"] = round(statistics.median(ratios), 3)
    if args.json:
        print(json.dumps({"connections": args.connections, "duration_s": args.duration,
                          "body_bytes": args.body_bytes, "rows": rows}, indent=2))
        return
    generator = rows[0]["generator"] if rows else "?"
    print(f"ingest: {args.connections} connections, {args.rounds} alternating round(s) of "
          f"{args.duration:g} s after {args.warmup:g} s warm-up, {args.body_bytes}-byte signed "
          f"labeled deliveries, {args.pool} issues; load generator: {generator}")
    width = max(22, *(len(r["target"]) + 2 for r in rows))
    print(f"{'target':<{width}}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
          f"{'non-2xx':>9}{'sockerr':>9}{'ratio':>8}{'RSS idle':>10}{'RSS after':>11}"
          f"{'CPU':>8}")
    for r in rows:
        ratio = f"{r['ratio_to_bare']:.2f}" if "ratio_to_bare" in r else "-"
        print(f"{r['target']:<{width}}{r['requests_per_s']:>10.0f}{r['p50_ms']:>9.2f}"
              f"{r['p99_ms']:>9.2f}{r['max_ms']:>9.1f}{r['non2xx']:>9}{r['socket_errors']:>9}"
              f"{ratio:>8}{r['rss_idle_kib'] / 1024:>8.1f}MB{r['rss_after_kib'] / 1024:>9.1f}MB"
              f"{r['cpu_percent']:>7.0f}%")
    for r in rows:
        if len(r["round_rps"]) > 1:
            ratios = (f"; ratio per round {', '.join(f'{x:.2f}' for x in r['round_ratios'])}, "
                      f"median {r['median_round_ratio']:.2f}" if "round_ratios" in r else "")
            steal = ", ".join(f"{x:g}" for x in r["round_steal_percent"])
            print(f"{r['target']}: req/s per round {', '.join(map(str, r['round_rps']))}{ratios}; "
                  f"CPU stolen by the hypervisor per round {steal} %")
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
              f"{r.get('github_comments_posted', 0)}; peak RSS {r['rss_peak_kib'] / 1024:.1f} MB; "
              f"exit status {r['exit_status']}; error log lines: {r['log_errors'] or 'none'}")
    for r in rows:
        if "profile" in r:
            print_profile(f"{r['target']} (py-spy, measured run)", r["profile"])


if __name__ == "__main__":
    sys.exit(main())
