"""The storage of one server process, for `[storage] backend`: the folders (default) or a shared Redis.

Both give the server the same pieces (buckets, allowance, ledger, the generator's lease); only what
differs is here: the folders are repaired at start-up, then checked and their missing framed copies made;
Redis needs neither (every change there is one script) but a client to close.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Protocol

from avatargen.config import Settings
from avatargen.storage.errors import StorageUnavailable
from avatargen.storage.files.allowance import FolderAllowance
from avatargen.storage.files.faces import FolderFaces
from avatargen.storage.files.folder_bucket import FolderBucket, folder_buckets
from avatargen.storage.files.ledger import FileLedger
from avatargen.storage.files.lock import FileLease, GeneratorLock
from avatargen.storage.files.repair import check_and_frame
from avatargen.storage.framing import unique_copy
from avatargen.storage.protocols import FaceStore, GeneratorLease, Ledger, StoredBucket, UniqueAllowance
from avatargen.storage.redis.allowance import RedisAllowance
from avatargen.storage.redis.buckets import RedisBucket
from avatargen.storage.redis.connection import RedisStorage
from avatargen.storage.redis.faces import RedisFaces
from avatargen.storage.redis.lease import RedisLease
from avatargen.storage.redis.ledger import RedisLedger

log = logging.getLogger("avatargen.storage")

VISITORS_FILE = "visitors.sqlite3"  # the folders' unique allowance, in data_dir


class Backend(Protocol):
    """Where this process keeps what matters."""

    buckets: Mapping[str, StoredBucket]
    redis: RedisStorage | None  # the shared client, when the backend is Redis
    where: str  # for the owner's log

    async def recover(self) -> None:
        """Repair what a crash left behind, before anything is served."""
        ...

    async def finish_recovery(self) -> None:
        """What recovery left for later, done by the generator's process only (checking and framing in the
        background, while visitors are served)."""
        ...

    async def open_ledger(self) -> Ledger: ...
    async def open_allowance(self) -> UniqueAllowance: ...
    async def open_faces(self) -> FaceStore: ...
    def generator_lease(self) -> GeneratorLease: ...
    async def aclose(self) -> None: ...


class FolderBackend:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.folders: dict[str, FolderBucket] = folder_buckets(settings)
        self.buckets: Mapping[str, StoredBucket] = self.folders
        self.redis: RedisStorage | None = None
        self.where = f"folders ({settings.server.data_dir})"

    async def recover(self) -> None:
        for name, bucket in self.folders.items():
            recovery = await asyncio.to_thread(bucket.folder.repair.recover)
            if recovery.summary():
                log.info("bucket %s recovered at start-up: %s", name, recovery.summary())

    async def finish_recovery(self) -> None:
        """Every image checked cheaply (broken ones set aside), then the missing framed copies made."""
        for bucket in self.folders.values():
            await check_and_frame(bucket.folder.repair)

    async def open_ledger(self) -> Ledger:
        return await FileLedger.open(self.settings.server.data_dir / "ledger.sqlite3")

    async def open_allowance(self) -> UniqueAllowance:
        return await FolderAllowance.open(self.settings.server.data_dir / VISITORS_FILE, self.settings.serving,
                                          self.folders["unique"].folder)

    async def open_faces(self) -> FaceStore:
        return await FolderFaces.open(self.settings.server.data_dir / "faces.sqlite3")

    def generator_lease(self) -> GeneratorLease:
        return FileLease(GeneratorLock(self.settings.server.data_dir))

    async def aclose(self) -> None:
        """Nothing to close: each piece closes its own files."""


class RedisBackend:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = RedisStorage.connect(settings.storage)
        self.redis: RedisStorage | None = self.client
        frame = unique_copy(settings)
        self.shared: dict[str, RedisBucket] = {
            name: RedisBucket(self.client, name, prepare=frame if name == "unique" else None)
            for name, _ in settings.buckets.items()}
        self.buckets: Mapping[str, StoredBucket] = self.shared
        self.where = f"Redis at {self.client.where} (keys {self.client.prefix}:*)"

    async def recover(self) -> None:
        """Nothing to repair (every change is one script); the buckets' lists are read, if Redis answers."""
        for bucket in self.shared.values():
            try:
                await bucket.refresh()
            except StorageUnavailable as exc:
                log.warning("%s; visitors get the placeholder until it answers", exc)
                return

    async def finish_recovery(self) -> None:
        """Nothing left: framed copies are stored with their image."""

    async def open_ledger(self) -> Ledger:
        """The shared ledger; a Redis that does not answer yet is no reason not to start."""
        ledger = RedisLedger(self.client)
        try:
            await ledger.open()
        except StorageUnavailable as exc:
            log.warning("%s; the cost ledger is opened once it answers", exc)
        return ledger

    async def open_allowance(self) -> UniqueAllowance:
        return RedisAllowance(self.client, self.settings.serving, self.shared["unique"])

    async def open_faces(self) -> FaceStore:
        return RedisFaces(self.client)

    def generator_lease(self) -> GeneratorLease:
        return RedisLease(self.client)

    async def aclose(self) -> None:
        await self.client.aclose()


def open_backend(settings: Settings) -> Backend:
    """The backend of `[storage] backend`; nothing is read or connected until its coroutines run."""
    return RedisBackend(settings) if settings.storage.backend == "redis" else FolderBackend(settings)

