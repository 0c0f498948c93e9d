"""Visitor latency during a run: p99 of `GET /avatar` while the generator stores images as fast as it can.

A real `avatargen serve` process drives the simulated GPU, which runs as a process of its own (a real
GPU is another machine) with a tiny step_time. Visitors are wrk connections that each pause between
requests (a busy site, not a saturating load), on the fallback path (unique_burst 0). Each round
measures the idle server, then the same load during a manual refill of a big fallback bucket (aborted
after the measurement). Figures are medians over the rounds.
Target: p99 during a run within 2x of the idle p99.

    python -m benchmarks.latency_during_run [--quick] [--rounds N] [--seconds S]
"""

from __future__ import annotations

import argparse
import sys
import time

from avatargen.config import load_settings
from avatargen.storage.files.bucket import open_buckets
from avatargen.testing import Simulator
from benchmarks.harness import (
    Admin,
    avatargen_server,
    parse_args,
    publish,
    run_ended,
    run_in_state,
    sample_avatars,
    scratch,
    write_config,
)
from benchmarks.report import fmt, median, print_machine, print_table, verdict
from benchmarks.wrk import WrkResult, run_wrk

TARGET = 2.0
THREADS, CONNECTIONS, PAUSE_MS = 1, 16, 20
FALLBACK_IMAGES = 200
BIG_BUCKET = 1_000_000


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=3, help="rounds of idle + during a run (default 3)")
    parser.add_argument("--seconds", type=int, default=15, help="wrk duration of one measurement (default 15)")


def load(url: str, seconds: int) -> WrkResult:
    return run_wrk(url + "/avatar", threads=THREADS, connections=CONNECTIONS, seconds=seconds, pause_ms=PAUSE_MS)


def during_run(admin: Admin, seconds: int) -> tuple[WrkResult, float]:
    """The load while a run generates; also the images stored per second meanwhile."""
    run = admin.refill(["fallback"])
    admin.wait_event(run_in_state(run.id, "generating"))
    before, started = admin.status().run, time.monotonic()
    result = load(admin.url, seconds)
    status, elapsed = admin.status(), time.monotonic() - started
    if status.state != "generating" or status.run is None or before is None:
        raise SystemExit(f"the run stopped generating during the measurement: {status.state}, {status.last_run}")
    admin.abort()
    admin.wait_event(run_ended(run.id))
    return result, (status.run.done - before.done) / elapsed


def main() -> int:
    args = parse_args(__doc__.split("\n")[0], options)
    rounds, seconds, images = (1, 2, 20) if args.quick else (args.rounds, args.seconds, FALLBACK_IMAGES)
    print_machine()
    idle: list[WrkResult] = []
    busy: list[WrkResult] = []
    rates: list[float] = []
    with scratch() as work, Simulator(work / "simulator.log", boot_delay="300ms", stop_delay="200ms",
                                      sd_boot_delay="100ms", step_time="1ms") as simulator:
        config = write_config(work, simulator.provider_config(), {"buckets": {"fallback": {"max": BIG_BUCKET}}})
        publish(open_buckets(load_settings(config))["fallback"], sample_avatars(images))
        with avatargen_server(config, work / "avatargen.log", env=simulator.env()) as server:
            admin = Admin(server.url)
            admin.wait_generator_started()
            for turn in range(rounds):
                idle.append(load(server.url, seconds))
                result, rate = during_run(admin, seconds)
                busy.append(result)
                rates.append(rate)
                print(f"round {turn + 1}/{rounds}: idle p99 {fmt(idle[-1].p99_ms)} ms, during a run "
                      f"p99 {fmt(result.p99_ms)} ms at {fmt(rate, 1)} images/s", file=sys.stderr, flush=True)
    idle_p99, busy_p99 = median([r.p99_ms for r in idle]), median([r.p99_ms for r in busy])
    rows = [[name, fmt(median([r.requests_per_second for r in results]), 0), fmt(median([r.p50_ms for r in results])),
             fmt(median([r.p99_ms for r in results])), stored]
            for name, results, stored in (("idle", idle, "-"), ("during a run", busy, fmt(median(rates), 1)))]
    print_table("Visitor latency during a run: GET /avatar (fallback)",
                ["server", "req/s", "p50 ms", "p99 ms", "images stored/s"], rows, [
        f"wrk -t{THREADS} -c{CONNECTIONS} -d{seconds}s, each connection pausing {PAUSE_MS} ms between requests; "
        f"median of {rounds} round(s); the simulated GPU in its own process, step_time 1ms, batch 2, concurrency 2",
        f"target: p99 during a run <= {TARGET:g}x idle p99: {busy_p99 / idle_p99:.2f}x, "
        f"{verdict(busy_p99 <= TARGET * idle_p99)}",
    ])
    return 0


if __name__ == "__main__":
    sys.exit(main())
