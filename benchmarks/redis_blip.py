"""The fault matrix's "Redis blip" row: `[storage] backend = "redis"`, Redis stopped for `BLIP` seconds while
visitors come and automatic checks run every second, then started again on its append-only file.

The fallback bucket is full in Redis before the row, with more fallbacks than the visitors read before the
blip (those they did not read yet are the ones a failed read once dropped from the replica's list), and its
min one below its max (the visitors may retire one): no automatic run may start, before, during or after the
blip (a list emptied by failed reads once made the generator fill it past its max). Then the row's manual
refill of uniques runs as in the other rows; at the end the fallback bucket must be at most at its max.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

from avatargen.config import StorageSettings
from avatargen.storage.redis.buckets import RedisBucket
from avatargen.storage.redis.connection import RedisStorage
from avatargen.testing import RedisServer, running_redis
from benchmarks.harness import Admin, write_config

BLIP = 2.0  # seconds Redis is down
CHECK_EVERY = "1s"  # automatic checks during the row
FALLBACKS = 40  # in Redis, the fallback bucket's max
CHECKS_AFTER = 2  # automatic checks awaited once Redis answers again, before the manual refill
WAIT = 60.0  # for the server to see Redis again and make its checks


@contextlib.contextmanager
def on_redis(config: Path, fallbacks: list[bytes]) -> Iterator[tuple[Path, RedisServer]]:
    """The row's config moved onto a fresh Redis (with an AOF, fsynced at every write) holding `fallbacks`:
    a full fallback bucket (max: their number, min one less)."""
    with running_redis(config.parent / "redis", appendonly=True) as redis:
        layers = tomllib.loads(config.read_text())
        moved = write_config(config.parent, layers, {
            "storage": {"backend": "redis", "url": redis.url},
            "buckets": {"fallback": {"min": len(fallbacks) - 1, "max": len(fallbacks)}},
            "generator": {"check_every": CHECK_EVERY},
        })
        asyncio.run(_stock(redis.url, fallbacks))
        yield moved, redis


async def _stock(url: str, fallbacks: list[bytes]) -> None:
    storage = RedisStorage.connect(StorageSettings(backend="redis", url=url, timeout=10.0))
    try:
        bucket = RedisBucket(storage, "fallback")
        for n, image in enumerate(fallbacks):
            await bucket.publish(image, {"prompt": f"fallback {n}"})
    finally:
        await storage.aclose()


async def _ids(url: str, bucket: str) -> set[str]:
    storage = RedisStorage.connect(StorageSettings(backend="redis", url=url, timeout=10.0))
    try:
        shared = RedisBucket(storage, bucket)
        await shared.refresh()
        return set(shared.ids())
    finally:
        await storage.aclose()


def ids(redis: RedisServer, bucket: str) -> set[str]:
    """The ids of a bucket in Redis now."""
    return asyncio.run(_ids(redis.url, bucket))


def blip(redis: RedisServer, admin: Admin) -> None:
    """Redis down for BLIP seconds (visitors keep coming), then up again; returns once the server reads every
    bucket's level again and the scheduler has made CHECKS_AFTER more checks."""
    redis.stop()
    time.sleep(BLIP)  # the outage itself: nothing to wait for but time
    redis.start()
    deadline = time.monotonic() + WAIT
    status = admin.status()
    while any(level.unknown for level in status.buckets.values()):
        if time.monotonic() > deadline:
            raise TimeoutError("the server never read the bucket levels again after the blip")
        time.sleep(0.05)
        status = admin.status()
    for _ in range(CHECKS_AFTER):
        before = status.next_check_at
        while status.next_check_at == before:
            if time.monotonic() > deadline:
                raise TimeoutError("the scheduler made no automatic check after the blip")
            time.sleep(0.05)
            status = admin.status()
