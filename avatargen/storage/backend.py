"""The storage of one server process, for `[storage] backend`: the folders (default) or a shared Redis."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from functools import partial

from avatargen.config import Settings
from avatargen.imaging import frame_unique
from avatargen.lock import FileSeat, GeneratorLock
from avatargen.storage.folders import FileLedger, folder_buckets
from avatargen.storage.protocols import GeneratorSeat, Ledger, StoredBucket
from avatargen.storage.redis_buckets import RedisBucket
from avatargen.storage.redis_connection import RedisStorage, StorageUnavailable
from avatargen.storage.redis_lease import GeneratorLease
from avatargen.storage.redis_ledger import RedisLedger

log = logging.getLogger("avatargen.storage")


@dataclass
class Storage:
    """Where this process keeps what matters; `redis` is the shared client when the backend is Redis."""

    buckets: Mapping[str, StoredBucket]
    ledger: Ledger
    seat: GeneratorSeat
    redis: RedisStorage | None = None

    @property
    def where(self) -> str:
        """For the owner's log: the Redis (without its password) or "folders"."""
        return f"Redis at {self.redis.where} (keys {self.redis.prefix}:*)" if self.redis else "folders"


def redis_buckets(redis: RedisStorage, settings: Settings) -> dict[str, RedisBucket]:
    """The two buckets in Redis; the unique one keeps the framed copy visitors get, as its folder does."""
    frame = partial(frame_unique, quality=settings.generator.webp_quality)
    return {name: RedisBucket(redis, name, prepare=frame if name == "unique" else None)
            for name, _ in settings.buckets.items()}


@contextlib.asynccontextmanager
async def opened_storage(settings: Settings) -> AsyncIterator[Storage]:
    """The storage of `settings`, closed at the end. A Redis that does not answer yet is no reason not to
    start: visitors get fallbacks and the generator waits for its lease meanwhile."""
    if settings.storage.backend != "redis":
        ledger = await FileLedger.open(settings.server.data_dir / "ledger.sqlite3")
        try:
            yield Storage(folder_buckets(settings), ledger, FileSeat(GeneratorLock(settings.server.data_dir)))
        finally:
            await ledger.aclose()
        return
    redis = RedisStorage.connect(settings.storage)
    try:
        shared = RedisLedger(redis)
        try:
            await shared.open()
        except StorageUnavailable as exc:
            log.warning("%s; the cost ledger is adopted once it answers", exc)
        yield Storage(redis_buckets(redis, settings), shared, GeneratorLease(redis), redis)
    finally:
        await redis.aclose()
