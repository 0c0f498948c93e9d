"""The default backend: the bucket folders and the SQLite ledger, behind the storage protocols.

`Bucket` and `CostLedger` block on the disk; here their blocking calls run in worker threads, so the
event loop serving visitors never waits on a slow disk or another process's lock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

from avatargen.buckets import CLAIM_TIMEOUT, Bucket, ImageRecord, open_buckets
from avatargen.config import Settings
from avatargen.ledger import CostLedger, Entry, Spend

log = logging.getLogger("avatargen.storage")


class FolderBucket:
    """A bucket folder (`avatargen.buckets.Bucket`) as a `StoredBucket`.

    `sweep_every`: how often uniques claimed by a process that died before sending them (and at least
    that long ago) go back into the bucket. `recount_every`: how often the images held for review are
    counted again, in a worker thread, when their folder changed (never on the visitors' event loop).
    """

    def __init__(self, bucket: Bucket, *, sweep_every: float = CLAIM_TIMEOUT, recount_every: float = 1.0) -> None:
        self.folder = bucket
        self.name = bucket.name
        self.sweep_every = sweep_every
        self.recount_every = recount_every

    def __repr__(self) -> str:
        return f"FolderBucket({self.folder!r})"

    @property
    def prepare(self) -> Callable[[bytes], bytes] | None:
        return self.folder.prepare

    def count(self) -> int:
        return self.folder.count()

    def ids(self) -> list[str]:
        return self.folder.ids()

    def random_id(self) -> str | None:
        return self.folder.random_id()

    def forget(self, image_id: str) -> None:
        self.folder.forget(image_id)

    async def servable(self, image_id: str) -> bool:
        """One stat, on the event loop: cheaper than a worker thread, and no slower than the folder's own
        mtime check that `count` makes there."""
        return self.folder.servable(image_id)

    def unknown(self) -> str | None:
        return self.folder.unknown()

    async def read(self, image_id: str) -> bytes:
        return await asyncio.to_thread(self.folder.read, image_id)

    async def metadata(self, image_id: str) -> dict[str, Any]:
        return await asyncio.to_thread(self.folder.metadata, image_id)

    async def newest(self, n: int) -> list[ImageRecord]:
        return await asyncio.to_thread(self.folder.newest, n)

    async def publish(self, image: bytes, metadata: dict[str, Any], *, prepared: bytes | None = None,
                      image_id: str | None = None) -> ImageRecord:
        return await asyncio.to_thread(partial(self.folder.publish, image, metadata, prepared=prepared,
                                               image_id=image_id))

    async def framed(self, image_id: str) -> bytes | None:
        return await asyncio.to_thread(self.folder.framed, image_id)

    async def delete(self, image_id: str) -> bool:
        return await asyncio.to_thread(self.folder.delete, image_id)

    async def retire(self, image_id: str) -> bool:
        return await asyncio.to_thread(self.folder.retire, image_id)

    def is_kept(self, image_id: str) -> bool:
        return self.folder.is_kept(image_id)

    async def keep(self, image_id: str, kept: bool = True) -> ImageRecord:
        return await asyncio.to_thread(self.folder.keep, image_id, kept)

    async def move(self, image_id: str, target: FolderBucket) -> ImageRecord:
        return await asyncio.to_thread(self.folder.move, image_id, target.folder)

    def held_count(self) -> int:
        return self.folder.held_count()

    def rejected(self) -> int:
        return self.folder.rejected()

    async def hold(self, image: bytes, metadata: dict[str, Any], *, image_id: str | None = None) -> ImageRecord:
        return await asyncio.to_thread(partial(self.folder.hold, image, metadata, image_id=image_id))

    async def held(self, n: int) -> list[ImageRecord]:
        return await asyncio.to_thread(self.folder.held, n)

    async def read_held(self, image_id: str) -> bytes:
        return await asyncio.to_thread(self.folder.read_held, image_id)

    async def delete_held(self, image_id: str) -> bool:
        return await asyncio.to_thread(self.folder.delete_held, image_id)

    async def approve(self, image_id: str) -> ImageRecord:
        return await asyncio.to_thread(self.folder.approve, image_id)

    async def follow(self) -> None:
        """Put back uniques whose claimer died before sending them, every `sweep_every`; count the held
        images again, off the event loop, every `recount_every` (when another process held or approved one).

        Start-up recovery must leave fresh claims alone (another worker may be sending them), so after a
        crash and a quick restart it is this sweep that returns them to the bucket.
        """
        async with asyncio.TaskGroup() as upkeep:
            upkeep.create_task(self._sweep())
            upkeep.create_task(self._recount())

    async def _recount(self) -> None:
        failing = False
        while True:
            try:
                await asyncio.to_thread(self.folder.recount_held)
                failing = False
            except OSError as exc:  # the last count stands until the folder can be listed again
                if not failing:
                    log.error("the images held back in the %s bucket cannot be counted: %s", self.name, exc)
                failing = True
            await asyncio.sleep(self.recount_every)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_every)
            released = await asyncio.to_thread(self.folder.release_stale_claims, self.sweep_every)
            if released:
                log.warning("put back %d %s avatar(s) claimed but never sent (a process died)", released, self.name)


def folder_buckets(settings: Settings) -> dict[str, FolderBucket]:
    """The two bucket folders of the configuration (see `avatargen.buckets.open_buckets`)."""
    return {name: FolderBucket(bucket) for name, bucket in open_buckets(settings).items()}


class FileLedger:
    """The SQLite ledger file (`avatargen.ledger.CostLedger`) as a `Ledger`; its calls go one at a time."""

    def __init__(self, ledger: CostLedger) -> None:
        self.file = ledger
        self.location = str(ledger.path)
        self._lock = asyncio.Lock()  # the connection serves one thread at a time

    @classmethod
    async def open(cls, path: Path) -> FileLedger:
        return cls(await asyncio.to_thread(CostLedger, path))

    async def _call(self, function: Callable[..., Any], *args: Any) -> Any:
        async with self._lock:
            return await asyncio.to_thread(function, *args)

    async def reopen_if_lost(self) -> str | None:
        return await self._call(self.file.reopen_if_lost)

    async def is_empty(self) -> bool:
        return await self._call(self.file.is_empty)

    async def entries(self, since: float) -> list[Entry]:
        return await self._call(self.file.entries, since)

    async def record(self, entries: Iterable[Entry]) -> None:
        await self._call(self.file.record, list(entries))

    async def spend(self, now: float | None = None) -> Spend:
        return await self._call(self.file.spend, now)

    async def aclose(self) -> None:
        await self._call(self.file.close_db)
