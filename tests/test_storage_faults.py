"""Storage faults as real processes meet them: a Redis blip (stopped, then started again on its AOF) must not
make the generator overfill; a Redis asleep (`DEBUG SLEEP`) costs a visitor one timeout, not one per
fallback tried; a fallback the owner deletes is gone from every replica and every worker at once."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from avatargen.api import AdminClient, Status
from avatargen.config import StorageSettings, load_settings
from avatargen.storage.files.bucket import open_buckets
from avatargen.storage.redis.buckets import RedisBucket
from avatargen.storage.redis.connection import RedisStorage
from avatargen.testing import RedisServer, Service, avatargen_server, free_port, running_redis
from tests.support import write_config
from tests.test_replicas import stock, webp

TOKEN = "storage-faults-token"


def redis_server_process(tmp_path: Path, name: str, redis_server: RedisServer, **overrides: Any) -> Service:
    """`avatargen serve` on the Redis backend, with the simulated GPU (in its process, used by the lease holder)."""
    folder = tmp_path / name
    folder.mkdir()
    config = write_config(folder, {"storage.backend": "redis", "storage.url": redis_server.url, **overrides})
    return avatargen_server(config, folder / "server.log", token=TOKEN, port=free_port())


@contextlib.asynccontextmanager
async def started(*services: Service) -> AsyncIterator[list[Service]]:
    """The services started one after the other (the first holds the generator), stopped at the end."""
    running: list[Service] = []
    try:
        for service in services:
            running.append(await asyncio.to_thread(service.start))
        yield running
    finally:
        for service in running:
            await asyncio.to_thread(service.stop)


async def status_until(admin: AdminClient, condition: Callable[[Status], bool], timeout: float = 60.0) -> Status:
    """The first status that meets `condition` (another process's state: polled, with a deadline)."""
    async with asyncio.timeout(timeout):
        while not condition(status := await admin.status()):
            await asyncio.sleep(0.1)
    return status


def _check_moved(before: datetime | None, now: Status) -> bool:
    return now.next_check_at != before


async def checks_pass(admin: AdminClient, checks: int = 2) -> Status:
    """The status once the scheduler has made `checks` more automatic checks (each moves next_check_at)."""
    status = await admin.status()
    for _ in range(checks):
        status = await status_until(admin, functools.partial(_check_moved, status.next_check_at))
    return status


async def in_redis(url: str, bucket: str = "fallback") -> int:
    storage = RedisStorage.connect(StorageSettings(backend="redis", url=url, timeout=10.0))
    try:
        shared = RedisBucket(storage, bucket)
        await shared.refresh()
        return shared.count()
    finally:
        await storage.aclose()


async def visits(url: str, n: int) -> list[httpx.Response]:
    """`n` visitors, one after the other, each on a connection of its own (with several workers, the kernel
    spreads them over the workers)."""
    answers = []
    for _ in range(n):
        async with httpx.AsyncClient(timeout=30) as client:
            answer = await client.get(f"{url}/avatar")
        assert answer.status_code == 200
        answers.append(answer)
    return answers


# --- a Redis blip ------------------------------------------------------------------------------------


async def test_a_redis_blip_never_makes_the_generator_overfill(tmp_path: Path,
                                                               durable_redis_server: RedisServer) -> None:
    await stock(durable_redis_server.url, uniques=0, fallbacks=10)
    server = redis_server_process(tmp_path, "server", durable_redis_server, **{
        "buckets.fallback.min": 5, "buckets.fallback.max": 10, "generator.check_every": "1s"})
    async with started(server), AdminClient(server.url, TOKEN, timeout=30) as admin:
        await status_until(admin, lambda status: status.buckets["fallback"].count == 10)
        await asyncio.to_thread(durable_redis_server.stop)
        # Visitors during the outage: none of the fallbacks was read before, so every one of them fails.
        assert {answer.headers["x-avatar-kind"] for answer in await visits(server.url, 30)} == {"placeholder"}
        during = await checks_pass(admin)
        assert during.buckets["fallback"].unknown, "a level read during the outage is unknown, not 0"
        assert during.buckets["fallback"].count == 10 and during.last_run is None and during.state == "idle"
        assert "bucket levels unknown" in (during.paused_reason or "")

        await asyncio.to_thread(durable_redis_server.start)  # the same port, the same AOF
        back = await status_until(admin, lambda status: status.buckets["fallback"].unknown is None)
        assert back.buckets["fallback"].count == 10
        after = await checks_pass(admin)
        assert after.last_run is None and after.state == "idle", "a run was started on a full bucket"
    assert await in_redis(durable_redis_server.url) == 10


async def test_an_id_forgotten_by_mistake_comes_back_at_the_next_refresh(redis_server: RedisServer) -> None:
    await stock(redis_server.url, uniques=0, fallbacks=3)
    storage = RedisStorage.connect(StorageSettings(backend="redis", url=redis_server.url, timeout=10.0))
    try:
        bucket = RedisBucket(storage, "fallback")
        await bucket.refresh()
        image_id = bucket.ids()[0]
        bucket.forget(image_id)  # nothing changed in Redis: the version is the same
        assert bucket.count() == 2
        await bucket.refresh()
        assert bucket.count() == 3 and image_id in bucket.ids()
    finally:
        await storage.aclose()


# --- a Redis asleep ----------------------------------------------------------------------------------

SLEEP = 12  # seconds Redis answers nobody (DEBUG SLEEP); the storage timeout is 0.5 s


def asleep(url: str) -> threading.Thread:
    """Redis busy for SLEEP seconds from now (a thread waits for its own DEBUG SLEEP to end)."""
    patient = redis.Redis.from_url(url, socket_timeout=SLEEP + 30)
    sleeper = threading.Thread(target=lambda: patient.execute_command("DEBUG", "SLEEP", SLEEP), daemon=True)
    sleeper.start()
    probe = redis.Redis.from_url(url, socket_timeout=0.2)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # until a ping goes unanswered: Redis sleeps
        try:
            probe.ping()
        except redis.TimeoutError:
            return sleeper
        time.sleep(0.02)
    raise TimeoutError("Redis never fell asleep")


@pytest.fixture
def debug_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server that takes DEBUG SLEEP from loopback."""
    with running_redis(tmp_path / "redis", debug=True) as server:
        yield server


async def test_a_slow_redis_costs_a_visitor_one_timeout_not_one_per_fallback(tmp_path: Path,
                                                                             debug_redis_server: RedisServer) -> None:
    redis_server = debug_redis_server
    await stock(redis_server.url, uniques=3, fallbacks=60)
    # Each visit picks afresh (no same face), so the replica has fallbacks in memory.
    server = redis_server_process(tmp_path, "server", redis_server,
                                  **{"buckets.fallback.max": 60, "serving.same_face_for": 0})
    async with started(server), httpx.AsyncClient(timeout=30) as client:
        # This visitor's first visit is a unique; the next ones are fallbacks, which the replica keeps in memory.
        answers = await visits(server.url, 4)
        remembered = {answer.headers["x-avatar-id"] for answer in answers
                      if answer.headers["x-avatar-kind"] == "fallback"}
        sleeper = await asyncio.to_thread(asleep, redis_server.url)
        waits, kinds = [], []
        for headers in ({}, {"X-Forwarded-For": "10.9.9.9"}):  # a fallback; a new visitor's unique first
            began = time.monotonic()
            answer = await client.get(f"{server.url}/avatar", headers=headers)
            waits.append(time.monotonic() - began)
            kinds.append((answer.headers["x-avatar-kind"], answer.headers["x-avatar-id"] in remembered))
        await asyncio.to_thread(sleeper.join, SLEEP + 30)
    # Before: every fallback not in memory was tried in turn, 0.5 s each, until Redis woke up (SLEEP s).
    assert max(waits) < SLEEP / 4, f"visitors waited {waits}"
    # Not a fallback from memory: whether it was deleted meanwhile through another replica cannot be known.
    assert kinds == [("placeholder", False), ("placeholder", False)]


# --- deleted is gone everywhere ----------------------------------------------------------------------


async def delete_every_fallback(url: str) -> set[str]:
    async with AdminClient(url, TOKEN, timeout=30) as admin:
        images = await admin.images("fallback", 100)
        for image in images:
            await admin.delete_image("fallback", image.id)
    return {image.id for image in images}


async def test_a_deleted_fallback_is_not_served_by_the_other_replica(tmp_path: Path,
                                                                    redis_server: RedisServer) -> None:
    await stock(redis_server.url, uniques=0, fallbacks=4)
    first = redis_server_process(tmp_path, "first", redis_server)
    second = redis_server_process(tmp_path, "second", redis_server)
    async with started(first, second):
        served = {answer.headers["x-avatar-id"] for answer in await visits(second.url, 40)}
        assert len(served) > 1  # the other replica holds fallbacks in memory
        deleted = await delete_every_fallback(first.url)
        after = [answer.headers["x-avatar-id"] for answer in await visits(second.url, 30)]
    assert not deleted & set(after), "a deleted fallback was served"
    assert set(after) == {"placeholder"}


async def test_a_deleted_fallback_is_not_served_by_the_other_worker(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"server.workers": 2})
    server = avatargen_server(config, tmp_path / "server.log", token=TOKEN, port=free_port())
    fallback = open_buckets(load_settings(config))["fallback"]
    for shade in range(4):
        fallback.images.publish(webp(shade), {"prompt": f"fallback {shade}"})
    async with started(server):
        await visits(server.url, 60)  # both workers hold the fallbacks in memory
        deleted = await delete_every_fallback(server.url)
        after = [answer.headers["x-avatar-id"] for answer in await visits(server.url, 60)]
    assert not deleted & set(after), "a deleted fallback was served"


async def test_a_fallback_deleted_while_a_replica_cannot_see_redis_is_not_served_by_it(
        tmp_path: Path, debug_redis_server: RedisServer) -> None:
    """The soak's case: a replica whose check times out (Redis slow) never serves from memory a fallback the
    owner deleted through the other replica; the visitor gets the placeholder, after one timeout at most."""
    redis_server = debug_redis_server
    await stock(redis_server.url, uniques=0, fallbacks=4)
    first = redis_server_process(tmp_path, "first", redis_server)
    second = redis_server_process(tmp_path, "second", redis_server, **{"serving.same_face_for": 0})
    async with started(first, second), httpx.AsyncClient(timeout=30) as client:
        held = {answer.headers["x-avatar-id"] for answer in await visits(second.url, 40)}
        assert len(held) > 1  # the second replica holds fallbacks in memory
        # Frozen, the second replica learns nothing of the delete; woken, it finds Redis asleep: its last
        # successful look still lists every fallback.
        await asyncio.to_thread(second.pause)
        try:
            deleted = await delete_every_fallback(first.url)
            sleeper = await asyncio.to_thread(asleep, redis_server.url)
        finally:
            await asyncio.to_thread(second.resume)
        began = time.monotonic()
        answer = await client.get(f"{second.url}/avatar", headers={"X-Forwarded-For": "10.9.9.10"})
        waited = time.monotonic() - began
        await asyncio.to_thread(sleeper.join, SLEEP + 30)
    assert held & deleted  # the replica had deleted fallbacks in memory
    assert answer.status_code == 200
    assert (answer.headers["x-avatar-kind"], answer.headers["x-avatar-id"]) == ("placeholder", "placeholder"), \
        "a deleted fallback was served"
    assert waited < SLEEP / 4, f"the visitor waited {waited:.1f} s"
