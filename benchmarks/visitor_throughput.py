"""Visitor throughput: `GET /avatar` on the fallback path and the 304 path, against two references.

wrk (2 threads, 64 connections, on loopback) loads, in the same run and taking turns round after round:
- avatargen: a real `avatargen serve` process, its fallback bucket holding published images and no
  unique allowance (unique_burst 0), so every request takes the fallback path;
- bare Starlette: one route returning the same image bytes from memory with the same headers, under
  the same uvicorn settings (the framework's ceiling);
- nginx: the same file with the same headers (the machine's ceiling).
The 304 path sends If-Modified-Since (set by wrk's Lua script). Run-to-run noise is large on a small
machine, so each figure is the median over the rounds, and the ratios are medians of per-round ratios.
Target: avatargen at 0.9x or better of bare Starlette, on both paths.

    python -m benchmarks.visitor_throughput [--quick] [--rounds N] [--seconds S] [--images N]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections import defaultdict
from email.utils import formatdate

import httpx

from avatargen.buckets import open_buckets
from avatargen.config import load_settings
from avatargen.testing import Service, free_port
from benchmarks.harness import (
    avatargen_server,
    parse_args,
    publish,
    sample_avatars,
    scratch,
    write_config,
)
from benchmarks.nginx import nginx_reference
from benchmarks.report import fmt, median, print_machine, print_table, verdict
from benchmarks.wrk import WrkResult, run_wrk

THREADS, CONNECTIONS = 2, 64
TARGET = 0.9
SERVERS = ("avatargen", "bare Starlette", "nginx")
PATHS = ("fallback", "304")
CHECKED_HEADERS = ("content-type", "cache-control", "x-avatar-kind")


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=5, help="rounds of every server on every path (default 5)")
    parser.add_argument("--seconds", type=int, default=15, help="wrk duration of one measurement (default 15)")
    parser.add_argument("--images", type=int, default=500, help="images in the fallback bucket (default 500)")


def path_headers(path: str) -> dict[str, str]:
    """The request headers of a path: a fresh If-Modified-Since (now) for the 304 path."""
    return {"If-Modified-Since": formatdate(usegmt=True)} if path == "304" else {}


def check_same_answers(urls: dict[str, str], published: set[bytes], reference: bytes) -> None:
    """Before measuring: every server answers each path alike, with the images it should."""
    for path in PATHS:
        answers = {server: httpx.get(url + "/avatar", headers=path_headers(path)) for server, url in urls.items()}
        expected = 304 if path == "304" else 200
        for server, answer in answers.items():
            if answer.status_code != expected:
                raise SystemExit(f"{server} answered {answer.status_code} on the {path} path, expected {expected}")
        if path == "304":
            continue
        first = answers["avatargen"]
        for server, answer in answers.items():
            different = [name for name in CHECKED_HEADERS if answer.headers.get(name) != first.headers.get(name)]
            if different or "last-modified" not in answer.headers or "x-avatar-id" not in answer.headers:
                raise SystemExit(f"{server} sends other headers than avatargen: {dict(answer.headers)}")
        if first.content not in published or first.headers["x-avatar-kind"] != "fallback":
            raise SystemExit("avatargen did not answer with a published fallback image")
        if any(answers[server].content != reference for server in ("bare Starlette", "nginx")):
            raise SystemExit("a reference server did not send the reference image")


def measure(urls: dict[str, str], rounds: int, seconds: int) -> dict[tuple[str, str], list[WrkResult]]:
    """Every server on every path, once per round; the server order turns each round."""
    results: dict[tuple[str, str], list[WrkResult]] = defaultdict(list)
    for turn in range(rounds):
        order = SERVERS[turn % len(SERVERS):] + SERVERS[:turn % len(SERVERS)]
        for path in PATHS:
            for server in order:
                result = run_wrk(urls[server] + "/avatar", threads=THREADS, connections=CONNECTIONS, seconds=seconds,
                                 headers=path_headers(path))
                results[path, server].append(result)
                print(f"round {turn + 1}/{rounds} {path:8} {server:14} {fmt(result.requests_per_second, 0):>8} req/s",
                      file=sys.stderr, flush=True)
    return results


def ratio(results: dict[tuple[str, str], list[WrkResult]], path: str, server: str, reference: str) -> float:
    """The median over rounds of server/reference requests per second (both measured in the same round)."""
    pairs = zip(results[path, server], results[path, reference], strict=True)
    return median([mine.requests_per_second / theirs.requests_per_second for mine, theirs in pairs])


def report(results: dict[tuple[str, str], list[WrkResult]], rounds: int, seconds: int, images: int) -> None:
    rows = []
    for path in PATHS:
        for server in SERVERS:
            runs = results[path, server]
            rows.append([
                "fallback (200)" if path == "fallback" else "If-Modified-Since (304)", server,
                fmt(median([run.requests_per_second for run in runs]), 0),
                fmt(median([run.p50_ms for run in runs])), fmt(median([run.p99_ms for run in runs])),
                f"{ratio(results, path, server, 'bare Starlette'):.2f}x",
                f"{ratio(results, path, server, 'nginx'):.2f}x",
                sum(run.socket_errors for run in runs),
            ])
    notes = [
        f"wrk -t{THREADS} -c{CONNECTIONS} -d{seconds}s --latency on loopback; median of {rounds} round(s), "
        f"servers taking turns; {images} images in the fallback bucket; one uvicorn worker, one nginx worker",
    ]
    for path in PATHS:
        got = ratio(results, path, "avatargen", "bare Starlette")
        notes.append(f"target {path} path: avatargen >= {TARGET}x bare Starlette: {got:.2f}x, {verdict(got >= TARGET)}")
    print_table("Visitor throughput: GET /avatar",
                ["path", "server", "req/s", "p50 ms", "p99 ms", "vs bare Starlette", "vs nginx", "socket errors"],
                rows, notes)


def main() -> int:
    args = parse_args(__doc__.split("\n")[0], options)
    rounds, seconds, images = (1, 1, 50) if args.quick else (args.rounds, args.seconds, args.images)
    print_machine()
    with scratch() as work:
        config = write_config(work, {"buckets": {"fallback": {"max": images}}})
        settings = load_settings(config)
        avatars = sample_avatars(images, settings.generator.image_size, settings.generator.webp_quality)
        ids = publish(open_buckets(settings)["fallback"], avatars)
        # The references serve one image of typical (median) size.
        middle = sorted(range(images), key=lambda n: len(avatars[n]))[images // 2]
        image = work / "avatar.webp"
        shutil.copyfile(settings.buckets.fallback.dir / f"{ids[middle]}.webp", image)
        reference_command = [sys.executable, "-m", "benchmarks.reference_app", "--image", str(image),
                             "--id", ids[middle]]
        starlette_port, nginx_port = free_port(), free_port()
        starlette = Service("bare Starlette", [*reference_command, "--port", str(starlette_port)],
                            port=starlette_port, log=work / "starlette.log", health_path="/avatar")
        nginx = nginx_reference(image, ids[middle], settings.serving.cache_max_age, work / "nginx", nginx_port)
        with avatargen_server(config, work / "avatargen.log") as avatargen, starlette, nginx:
            urls = {"avatargen": avatargen.url, "bare Starlette": starlette.url, "nginx": nginx.url}
            check_same_answers(urls, set(avatars), image.read_bytes())
            if not args.quick:
                measure(urls, 1, 2)  # warm-up: caches filled, code paths hot
            results = measure(urls, rounds, seconds)
    report(results, rounds, seconds, images)
    return 0


if __name__ == "__main__":
    sys.exit(main())
