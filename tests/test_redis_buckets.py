"""Buckets and the unique allowance in a real Redis: publishing, listing, claiming exactly once across
clients and processes, the token bucket and the visitor window, the retire slot, Redis down or slow."""

from __future__ import annotations

import asyncio
import io
import json
import multiprocessing
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from PIL import Image

from avatargen.config import ServingSettings, StorageSettings
from avatargen.storage.errors import ImageNotFound, StorageUnavailable
from avatargen.storage.models import Claim, check_id
from avatargen.storage.redis.allowance import RedisAllowance
from avatargen.storage.redis.buckets import RedisBucket
from avatargen.storage.redis.connection import RedisStorage
from avatargen.testing import RedisServer

META = {"prompt": "A painting of cjs", "seed": 7, "backend": "simulated"}
OPEN = ServingSettings(unique_every=0.0, unique_burst=1, unique_per_visitor=0.0)  # no limit: claims only
# The clients' deadline where a test is not about it: on a busy machine a call may take a while.
PATIENT = 10.0


def webp(shade: int, size: int = 32) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), (shade % 256, 80, 160)).save(out, format="WEBP", quality=60)
    return out.getvalue()


def framed(image: bytes) -> bytes:
    return b"FRAMED" + image


def settings_for(server: RedisServer, **changes: Any) -> StorageSettings:
    return replace(StorageSettings(backend="redis", url=server.url, key_prefix="test", timeout=PATIENT), **changes)


@pytest.fixture
async def storage(redis_server: RedisServer) -> AsyncIterator[RedisStorage]:
    storage = RedisStorage.connect(settings_for(redis_server))
    yield storage
    await storage.aclose()


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_publish_read_list_delete(storage: RedisStorage) -> None:
    bucket = RedisBucket(storage, "fallback")
    first = await bucket.publish(webp(1), META)
    second = await bucket.publish(webp(2), {**META, "created_at": "2030-01-01T00:00:00Z"})
    assert check_id(first.id) == first.id and first.path is None
    assert await bucket.read(first.id) == webp(1)
    assert await bucket.metadata(first.id) == {**META, "created_at": first.metadata["created_at"]}
    assert [record.id for record in await bucket.newest(5)] == [second.id, first.id]
    assert (await bucket.newest(1))[0].created_at.year == 2030
    assert bucket.count() == 2  # its own writes are in the copy at once

    other = RedisBucket(storage, "fallback")  # another replica
    assert other.count() == 0
    assert await other.refresh() is True
    assert sorted(other.ids()) == sorted([first.id, second.id])
    assert await other.refresh() is False  # nothing changed: one version check, no list

    assert await other.delete(first.id) is True
    assert await other.delete(first.id) is False
    with pytest.raises(ImageNotFound):
        await bucket.read(first.id)
    with pytest.raises(ImageNotFound):
        await bucket.metadata(first.id)
    await bucket.refresh()
    assert bucket.ids() == [second.id]


async def test_publish_refuses_what_is_not_webp_and_bad_metadata(storage: RedisStorage) -> None:
    bucket = RedisBucket(storage, "fallback")
    with pytest.raises(ValueError, match="WebP"):
        await bucket.publish(b"\x89PNG\r\n\x1a\n" + b"0" * 40, META)
    with pytest.raises(ValueError, match="created_at"):
        await bucket.publish(webp(1), {"created_at": "yesterday"})
    with pytest.raises(ValueError, match="invalid image id"):
        await bucket.read("../etc/passwd")
    assert await bucket.newest(10) == []


async def test_buckets_and_sites_do_not_mix(redis_server: RedisServer) -> None:
    one = RedisStorage.connect(settings_for(redis_server, key_prefix="one"))
    two = RedisStorage.connect(settings_for(redis_server, key_prefix="two"))
    try:
        record = await RedisBucket(one, "unique").publish(webp(1), META)
        for bucket in (RedisBucket(one, "fallback"), RedisBucket(two, "unique")):
            await bucket.refresh()
            assert bucket.count() == 0
            with pytest.raises(ImageNotFound):
                await bucket.read(record.id)
    finally:
        await one.aclose()
        await two.aclose()


async def test_a_claim_takes_the_framed_copy_out_for_good(storage: RedisStorage) -> None:
    bucket = RedisBucket(storage, "unique", prepare=framed)
    made_here = await bucket.publish(webp(1), META)  # framed by the bucket
    made_elsewhere = await bucket.publish(webp(2), META, prepared=b"PREPARED")  # framed by the generator
    allowance = RedisAllowance(storage, OPEN, bucket)
    claims = {}
    for n in range(3):
        claim = await allowance.claim(f"visitor-{n}")
        if claim is not None:
            claims[claim.id] = claim
    assert set(claims) == {made_here.id, made_elsewhere.id}
    assert claims[made_here.id].image == framed(webp(1))
    assert claims[made_elsewhere.id].image == b"PREPARED"
    assert claims[made_here.id].metadata == made_here.metadata
    assert bucket.count() == 0
    other = RedisBucket(storage, "unique")
    await other.refresh()
    assert other.count() == 0 and await other.newest(5) == []
    with pytest.raises(ImageNotFound):
        await bucket.read(made_here.id)


async def test_concurrent_claims_hand_out_each_unique_once(storage: RedisStorage) -> None:
    bucket = RedisBucket(storage, "unique")
    stocked = {(await bucket.publish(webp(n), META)).id for n in range(40)}
    allowances = [RedisAllowance(storage, OPEN, bucket) for _ in range(4)]  # four replicas
    claims = await asyncio.gather(*(allowances[n % 4].claim(f"v{n}") for n in range(100)))
    taken = [claim.id for claim in claims if claim is not None]
    assert len(taken) == len(set(taken)) == 40
    assert set(taken) == stocked


def _claim_in_process(url: str, start: multiprocessing.synchronize.Event, out: multiprocessing.Queue) -> None:
    async def claim_all() -> list[str]:
        # Patient: on a busy machine this checks that claims are exclusive, not that they are quick.
        storage = RedisStorage.connect(StorageSettings(backend="redis", url=url, key_prefix="test", timeout=PATIENT))
        bucket = RedisBucket(storage, "unique")
        allowance = RedisAllowance(storage, OPEN, bucket)
        start.wait()
        taken = []
        while (claim := await allowance.claim("v")) is not None:
            taken.append(claim.id)
        await storage.aclose()
        return taken

    out.put(asyncio.run(claim_all()))


async def test_processes_claim_each_unique_once(storage: RedisStorage, redis_server: RedisServer) -> None:
    bucket = RedisBucket(storage, "unique")
    stocked = {(await bucket.publish(webp(n), META)).id for n in range(60)}
    context = multiprocessing.get_context("spawn")
    start, out = context.Event(), context.Queue()
    workers = [context.Process(target=_claim_in_process, args=(redis_server.url, start, out)) for _ in range(3)]
    for worker in workers:
        worker.start()
    start.set()
    taken = [image_id for _ in workers for image_id in await asyncio.to_thread(out.get, True, 60)]
    for worker in workers:
        worker.join(10)
    assert sorted(taken) == sorted(stocked)


async def test_allowance_starts_full_then_refills_one_token_per_period(storage: RedisStorage) -> None:
    bucket = RedisBucket(storage, "unique")
    for n in range(10):
        await bucket.publish(webp(n), META)
    clock = Clock()
    serving = ServingSettings(unique_every=60.0, unique_burst=2, unique_per_visitor=0.0)
    allowance = RedisAllowance(storage, serving, bucket, clock=clock)
    assert await allowance.claim("a") is not None
    assert await allowance.claim("b") is not None
    assert await allowance.claim("c") is None  # burst spent
    assert not allowance.token_may_be_due()  # and this replica knows it without asking
    clock.now += 30
    assert not allowance.may_grant("c")
    clock.now += 30
    assert allowance.may_grant("c")
    assert await allowance.claim("c") is not None
    assert await allowance.claim("d") is None
    clock.now += 600  # a long quiet time refills up to the burst, no more
    assert [await allowance.claim(v) is not None for v in "efg"] == [True, True, False]


async def test_one_unique_per_visitor_per_window_across_replicas(storage: RedisStorage) -> None:
    bucket = RedisBucket(storage, "unique")
    for n in range(5):
        await bucket.publish(webp(n), META)
    clock = Clock()
    serving = ServingSettings(unique_every=0.0, unique_burst=6, unique_per_visitor=3600.0)
    here, there = (RedisAllowance(storage, serving, bucket, clock=clock) for _ in range(2))
    assert await here.claim("1.2.3.4") is not None
    assert not here.may_grant("1.2.3.4")  # remembered here
    assert there.may_grant("1.2.3.4")  # not known there: it asks Redis, which refuses
    assert await there.claim("1.2.3.4") is None
    assert not there.may_grant("1.2.3.4")
    assert await there.claim("5.6.7.8") is not None
    clock.now += 3600
    assert await there.claim("1.2.3.4") is not None


async def test_an_empty_bucket_spends_no_token(storage: RedisStorage) -> None:
    bucket = RedisBucket(storage, "unique")
    serving = ServingSettings(unique_every=3600.0, unique_burst=1, unique_per_visitor=3600.0)
    allowance = RedisAllowance(storage, serving, bucket, clock=Clock())
    assert await allowance.claim("a") is None
    await bucket.publish(webp(1), META)
    assert await allowance.claim("a") is not None  # same visitor, same token: nothing was spent


async def test_zero_burst_never_grants(storage: RedisStorage) -> None:
    allowance = RedisAllowance(storage, ServingSettings(unique_burst=0), RedisBucket(storage, "unique"))
    assert not allowance.token_may_be_due()
    assert not allowance.may_grant("a")


async def test_retire_slot_once_per_period_across_replicas(storage: RedisStorage) -> None:
    clock = Clock()
    serving = ServingSettings(fallback_retire_every=3600.0)
    bucket = RedisBucket(storage, "fallback")
    here, there = (RedisAllowance(storage, serving, bucket, clock=clock) for _ in range(2))
    assert await here.retire() is True  # the first may be retired at once
    assert not here.may_retire()
    assert there.may_retire()
    assert await there.retire() is False
    assert not there.may_retire()
    clock.now += 3600
    assert await there.retire() is True
    assert await here.retire() is False


async def test_redis_down_raises_storage_unavailable_quickly(durable_redis_server: RedisServer) -> None:
    redis_server = durable_redis_server
    storage = RedisStorage.connect(settings_for(redis_server, timeout=1.0))
    bucket = RedisBucket(storage, "fallback")
    record = await bucket.publish(webp(1), META)
    redis_server.stop()
    loop = asyncio.get_running_loop()
    try:
        for operation in (bucket.refresh(), bucket.read(record.id), bucket.newest(3), bucket.delete(record.id),
                          bucket.publish(webp(2), META), RedisAllowance(storage, OPEN, bucket).claim("v"),
                          RedisAllowance(storage, OPEN, bucket).retire(), storage.ping()):
            started = loop.time()
            with pytest.raises(StorageUnavailable, match=r"Redis at redis://127\.0\.0\.1:\d+/0 cannot"):
                await operation
            assert loop.time() - started < 3.0  # refused at once; a busy machine may take a moment to say so
        assert bucket.ids() == [record.id]  # the last known list stays (the levels)
        redis_server.start()  # same port, same append-only file: the next call reconnects and finds it
        assert await bucket.read(record.id) == webp(1)
    finally:
        await storage.aclose()


async def test_redis_slow_raises_storage_unavailable_at_the_timeout(storage: RedisStorage,
                                                                    redis_server: RedisServer) -> None:
    slow = RedisStorage.connect(settings_for(redis_server, timeout=0.2))
    patient = RedisStorage.connect(settings_for(redis_server))
    record = await RedisBucket(patient, "fallback").publish(webp(1), META)
    bucket = RedisBucket(slow, "fallback")
    await storage.client.client_pause(2500)  # every client waits, as behind a stalled Redis
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.raises(StorageUnavailable, match=r"no answer within 0\.2s"):
            await bucket.read(record.id)
        assert loop.time() - started < 2.0  # at its deadline, not at the pause's end
        assert await patient.client.ping()  # answered once the pause is over
        assert await bucket.read(record.id) == webp(1)  # the same client works again
    finally:
        await slow.aclose()
        await patient.aclose()


async def test_a_claim_answered_too_late_is_put_back(storage: RedisStorage, redis_server: RedisServer) -> None:
    hasty = RedisStorage.connect(settings_for(redis_server, timeout=0.2))
    serving = ServingSettings(unique_every=3600.0, unique_burst=1, unique_per_visitor=3600.0)
    record = await RedisBucket(storage, "unique", prepare=framed).publish(webp(1), META)
    bucket = RedisBucket(hasty, "unique", prepare=framed)
    allowance = RedisAllowance(hasty, serving, bucket)
    try:
        await storage.client.client_pause(2000)  # the claim waits in Redis, then runs after the visitor gave up
        with pytest.raises(StorageUnavailable):
            await allowance.claim("1.2.3.4")
        await allowance.aclose()  # once the late answer came, what it took went back
        other = RedisBucket(storage, "unique")
        await other.refresh()
        assert other.ids() == [record.id]
        assert await other.read(record.id) == webp(1)
        again = await RedisAllowance(storage, serving, other).claim("1.2.3.4")  # the token and the chance too
        assert again is not None and again.image == framed(webp(1)) and again.metadata == record.metadata
    finally:
        await hasty.aclose()


async def test_stored_metadata_is_json(storage: RedisStorage) -> None:
    record = await RedisBucket(storage, "fallback").publish(webp(1), {"prompt": "Ünïcode"})
    raw = await storage.client.hget(storage.key("bucket", "fallback", "meta"), record.id)
    assert raw is not None
    assert json.loads(raw) == {"prompt": "Ünïcode", "created_at": record.metadata["created_at"]}


# --- the owner's word, and what the safety gate held back ----------------------------------------------------


async def test_keep_is_seen_by_every_replica_and_retiring_spares_a_kept_fallback(storage: RedisStorage) -> None:
    bucket = RedisBucket(storage, "fallback")
    kept, other = [await bucket.publish(webp(n), META) for n in range(2)]
    assert (await bucket.keep(kept.id)).kept and bucket.is_kept(kept.id)
    stale = RedisBucket(storage, "fallback")  # a replica that has not looked since
    assert not stale.is_kept(kept.id)
    assert await stale.retire(kept.id) is False, "Redis itself spares it"
    assert await stale.retire(other.id) is True
    await stale.refresh()
    assert stale.is_kept(kept.id) and stale.ids() == [kept.id]
    assert [(record.id, record.kept) for record in await stale.newest(5)] == [(kept.id, True)]
    assert not (await stale.keep(kept.id, kept=False)).kept
    assert await bucket.retire(kept.id) is True
    with pytest.raises(ImageNotFound):
        await bucket.keep(kept.id)
    await stale.refresh()
    assert stale.count() == 0 and not stale.is_kept(kept.id)


async def test_move_into_the_other_bucket_under_the_same_id(storage: RedisStorage) -> None:
    unique, fallback = RedisBucket(storage, "unique", prepare=framed), RedisBucket(storage, "fallback")
    image = await unique.publish(webp(1), META)
    moved = await unique.move(image.id, fallback)
    assert (moved.id, moved.bucket, moved.metadata["moved_from"]) == (image.id, "fallback", "unique")
    assert await fallback.read(image.id) == webp(1) and await fallback.framed(image.id) is None
    assert unique.count() == 0 and fallback.ids() == [image.id]
    for gone in (unique.read(image.id), unique.move(image.id, fallback)):
        with pytest.raises(ImageNotFound):
            await gone
    back = await fallback.move(image.id, unique)  # framed on the way into the bucket that frames
    assert back.metadata["moved_from"] == "fallback" and await unique.framed(image.id) == framed(webp(1))


async def test_a_move_and_concurrent_claims_never_both_get_a_unique(storage: RedisStorage) -> None:
    unique, fallback = RedisBucket(storage, "unique"), RedisBucket(storage, "fallback")
    stocked = [(await unique.publish(webp(n), META)).id for n in range(30)]
    allowance = RedisAllowance(storage, OPEN, unique)

    async def move(image_id: str) -> str | None:
        try:
            return (await unique.move(image_id, fallback)).id
        except ImageNotFound:
            return None  # a visitor claimed it first

    outcomes = await asyncio.gather(*(allowance.claim(f"v{n}") for n in range(30)), *map(move, stocked))
    claimed = [claim.id for claim in outcomes[:30] if isinstance(claim, Claim)]  # None: no unique left for it
    moved = [image_id for image_id in outcomes[30:] if isinstance(image_id, str)]
    assert not set(claimed) & set(moved)
    assert sorted(claimed + moved) == sorted(stocked)
    await fallback.refresh()
    assert sorted(fallback.ids()) == sorted(moved)


async def test_held_images_stay_out_of_the_bucket_until_approved(storage: RedisStorage) -> None:
    unique = RedisBucket(storage, "unique", prepare=framed)
    review = {"held": True, "reasons": [{"kind": "no_face", "text": "no face"}]}
    approved, refused = [await unique.hold(webp(n), {**META, "review": review}) for n in range(2)]
    assert approved.held and unique.count() == 0 and unique.held_count() == 2
    other = RedisBucket(storage, "unique", prepare=framed)  # another replica
    await other.refresh()
    assert other.count() == 0 and other.held_count() == 2 and await other.newest(5) == []
    assert [(record.id, record.held) for record in await other.held(5)] == [(refused.id, True), (approved.id, True)]
    assert await other.read_held(approved.id) == webp(0)
    assert await RedisAllowance(storage, OPEN, unique).claim("v") is None, "nothing held is ever claimed"

    published = await other.approve(approved.id)
    assert not published.held and published.metadata["review"]["approved_at"]
    assert await unique.framed(approved.id) == framed(webp(0))
    with pytest.raises(ImageNotFound):
        await other.approve(approved.id)
    assert await other.delete_held(refused.id) is True and await other.delete_held(refused.id) is False
    with pytest.raises(ImageNotFound):
        await other.read_held(refused.id)
    await unique.refresh()
    assert unique.ids() == [approved.id] and unique.held_count() == 0
