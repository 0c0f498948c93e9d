"""The cost ledger in a real Redis: entries and spend shared by replicas, a lost ledger noticed, fencing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from avatargen.config import StorageSettings
from avatargen.storage.errors import LeaseLost
from avatargen.storage.redis.connection import RedisStorage
from avatargen.storage.redis.lease import RedisLease
from avatargen.storage.redis.ledger import RedisLedger
from avatargen.storage.spend import Entry
from avatargen.testing import RedisServer

NOON = datetime(2026, 11, 30, 12, 0, tzinfo=UTC).timestamp()


@pytest.fixture
async def replicas(redis_server: RedisServer) -> AsyncIterator[list[RedisStorage]]:
    settings = StorageSettings(backend="redis", url=redis_server.url, key_prefix="test", timeout=10.0)
    storages = [RedisStorage.connect(settings) for _ in range(2)]
    yield storages
    for storage in storages:
        await storage.aclose()


async def test_entries_and_spend_are_shared(replicas: list[RedisStorage]) -> None:
    here, there = RedisLedger(replicas[0]), RedisLedger(replicas[1])
    await here.open()
    await there.open()
    assert await there.is_empty()
    yesterday = Entry("run-1", NOON - 86400, NOON - 86400 + 600, 3.6, images=12)  # 10 minutes at 3.6 an hour
    today = Entry("run-2", NOON - 60, None, 3.6)  # still running
    await here.record([yesterday, today])
    assert not await there.is_empty()
    assert sorted(await there.entries(NOON - 2 * 86400), key=lambda e: e.run_id) == [yesterday, today]
    assert await there.entries(NOON - 3600) == [today]  # stopped before: not in the period
    spend = await there.spend(NOON)
    assert (spend.billed_seconds_today, spend.billed_seconds_month) == (60, 660)
    assert spend.today == pytest.approx(0.06) and spend.month == pytest.approx(0.66)
    await here.record([Entry("run-2", NOON - 60, NOON + 60, 3.6)])  # the stop is confirmed
    assert (await there.spend(NOON + 3600)).billed_seconds_today == 120
    await here.record([])


async def test_a_lost_ledger_is_noticed_once(replicas: list[RedisStorage]) -> None:
    ledger = RedisLedger(replicas[0])
    await ledger.open()
    await ledger.record([Entry("run-1", NOON, NOON + 60, 1.0)])
    assert await ledger.reopen_if_lost() is None
    await replicas[0].client.flushdb()  # Redis lost its data (a restart without persistence)
    assert await ledger.reopen_if_lost() == "deleted"
    assert await ledger.reopen_if_lost() is None  # the marker is back; the generator writes its entries again
    other = RedisLedger(replicas[1])
    await other.open()
    await replicas[0].client.flushdb()
    assert await other.reopen_if_lost() == "deleted"  # the other replica notices first ...
    assert await ledger.reopen_if_lost() == "replaced by another ledger"  # ... and this one after it
    assert await ledger.reopen_if_lost() is None


async def test_a_replica_that_lost_the_lease_cannot_bill(replicas: list[RedisStorage]) -> None:
    old, new = RedisLease(replicas[0], ttl=5), RedisLease(replicas[1], ttl=5)
    assert await old.acquire()
    await old.release()
    assert await new.acquire()
    with pytest.raises(LeaseLost):
        await RedisLedger(replicas[0]).record([Entry("run-1", NOON, None, 1.0)])
    await RedisLedger(replicas[1]).record([Entry("run-2", NOON, None, 1.0)])
    assert [entry.run_id for entry in await RedisLedger(replicas[0]).entries(0)] == ["run-2"]
