"""Visitor throughput: `GET /avatar` on the fallback path and the 304 path, against two references.

wrk (2 threads, 64 connections, on loopback) loads, in the same run and taking turns round after round:
- avatargen: a real `avatargen serve` process, its fallback bucket holding published images and no
  unique allowance (unique_burst 0), so every request takes the fallback path; once with one uvicorn
  worker, once with two (`server.workers = 2`, the same buckets);
- bare Starlette: one route returning the same image bytes from memory with the same headers, under
  the same uvicorn settings (the framework's ceiling);
- nginx: the same file with the same headers (the machine's ceiling).
The fallback path asks for the stored WebP (`Accept: image/webp`), the 304 path sends If-Modified-Since
(set by wrk's Lua script), and two variant paths ask for `?s=64` with `Accept: image/avif,image/webp` and
with `Accept: image/jpeg` (nginx, which serves one file, sits those out; bare Starlette answers them with
the same variant's bytes). All of wrk's requests come from one visitor, so after the first one avatargen
serves that visitor's face (`serving.same_face_for`) from memory, variant made once. Run-to-run noise is
large on a small machine, so each figure is the median over the rounds, and the ratios are medians of per-round ratios.
Beside req/s, the CPU time each Python server used per request (its processes, from /proc): it hardly
moves with what else the machine runs, so it tells a slower server from a busier machine.
Target: avatargen at 0.9x or better of bare Starlette, on both paths.

    python -m benchmarks.visitor_throughput [--quick] [--rounds N] [--seconds S] [--images N]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from email.utils import formatdate

import httpx

from avatargen.config import load_settings
from avatargen.storage.files.bucket import open_buckets
from avatargen.testing import Service, free_port
from avatargen.variants import AVIF, JPEG, variant
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
TWO_WORKERS = "avatargen, 2 workers"
REFERENCES = ("bare Starlette", "nginx")
SERVERS = ("avatargen", TWO_WORKERS, "bare Starlette", "nginx")
PYTHON_SERVERS = ("avatargen", TWO_WORKERS, "bare Starlette")  # whose CPU time /proc gives
PATHS = ("fallback", "304", "s=64 avif", "s=64 jpeg")
# Each path's URL and headers (the 304 path's If-Modified-Since is added fresh per run).
REQUESTS = {"fallback": ("/avatar", {"Accept": "image/webp"}), "304": ("/avatar", {}),
            "s=64 avif": ("/avatar?s=64", {"Accept": "image/avif,image/webp"}),
            "s=64 jpeg": ("/avatar?s=64", {"Accept": "image/jpeg"})}
NGINX_PATHS = ("fallback", "304")
CHECKED_HEADERS = ("content-type", "cache-control", "x-avatar-kind", "vary")
PATH_NAMES = {"fallback": "fallback (200)", "304": "If-Modified-Since (304)",
              "s=64 avif": "?s=64, Accept AVIF (200)", "s=64 jpeg": "?s=64, Accept JPEG (200)"}


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=5, help="rounds of every server on every path (default 5)")
    parser.add_argument("--seconds", type=int, default=15, help="wrk duration of one measurement (default 15)")
    parser.add_argument("--images", type=int, default=500, help="images in the fallback bucket (default 500)")


def path_headers(path: str) -> dict[str, str]:
    """The request headers of a path: a fresh If-Modified-Since (now) for the 304 path."""
    fresh = {"If-Modified-Since": formatdate(usegmt=True)} if path == "304" else {}
    return {**REQUESTS[path][1], **fresh}


def servers_on(path: str) -> tuple[str, ...]:
    """The servers measured on a path (nginx serves one file: the stored image only)."""
    return SERVERS if path in NGINX_PATHS else PYTHON_SERVERS


def check_same_answers(urls: dict[str, str], published: set[bytes], references: dict[str, bytes]) -> None:
    """Before measuring: every server answers each path alike, with the images it should (`published`: every
    variant of every published image; `references`: what the references send per path)."""
    for path in PATHS:
        answers = {server: httpx.get(url + REQUESTS[path][0], headers=path_headers(path))
                   for server, url in urls.items() if server in servers_on(path)}
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
        if any(answer.content != references[path] for server, answer in answers.items() if server in REFERENCES):
            raise SystemExit("a reference server did not send the reference image")


@dataclass
class Measured:
    """wrk's figures per (path, server), one per round; CPU microseconds per request for the Python servers."""

    wrk: dict[tuple[str, str], list[WrkResult]] = field(default_factory=lambda: defaultdict(list))
    cpu_us: dict[tuple[str, str], list[float]] = field(default_factory=lambda: defaultdict(list))


def measure(services: dict[str, Service], rounds: int, seconds: int) -> Measured:
    """Every server on every path, once per round; the server order turns each round."""
    measured = Measured()
    for turn in range(rounds):
        order = SERVERS[turn % len(SERVERS):] + SERVERS[:turn % len(SERVERS)]
        for path in PATHS:
            for server in (server for server in order if server in servers_on(path)):
                service = services[server]
                cpu_before = service.cpu_seconds() if server in PYTHON_SERVERS else 0.0
                result = run_wrk(service.url + REQUESTS[path][0], threads=THREADS, connections=CONNECTIONS,
                                 seconds=seconds, headers=path_headers(path))
                measured.wrk[path, server].append(result)
                if server in PYTHON_SERVERS:
                    used = service.cpu_seconds() - cpu_before
                    measured.cpu_us[path, server].append(used / max(1, result.requests) * 1e6)
                print(f"round {turn + 1}/{rounds} {path:8} {server:14} {fmt(result.requests_per_second, 0):>8} req/s",
                      file=sys.stderr, flush=True)
    return measured


def ratio(results: dict[tuple[str, str], list[WrkResult]], path: str, server: str, reference: str) -> float:
    """The median over rounds of server/reference requests per second (both measured in the same round)."""
    pairs = zip(results[path, server], results[path, reference], strict=True)
    return median([mine.requests_per_second / theirs.requests_per_second for mine, theirs in pairs])


def report(measured: Measured, rounds: int, seconds: int, images: int) -> None:
    results, rows = measured.wrk, []
    for path in PATHS:
        for server in servers_on(path):
            runs, cpu = results[path, server], measured.cpu_us[path, server]
            rows.append([
                PATH_NAMES[path], server,
                fmt(median([run.requests_per_second for run in runs]), 0),
                fmt(median([run.p50_ms for run in runs])), fmt(median([run.p99_ms for run in runs])),
                f"{ratio(results, path, server, 'bare Starlette'):.2f}x",
                f"{ratio(results, path, server, 'nginx'):.2f}x" if path in NGINX_PATHS else "-",
                fmt(median(cpu), 0) if cpu else "-",
                sum(run.socket_errors for run in runs),
            ])
    notes = [
        f"wrk -t{THREADS} -c{CONNECTIONS} -d{seconds}s --latency on loopback; median of {rounds} round(s), "
        f"servers taking turns; {images} images in the fallback bucket; one uvicorn worker (and two for "
        f"{TWO_WORKERS!r}), one nginx worker",
    ]
    for path in PATHS:
        got = ratio(results, path, "avatargen", "bare Starlette")
        notes.append(f"target {path} path: avatargen >= {TARGET}x bare Starlette: {got:.2f}x, {verdict(got >= TARGET)}")
    for path in PATHS:
        share = median(measured.cpu_us[path, "avatargen"]) / median(measured.cpu_us[path, "bare Starlette"])
        notes.append(f"{path} path: avatargen uses {share:.2f}x the CPU per request of bare Starlette")
    print_table("Visitor throughput: GET /avatar",
                ["path", "server", "req/s", "p50 ms", "p99 ms", "vs bare Starlette", "vs nginx", "CPU us/req",
                 "socket errors"], rows, notes)


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
        # Every variant of every image avatargen may send on the variant paths, and the reference's own.
        quality = settings.generator.webp_quality
        variants_sent = {variant(webp, 64, form, quality) for webp in avatars for form in (AVIF, JPEG)}
        for form in (AVIF, JPEG):
            (work / f"avatar.{form.name}").write_bytes(variant(avatars[middle], 64, form, quality))
        reference_command = [sys.executable, "-m", "benchmarks.reference_app", "--image", str(image),
                             "--id", ids[middle], "--variant", f"avif={work / 'avatar.avif'}",
                             "--variant", f"jpg={work / 'avatar.jpg'}"]
        starlette_port, nginx_port = free_port(), free_port()
        starlette = Service("bare Starlette", [*reference_command, "--port", str(starlette_port)],
                            port=starlette_port, log=work / "starlette.log", health_path="/avatar")
        nginx = nginx_reference(image, ids[middle], settings.serving.cache_max_age, work / "nginx", nginx_port)
        # The same buckets, its own data folder (its own generator lock: neither runs a generator anyway).
        (work / "workers").mkdir()
        workers = write_config(work / "workers", {"server": {"data_dir": str(work / "workers" / "data"), "workers": 2},
                                                  "buckets": {"fallback": {"dir": str(settings.buckets.fallback.dir),
                                                                           "max": images},
                                                              "unique": {"dir": str(settings.buckets.unique.dir)}}})
        with avatargen_server(config, work / "avatargen.log") as avatargen, \
                avatargen_server(workers, work / "workers.log") as two_workers, starlette, nginx:
            services = {"avatargen": avatargen, TWO_WORKERS: two_workers, "bare Starlette": starlette, "nginx": nginx}
            references = {"fallback": image.read_bytes(), "304": b"", "s=64 avif": (work / "avatar.avif").read_bytes(),
                          "s=64 jpeg": (work / "avatar.jpg").read_bytes()}
            check_same_answers({name: service.url for name, service in services.items()},
                               set(avatars) | variants_sent, references)
            if not args.quick:
                measure(services, 1, 2)  # warm-up: caches filled, code paths hot
            measured = measure(services, rounds, seconds)
    report(measured, rounds, seconds, images)
    return 0


if __name__ == "__main__":
    sys.exit(main())
