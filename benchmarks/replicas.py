"""Storage backends and replicas: visitor throughput and the unique path, folders against Redis, one
`avatargen serve` against two, in one run.

For each of files/1, files/2, redis/1, redis/2, real `avatargen serve` processes on this machine share
the storage (the same bucket folders and data folder, or one local redis-server), with published
fallbacks and uniques and an allowance that always grants:
- unique path, first: sequential requests on one keep-alive connection per replica, taking turns, each
  from its own visitor address; every answer must be a unique, never the same twice;
- fallback throughput, once every unique is gone: wrk on every replica at once (the connections split
  between them), summed.
Run-to-run noise is large on a small machine: each throughput figure is the median over rounds, after
a warm-up that brings every fallback into each replica's memory.

    python -m benchmarks.replicas [--quick] [--rounds N] [--seconds S] [--uniques N]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

from avatargen.config import StorageSettings, load_settings
from avatargen.storage.files.bucket import open_buckets
from avatargen.storage.redis.buckets import RedisBucket
from avatargen.storage.redis.connection import RedisStorage
from avatargen.testing import RedisServer, Service, running_redis
from benchmarks.harness import avatargen_server, parse_args, publish, sample_avatars, scratch, write_config
from benchmarks.report import fmt, median, percentile, print_machine, print_table
from benchmarks.unique_path import timed_gets
from benchmarks.wrk import WrkResult, ensure_installed, run_wrk

SETUPS = (("files", 1), ("files", 2), ("redis", 1), ("redis", 2))
THREADS, CONNECTIONS = 2, 64
FALLBACKS = 200


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds of every setup (default 3)")
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration of one measurement (default 10)")
    parser.add_argument("--uniques", type=int, default=400, help="uniques claimed per setup (default 400)")


def stock(config: Path, backend: str, url: str, uniques: int) -> None:
    """Fallbacks and uniques, published as the generator does, into the folders or Redis."""
    settings = load_settings(config)
    size, quality = settings.generator.image_size, settings.generator.webp_quality
    fallbacks, framed = sample_avatars(FALLBACKS, size, quality), sample_avatars(uniques, size, quality)
    if backend == "files":
        buckets = open_buckets(settings)
        publish(buckets["fallback"], fallbacks)
        publish(buckets["unique"], framed)
        return

    async def into_redis() -> None:
        storage = RedisStorage.connect(StorageSettings(backend="redis", url=url, timeout=10))
        await storage.client.flushdb()
        frame = open_buckets(settings)["unique"].prepare
        for name, images in (("fallback", fallbacks), ("unique", framed)):
            bucket = RedisBucket(storage, name, prepare=frame if name == "unique" else None)
            for image in images:
                await bucket.publish(image, {"prompt": "benchmark", "backend": "benchmark"})
        await storage.aclose()

    asyncio.run(into_redis())


@contextlib.contextmanager
def replicas(work: Path, backend: str, count: int, redis: RedisServer, uniques: int) -> Iterator[list[Service]]:
    """`count` servers sharing one storage; the uniques and fallbacks stocked before they start."""
    folder = work / f"{backend}-{count}"
    folder.mkdir()
    layer = {"serving": {"unique_burst": uniques * 10, "unique_every": "1ms", "unique_per_visitor": "24h"},
             "buckets": {"unique": {"max": uniques}, "fallback": {"max": FALLBACKS}},
             "storage": {"backend": backend, "url": redis.url if backend == "redis" else ""}}
    config = write_config(folder, layer)
    stock(config, backend, redis.url, uniques)
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(avatargen_server(config, folder / f"replica-{n}.log")) for n in range(count)]


def throughput(services: list[Service], seconds: int) -> WrkResult:
    """wrk on every replica at once; the sum of their requests per second, the worst of their p99."""
    share = CONNECTIONS // len(services)
    with concurrent.futures.ThreadPoolExecutor(len(services)) as pool:
        results = list(pool.map(lambda service: run_wrk(service.url + "/avatar", threads=THREADS // len(services) or 1,
                                                         connections=share, seconds=seconds), services))
    return WrkResult(requests=sum(result.requests for result in results),
                     requests_per_second=sum(result.requests_per_second for result in results),
                     p50_ms=median([result.p50_ms for result in results]),
                     p99_ms=max(result.p99_ms for result in results),
                     socket_errors=sum(result.socket_errors for result in results))


def unique_latencies(services: list[Service], count: int) -> list[float]:
    """`count` uniques claimed in turns from each replica: milliseconds each; each a unique, never twice."""
    per_replica = count // len(services)
    seen: set[str] = set()
    latencies = []
    for n, service in enumerate(services):
        first = 1 + n * per_replica
        for milliseconds, response, _ in timed_gets(service.port, range(first, first + per_replica)):
            image_id = response.getheader("X-Avatar-Id") or ""
            if response.getheader("X-Avatar-Kind") != "unique" or image_id in seen:
                raise SystemExit(f"expected a new unique, got {response.getheader('X-Avatar-Kind')} {image_id}")
            seen.add(image_id)
            latencies.append(milliseconds)
    return latencies


def main() -> int:
    args = parse_args(__doc__.split("\n")[0], options)
    rounds, seconds, uniques = (1, 1, 20) if args.quick else (args.rounds, args.seconds, args.uniques)
    ensure_installed("wrk", ["wrk"])
    ensure_installed("redis-server", ["redis-server"])
    print_machine()
    rows = []
    with scratch() as work, running_redis(work / "redis") as redis:
        for backend, count in SETUPS:
            with replicas(work, backend, count, redis, uniques) as services:
                latencies = unique_latencies(services, uniques)
                if not args.quick:
                    throughput(services, 2)  # warm-up: every fallback in each replica's memory
                runs = [throughput(services, seconds) for _ in range(rounds)]
                print(f"{backend} x{count}: {fmt(median([run.requests_per_second for run in runs]), 0)} req/s",
                      file=sys.stderr, flush=True)
            rows.append([backend, count, fmt(median([run.requests_per_second for run in runs]), 0),
                         fmt(median([run.p99_ms for run in runs])), sum(run.socket_errors for run in runs),
                         len(latencies), fmt(median(latencies), 3), fmt(percentile(latencies, 99), 3)])
    print_table("Storage backends and replicas: GET /avatar", [
        "storage", "replicas", "fallback req/s", "fallback p99 ms", "socket errors", "uniques", "unique median ms",
        "unique p99 ms"], rows, [
        f"replicas are `avatargen serve` processes on this machine sharing the storage (folders, or one local "
        f"redis-server); fallback: wrk -t{THREADS} -c{CONNECTIONS} -d{seconds}s split over the replicas, summed, "
        f"median of {rounds} round(s); {FALLBACKS} fallbacks",
        "unique: sequential requests, one keep-alive connection per replica in turn, each from its own visitor "
        "address; every answer a unique, never one twice",
    ])
    return 0


if __name__ == "__main__":
    sys.exit(main())
