"""The generator lease and the event relay in a real Redis: one holder, renewal, takeover after expiry,
fencing of a stale holder's writes; events from one replica's hub reaching another's, Redis down."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator

import pytest
from PIL import Image

from avatargen.config import StorageSettings
from avatargen.events import EventHub
from avatargen.storage.errors import LeaseLost
from avatargen.storage.redis.buckets import RedisBucket
from avatargen.storage.redis.connection import RedisStorage
from avatargen.storage.redis.events import EventRelay
from avatargen.storage.redis.lease import RedisLease
from avatargen.testing import RedisServer


def webp() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 80, 160)).save(out, format="WEBP")
    return out.getvalue()


@pytest.fixture
async def replicas(redis_server: RedisServer) -> AsyncIterator[list[RedisStorage]]:
    """Two replicas' clients of one Redis."""
    storages = [RedisStorage.connect(StorageSettings(backend="redis", url=redis_server.url, key_prefix="test",
                                                     timeout=10.0)) for _ in range(2)]
    yield storages
    for storage in storages:
        await storage.aclose()


async def test_one_holder_at_a_time_and_release_hands_over(replicas: list[RedisStorage]) -> None:
    first, second = RedisLease(replicas[0], ttl=5), RedisLease(replicas[1], ttl=5)
    assert await first.acquire() is True
    assert await second.acquire() is False
    assert await second.holder() == first.name
    await first.release()
    assert await second.acquire() is True
    assert second.fence is not None and first.fence is not None and second.fence > first.fence
    await first.release()  # not the holder any more: changes nothing
    assert await first.holder() == second.name


async def test_a_kept_lease_outlives_its_ttl(replicas: list[RedisStorage]) -> None:
    # A second's ttl: renewed every third of it, so only a stall of two thirds of a second could lose it.
    holder, standby = RedisLease(replicas[0], ttl=1.0), RedisLease(replicas[1], ttl=1.0)
    assert await holder.acquire()
    keeping = asyncio.create_task(holder.keep())
    try:
        with pytest.raises(TimeoutError):  # three ttls later, the standby still has not got it
            async with asyncio.timeout(3.0):
                await standby.wait_acquire()
        assert await standby.holder() == holder.name
        assert not keeping.done()
    finally:
        keeping.cancel()


async def test_a_dead_holder_is_taken_over_and_its_writes_are_fenced(replicas: list[RedisStorage]) -> None:
    # The standby's ttl is long enough that no stall of a busy machine lets its lease expire mid-test.
    stale, standby = RedisLease(replicas[0], ttl=0.3), RedisLease(replicas[1], ttl=3.0)
    assert await stale.acquire()  # ... and never renews: a holder that died or froze
    async with asyncio.timeout(20):
        await standby.wait_acquire()
    keeping = asyncio.create_task(standby.keep())
    assert await standby.holder() == standby.name
    # The frozen holder wakes up and writes as the generator: refused, by the token it carries.
    with pytest.raises(LeaseLost, match="taken over"):
        await RedisBucket(replicas[0], "unique").publish(webp(), {"prompt": "late"})
    record = await RedisBucket(replicas[1], "unique").publish(webp(), {"prompt": "on time"})
    assert record.metadata["prompt"] == "on time"
    with pytest.raises(LeaseLost, match=f"taken over by {standby.name}"):
        await stale.keep()
    keeping.cancel()


async def test_a_machine_call_waits_for_a_confirmed_lease(replicas: list[RedisStorage],
                                                          redis_server: RedisServer) -> None:
    """`confirm` renews the lease for a call that fits in it, and refuses a holder that lost it; with Redis
    down, only the time left on this process's clock counts."""
    holder, standby = RedisLease(replicas[0], ttl=3.0), RedisLease(replicas[1], ttl=3.0)
    assert await holder.acquire()
    await holder.confirm(1.0)
    with pytest.raises(ValueError, match="cannot fit"):
        await holder.confirm(3.0)
    async with asyncio.timeout(20):  # nobody renews: it expires, and the standby takes it
        await standby.wait_acquire()
    with pytest.raises(LeaseLost, match="taken over"):
        await holder.confirm(1.0)
    await standby.confirm(1.0)
    redis_server.stop()
    await standby.confirm(0.1)  # just confirmed: still the standby's for this long, whatever Redis says
    await asyncio.sleep(1.0)  # time passes on this process's clock: a 2.5s call no longer fits in what is left
    with pytest.raises(LeaseLost, match="could not be confirmed"):
        await standby.confirm(2.5)


async def test_a_holder_that_cannot_reach_redis_gives_up_within_its_ttl(redis_server: RedisServer) -> None:
    storage = RedisStorage.connect(StorageSettings(backend="redis", url=redis_server.url, timeout=2.0))
    lease = RedisLease(storage, ttl=1.0)
    try:
        assert await lease.acquire()
        keeping = asyncio.create_task(lease.keep())
        redis_server.stop()
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(LeaseLost, match="could not be renewed"):
            await keeping
        # The ttl, one renewal period and its deadline, and a second for a busy machine (a holder that never
        # gave up would wait here for ever).
        assert loop.time() - started <= 1.0 + 2 * (1.0 / 3) + 1.0
    finally:
        await storage.aclose()


async def test_events_reach_the_other_replicas_hub_once(replicas: list[RedisStorage]) -> None:
    hubs = [EventHub(), EventHub()]
    relays = [EventRelay(storage, hub, block=0.2) for storage, hub in zip(replicas, hubs, strict=True)]
    tasks = [asyncio.create_task(relay.run()) for relay in relays]
    try:
        async with asyncio.timeout(5):
            for relay in relays:
                await relay.ready.wait()
        with hubs[1].subscribe(hubs[1].last_id) as there:
            hubs[0].publish("buckets", {"unique": {"count": 1}})  # each replica works its own levels out
            hubs[0].publish("state", {"state": "booting"})
            hubs[0].publish("log", {"message": "booting the machine"})
            async with asyncio.timeout(5):
                received = [await there.next(), await there.next()]
        assert [(event.type, event.data) for event in received] == [
            ("state", {"state": "booting"}), ("log", {"message": "booting the machine"})]
        with hubs[0].subscribe(hubs[0].last_id) as back_here:
            hubs[1].publish("log", {"message": "from the other replica"})
            async with asyncio.timeout(5):
                event = await back_here.next()
        assert (event.type, event.data) == ("log", {"message": "from the other replica"})
        # Nothing echoed: each hub holds its own events once and the other's once.
        assert [event.type for event in hubs[0].since(0)] == ["buckets", "state", "log", "log"]
        assert [event.type for event in hubs[1].since(0)] == ["state", "log", "log"]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class _Said(logging.Handler):
    """Sets an asyncio event when a log record containing `words` is emitted (from the loop's thread)."""

    def __init__(self, words: str) -> None:
        super().__init__()
        self.words = words
        self.event = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.words in record.getMessage():
            self.event.set()


async def test_the_relay_carries_on_after_redis_was_down(durable_redis_server: RedisServer) -> None:
    settings = StorageSettings(backend="redis", url=durable_redis_server.url, timeout=2.0)
    storages = [RedisStorage.connect(settings) for _ in range(2)]
    hubs = [EventHub(), EventHub()]
    relays = [EventRelay(storage, hub, block=0.2) for storage, hub in zip(storages, hubs, strict=True)]
    tasks = [asyncio.create_task(relay.run()) for relay in relays]
    said = _Said("this replica's events do not reach panels connected to other replicas")
    logging.getLogger("avatargen.storage").addHandler(said)
    try:
        async with asyncio.timeout(5):
            for relay in relays:
                await relay.ready.wait()
        durable_redis_server.stop()
        hubs[0].publish("log", {"message": "said while Redis is down"})
        async with asyncio.timeout(5):
            await said.event.wait()
        durable_redis_server.start()
        with hubs[1].subscribe(hubs[1].last_id) as there:
            hubs[0].publish("state", {"state": "idle"})
            async with asyncio.timeout(10):
                event = await there.next()
        assert (event.type, event.data) == ("state", {"state": "idle"})
        assert [event.type for event in hubs[1].since(0)] == ["state"]  # what was said meanwhile is not relayed
        assert not any(task.done() for task in tasks)
    finally:
        logging.getLogger("avatargen.storage").removeHandler(said)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for storage in storages:
            await storage.aclose()
