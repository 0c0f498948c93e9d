"""A bucket folder behind the `StoredBucket` protocol.

`Bucket` blocks on the disk; here its blocking calls run in worker threads, so the event loop serving
visitors never waits on a slow disk, and the upkeep every server runs (`follow`) lives here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial
from typing import Any

from avatargen.config import Settings
from avatargen.storage.files.bucket import Bucket, open_buckets
from avatargen.storage.files.claims import CLAIM_TIMEOUT
from avatargen.storage.models import ImageRecord

log = logging.getLogger("avatargen.storage")


class FolderBucket:
    """A bucket folder (`avatargen.storage.files.bucket.Bucket`) as a `StoredBucket`.

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
        return self.folder.index.count()

    def ids(self) -> list[str]:
        return self.folder.index.ids()

    def random_id(self) -> str | None:
        return self.folder.index.random_id()

    def forget(self, image_id: str) -> None:
        self.folder.index.forget(image_id)

    async def servable(self, image_id: str) -> bool:
        """One stat, on the event loop: cheaper than a worker thread, and no slower than the folder's own
        mtime check that `count` makes there."""
        return self.folder.images.servable(image_id)

    def unknown(self) -> str | None:
        return self.folder.index.unknown()

    async def read(self, image_id: str) -> bytes:
        return await asyncio.to_thread(self.folder.images.read, image_id)

    async def metadata(self, image_id: str) -> dict[str, Any]:
        return await asyncio.to_thread(self.folder.images.metadata, image_id)

    async def newest(self, n: int) -> list[ImageRecord]:
        return await asyncio.to_thread(self.folder.images.newest, n)

    async def publish(self, image: bytes, metadata: dict[str, Any], *, prepared: bytes | None = None,
                      image_id: str | None = None) -> ImageRecord:
        return await asyncio.to_thread(partial(self.folder.images.publish, image, metadata, prepared=prepared,
                                               image_id=image_id))

    async def framed(self, image_id: str) -> bytes | None:
        return await asyncio.to_thread(self.folder.images.framed, image_id)

    async def delete(self, image_id: str) -> bool:
        return await asyncio.to_thread(self.folder.images.delete, image_id)

    async def retire(self, image_id: str) -> bool:
        return await asyncio.to_thread(self.folder.images.retire, image_id)

    def is_kept(self, image_id: str) -> bool:
        return self.folder.images.is_kept(image_id)

    async def keep(self, image_id: str, kept: bool = True) -> ImageRecord:
        return await asyncio.to_thread(self.folder.images.keep, image_id, kept)

    async def move(self, image_id: str, target: FolderBucket) -> ImageRecord:
        return await asyncio.to_thread(self.folder.move, image_id, target.folder)

    def held_count(self) -> int:
        return self.folder.held.count()

    def rejected(self) -> int:
        return self.folder.images.rejected()

    async def hold(self, image: bytes, metadata: dict[str, Any], *, image_id: str | None = None) -> ImageRecord:
        return await asyncio.to_thread(partial(self.folder.held.hold, image, metadata, image_id=image_id))

    async def held(self, n: int) -> list[ImageRecord]:
        return await asyncio.to_thread(self.folder.held.newest, n)

    async def read_held(self, image_id: str) -> bytes:
        return await asyncio.to_thread(self.folder.held.read, image_id)

    async def delete_held(self, image_id: str) -> bool:
        return await asyncio.to_thread(self.folder.held.delete, image_id)

    async def approve(self, image_id: str) -> ImageRecord:
        return await asyncio.to_thread(self.folder.held.approve, image_id)

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
                await asyncio.to_thread(self.folder.held.recount)
                failing = False
            except OSError as exc:  # the last count stands until the folder can be listed again
                if not failing:
                    log.error("the images held back in the %s bucket cannot be counted: %s", self.name, exc)
                failing = True
            await asyncio.sleep(self.recount_every)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_every)
            released = await asyncio.to_thread(self.folder.claims.release_stale, self.sweep_every)
            if released:
                log.warning("put back %d %s avatar(s) claimed but never sent (a process died)", released, self.name)


def folder_buckets(settings: Settings) -> dict[str, FolderBucket]:
    """The two bucket folders of the configuration (see `avatargen.storage.files.bucket.open_buckets`)."""
    return {name: FolderBucket(bucket) for name, bucket in open_buckets(settings).items()}
