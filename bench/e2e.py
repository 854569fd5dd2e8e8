"""End-to-end benchmark: label → comment latency, and the drain time of a burst.

The real service (``python -m service serve --role all``, SQLite in a temporary
directory) runs against the Coder (Tasks API) and GitHub fakes on loopback threads
of this process (no added latency), with the fixture's author linked to a Coder
user of the fake (``coder-bridge users link ... --coder-token-stdin``). The GitHub
fake is subclassed (``common.RecordingGitHub``) to timestamp the moment each issue
first carries a comment with the task link, so nothing polls.

(a) latency: ``--issues`` distinct labelled issues sent one at a time (after
    ``--warmup`` unmeasured ones); each is timed from just before its delivery is
    sent to the moment the fake has the comment with the task link. Run at
    ``worker.poll_interval`` = ``--poll-interval`` (default 1 s, the default) and,
    for comparison, at ``--compare-poll`` (default 0.05 s; 0 skips it).
(b) burst: ``--burst`` distinct labelled issues sent as fast as possible over
    ``--connections`` connections; measured from the first send to the last issue's
    comment, for each ``worker.concurrency`` in ``--concurrency`` (default 4,16).

The content limiter (``github.comments_per_minute``/``comments_per_hour``) is
disabled (0) in (a) and (b).

(c) ``--limited``: instead of (a) and (b), the burst with GitHub's content limits on
    both sides: the bridge paces itself at its defaults (80 writes a minute, 500 an
    hour) and the GitHub fake refuses any write beyond them with a secondary-limit 403.
    Reports the time to the last task, to the last comment, the most writes GitHub saw
    in any minute and any hour, and its 403/429 answers. A 1,000-issue burst takes
    over an hour (the second 500 comments wait for the first hour to pass), on each of
    ``--stores``: ``sqlite`` (one ``--role all``) and ``postgres`` (one ``--role web``
    and two ``--role worker`` on a fresh schema of ``--postgres-url``).

    .venv/bin/python bench/e2e.py [--issues 50] [--burst 1000] [--concurrency 4,16] [--json]
    .venv/bin/python bench/e2e.py --limited [--stores sqlite,postgres] [--burst 1000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    Bridge,
    BridgeSettings,
    Cleanup,
    LoadResult,
    cpu_seconds,
    labeled_deliveries,
    log,
    percentile,
    post_delivery,
    postgres_schema,
    print_profile,
    python_load,
    run_async,
    running_fakes,
    start_py_spy,
    summarize_profile,
    temp_dir,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--issues", type=int, default=50,
                        help="issues sent one at a time for the latency test (default 50)")
    parser.add_argument("--warmup", type=int, default=3,
                        help="unmeasured issues before the latency test (default 3)")
    parser.add_argument("--gap", type=float, default=0.05,
                        help="pause between latency-test issues, so the worker is idle when "
                             "the next arrives (default 0.05 s)")
    parser.add_argument("--poll-interval", type=float, default=1.0,
                        help="worker.poll_interval of the latency test (default 1.0)")
    parser.add_argument("--compare-poll", type=float, default=0.05,
                        help="repeat the latency test at this poll_interval (0: skip)")
    parser.add_argument("--burst", type=int, default=1000,
                        help="issues in the burst (default 1000; 0 skips the burst test)")
    parser.add_argument("--connections", type=int, default=32,
                        help="concurrent connections sending the burst (default 32)")
    parser.add_argument("--concurrency", default="4,16",
                        help="worker.concurrency values of the burst test (default 4,16)")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="give up waiting for the burst's comments after this many seconds")
    parser.add_argument("--limited", action="store_true",
                        help="run only the burst with GitHub's content limits on (over an "
                             "hour for 1,000 issues)")
    parser.add_argument("--stores", default="sqlite,postgres",
                        help="stores of the --limited burst (default sqlite,postgres)")
    parser.add_argument("--postgres-url", default=os.environ.get(
                            "CODER_BRIDGE_TEST_POSTGRES_URL",
                            "postgresql://postgres@127.0.0.1:5432/test"),
                        help="the PostgreSQL server of --stores postgres (a schema is made "
                             "and dropped)")
    parser.add_argument("--limited-timeout", type=float, default=4800.0,
                        help="give up waiting for the --limited burst's comments after this "
                             "many seconds (default 4800)")
    parser.add_argument("--profile", metavar="DIR",
                        help="run py-spy on the service for the first --profile-seconds of "
                             "each burst; writes DIR/e2e-burst-c<N>.collapsed")
    parser.add_argument("--profile-seconds", type=float, default=10.0)
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    return parser.parse_args()


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def latency_test(cleanup: Cleanup, args: argparse.Namespace, poll_interval: float
                 ) -> dict[str, Any]:
    numbers = list(range(1, 1 + args.warmup + args.issues))
    deliveries = labeled_deliveries(numbers)
    with running_fakes(numbers) as fakes:
        bridge = Bridge(temp_dir(cleanup, "bench-e2e-lat-"),
                        BridgeSettings(fakes.coder_url, fakes.github_url,
                                       poll_interval=poll_interval))
        bridge.link_author(fakes.coder)
        bridge.start(cleanup, role="all")
        conn = http.client.HTTPConnection("127.0.0.1", bridge.port, timeout=10)
        latencies: list[float] = []
        answers: list[float] = []
        warm: list[float] = []
        failures: list[str] = []
        try:
            for i, delivery in enumerate(deliveries):
                time.sleep(args.gap)
                sent = time.perf_counter()
                status = post_delivery(conn, delivery, f"lat-{delivery.number}")
                answered = time.perf_counter()
                if status != 200:
                    failures.append(f"issue {delivery.number}: HTTP {status}")
                    continue
                linked = fakes.github.wait_issue(delivery.number, timeout=15)
                if linked is None:
                    failures.append(f"issue {delivery.number}: no comment within 15 s")
                    continue
                if i < args.warmup:
                    warm.append(linked - sent)
                else:
                    latencies.append(linked - sent)
                    answers.append(answered - sent)
        finally:
            conn.close()
            bridge.stop()
    latencies.sort()
    answers.sort()
    return {
        "poll_interval": poll_interval, "issues": args.issues, "measured": len(latencies),
        "warmup_ms": [ms(w) for w in warm],
        "p50_ms": ms(percentile(latencies, 50)), "p95_ms": ms(percentile(latencies, 95)),
        "max_ms": ms(latencies[-1]) if latencies else None,
        "mean_ms": ms(statistics.fmean(latencies)) if latencies else None,
        "http_answer_p50_ms": ms(percentile(answers, 50)),
        "failures": failures,
    }


def burst_test(cleanup: Cleanup, args: argparse.Namespace, concurrency: int) -> dict[str, Any]:
    warm_number = 1
    numbers = list(range(100_001, 100_001 + args.burst))
    log(f"  signing {args.burst} deliveries ...")
    warm_delivery, *deliveries = labeled_deliveries([warm_number, *numbers])
    with running_fakes([warm_number, *numbers]) as fakes:
        bridge = Bridge(temp_dir(cleanup, f"bench-e2e-burst{concurrency}-"),
                        BridgeSettings(fakes.coder_url, fakes.github_url,
                                       concurrency=concurrency))
        bridge.link_author(fakes.coder)
        bridge.start(cleanup, role="all")
        try:
            # one issue first: the connection pool, template lookup and caches are warm
            conn = http.client.HTTPConnection("127.0.0.1", bridge.port, timeout=10)
            post_delivery(conn, warm_delivery, "burst-warm")
            conn.close()
            if fakes.github.wait_issue(warm_number, timeout=15) is None:
                raise RuntimeError("the warm-up issue got no comment")
            first_send: list[float] = []
            assert bridge.process is not None
            pid = bridge.process.pid
            cpu_before = cpu_seconds(pid), cpu_seconds(os.getpid(), tree=False)
            spy = None
            profile = None
            if args.profile:
                profile = Path(args.profile) / f"e2e-burst-c{concurrency}.collapsed"
                profile.parent.mkdir(parents=True, exist_ok=True)
                spy = start_py_spy(cleanup, pid, profile, args.profile_seconds)
            log(f"  sending {args.burst} deliveries over {args.connections} connections ...")
            result: LoadResult = run_async(python_load(
                bridge.port, deliveries, prefix="burst", connections=args.connections,
                total=len(deliveries),
                on_first_send=lambda: first_send.append(time.perf_counter())))
            sent_all = time.perf_counter()
            log("  waiting for the comments ...")
            done = fakes.github.wait_linked(1 + len(deliveries), timeout=args.timeout)
            cpu_service = cpu_seconds(pid) - cpu_before[0]
            cpu_bench = cpu_seconds(os.getpid(), tree=False) - cpu_before[1]
            with fakes.github.changed:
                linked = [fakes.github.linked_at[n] for n in numbers
                          if n in fakes.github.linked_at]
                comments_total = fakes.github.comment_count
            start = first_send[0]
            if spy is not None:
                spy.wait(timeout=args.profile_seconds + 60)
        finally:
            bridge.stop()
    drain = (max(linked) - start) if linked else float("nan")
    extra = {"profile": summarize_profile(profile)} if profile is not None else {}
    return {
        "concurrency": concurrency, "issues": len(deliveries), "answered_200": result.ok200,
        "non2xx": result.non2xx, "socket_errors": result.socket_errors,
        "send_s": round(sent_all - start, 3), "send_p99_ms": round(result.p99_ms, 2),
        "commented": len(linked), "completed": done,
        "drain_s": round(drain, 3),
        "issues_per_s": round(len(linked) / drain, 1) if linked else 0.0,
        # creations and edits seen by the fake, the warm-up issue's one included
        "comment_writes": comments_total,
        # CPU seconds used from the first send to the last comment
        "cpu_service_s": round(cpu_service, 2), "cpu_bench_and_fakes_s": round(cpu_bench, 2),
        **extra,
    }


def most_in_any(times: list[float], span: float) -> int:
    """The most of ``times`` (ascending) that fall within any ``span`` seconds."""
    most, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= span:
            start += 1
        most = max(most, end - start + 1)
    return most


def limited_test(cleanup: Cleanup, args: argparse.Namespace, store: str) -> dict[str, Any]:
    """The burst with GitHub's content limits on: the bridge's pacing against a GitHub
    fake that refuses what passes them."""
    numbers = list(range(200_001, 200_001 + args.burst))
    log(f"  signing {args.burst} deliveries ...")
    deliveries = labeled_deliveries(numbers)
    with running_fakes(numbers, content_limits=True) as fakes:
        storage_url = postgres_schema(cleanup, args.postgres_url) if store == "postgres" else ""
        settings = BridgeSettings(fakes.coder_url, fakes.github_url, comments_per_minute=80,
                                  comments_per_hour=500, storage_url=storage_url)
        roles = ["all"] if store == "sqlite" else ["web", "worker", "worker"]
        bridges = [Bridge(temp_dir(cleanup, f"bench-e2e-limited-{store}-{i}-"), settings)
                   for i in range(len(roles))]
        bridges[0].link_author(fakes.coder)
        try:
            for bridge, role in zip(bridges, roles, strict=True):
                bridge.start(cleanup, role=role)
            first_send: list[float] = []
            log(f"  sending {args.burst} deliveries over {args.connections} connections ...")
            result: LoadResult = run_async(python_load(
                bridges[0].port, deliveries, prefix="limited", connections=args.connections,
                total=len(deliveries),
                on_first_send=lambda: first_send.append(time.perf_counter())))
            start = first_send[0]
            sent_all = time.perf_counter() - start
            log("  waiting for the tasks ...")
            deadline = start + args.limited_timeout
            while len(fakes.coder.tasks) < len(numbers) and time.perf_counter() < deadline:
                time.sleep(0.05)
            last_task = time.perf_counter() - start
            tasks = len(fakes.coder.tasks)
            log(f"  {tasks} tasks after {last_task:.1f} s; waiting for the comments ...")
            done = False
            while not done and time.perf_counter() < deadline:
                done = fakes.github.wait_linked(len(numbers), timeout=60)
                log(f"  {len(fakes.github.linked_at)} issues commented after "
                    f"{time.perf_counter() - start:.0f} s")
            with fakes.github.changed:
                linked = sorted(fakes.github.linked_at.values())
                writes = sorted(fakes.github.write_times)
            refused = fakes.github.status_count(403, 429)
        finally:
            for bridge in reversed(bridges):
                bridge.stop()
    return {
        "store": store, "processes": roles, "issues": len(numbers),
        "answered_200": result.ok200, "non2xx": result.non2xx, "send_s": round(sent_all, 2),
        "tasks": tasks, "last_task_s": round(last_task, 1),
        "commented": len(linked), "completed": done,
        "last_comment_s": round(linked[-1] - start, 1) if linked else None,
        "commented_first_minute": sum(1 for t in linked if t - start <= 60),
        "comment_writes": len(writes),
        "most_writes_in_a_minute": most_in_any(writes, 60.0),
        "most_writes_in_an_hour": most_in_any(writes, 3600.0),
        "github_403_429": refused,
    }


def main() -> int:
    args = parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",") if c.strip()]
    results: dict[str, Any] = {"latency": [], "burst": [], "limited": []}
    with Cleanup() as cleanup:
        try:
            if args.limited:
                for store in [s.strip() for s in args.stores.split(",") if s.strip()]:
                    log(f"limited burst: {args.burst} issues on {store}, GitHub's content "
                        "limits on ...")
                    results["limited"].append(limited_test(cleanup, args, store))
                report(args, results)
                return 0
            polls = [args.poll_interval]
            if args.compare_poll > 0 and args.compare_poll != args.poll_interval:
                polls.append(args.compare_poll)
            for poll in polls:
                log(f"latency: {args.issues} issues one at a time, poll_interval {poll:g} s ...")
                results["latency"].append(latency_test(cleanup, args, poll))
            if args.burst > 0:
                for concurrency in concurrencies:
                    log(f"burst: {args.burst} issues, worker.concurrency {concurrency} ...")
                    results["burst"].append(burst_test(cleanup, args, concurrency))
        except KeyboardInterrupt:
            log("interrupted: stopping everything")
            return 130
    report(args, results)
    return 0


def report(args: argparse.Namespace, results: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for r in results["limited"]:
        status = "" if r["completed"] else f" (INCOMPLETE after {args.limited_timeout:g} s)"
        print(f"burst of {r['issues']} issues with GitHub's content limits on, {r['store']} "
              f"({' + '.join(r['processes'])}): sent in {r['send_s']:.1f} s "
              f"({r['answered_200']} answered 200, {r['non2xx']} non-2xx); last task after "
              f"{r['last_task_s']:.1f} s ({r['tasks']} tasks); last comment after "
              f"{r['last_comment_s']} s ({r['commented']} issues commented, "
              f"{r['commented_first_minute']} in the first minute){status}; GitHub saw "
              f"{r['comment_writes']} comment writes, at most {r['most_writes_in_a_minute']} "
              f"in a minute and {r['most_writes_in_an_hour']} in an hour, and answered "
              f"{r['github_403_429']} times 403/429")
    if results["limited"]:
        return
    print("content limiter disabled (github.comments_per_minute = comments_per_hour = 0); "
          "fakes on loopback with zero added latency, in the benchmark's process")
    for r in results["latency"]:
        print(f"label→comment, poll_interval {r['poll_interval']:g} s, {r['measured']}/"
              f"{r['issues']} issues one at a time: p50 {r['p50_ms']:.1f} ms, "
              f"p95 {r['p95_ms']:.1f} ms, max {r['max_ms']:.1f} ms, mean {r['mean_ms']:.1f} ms "
              f"(HTTP answer p50 {r['http_answer_p50_ms']:.1f} ms; warm-up issues "
              f"{', '.join(f'{w:.0f}' for w in r['warmup_ms'])} ms)")
        for failure in r["failures"]:
            print(f"  FAILED: {failure}")
    if len(results["latency"]) > 1:
        a, b = results["latency"][0], results["latency"][1]
        print(f"p50 at poll_interval {a['poll_interval']:g} s vs {b['poll_interval']:g} s: "
              f"{a['p50_ms']:.1f} vs {b['p50_ms']:.1f} ms")
    for r in results["burst"]:
        status = "" if r["completed"] else f" (INCOMPLETE after {args.timeout:g} s)"
        print(f"burst of {r['issues']} issues, worker.concurrency {r['concurrency']}: "
              f"sent in {r['send_s']:.2f} s ({r['answered_200']} answered 200, "
              f"{r['non2xx']} non-2xx, {r['socket_errors']} socket errors, send p99 "
              f"{r['send_p99_ms']:.1f} ms); {r['commented']} commented, drained "
              f"{r['drain_s']:.2f} s after the first send → {r['issues_per_s']:.1f} issues/s"
              f"{status}; comment writes seen by the fake: {r['comment_writes']}; CPU used "
              f"meanwhile: service {r['cpu_service_s']:.1f} s, this process (sender + "
              f"fakes) {r['cpu_bench_and_fakes_s']:.1f} s")
        if "profile" in r:
            print_profile(f"burst, worker.concurrency {r['concurrency']} (py-spy, first "
                          f"{args.profile_seconds:g} s)", r["profile"])


if __name__ == "__main__":
    sys.exit(main())
