"""`avatargen migrate --to redis` (and `--to files`): the buckets and the cost ledger moved between the
folders and Redis, without losing or duplicating an image.

Each image is copied under its own id (with the owner's keep mark), then removed from where it came
from; so are the images the safety gate holds back for review. Copying twice leaves one copy (the id is
the key), so a migration that stops half-way (Ctrl-C, Redis gone) is finished by running it again: an
image is always in the source, in the target, or, for that moment, in both, and the next run moves it
once more. It refuses to start while any `avatargen serve` uses either side: it takes the
generator's seat of both (the lock file of data_dir, the lease in Redis), which one server always holds.
Ledger entries are copied (by run id: again harmless) and left in place, so the budget keeps its history.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

from avatargen.buckets import BadImage, ImageNotFound
from avatargen.config import Settings
from avatargen.lock import GeneratorLock
from avatargen.storage.backend import FolderBackend, RedisBackend
from avatargen.storage.redis_connection import StorageUnavailable
from avatargen.storage.redis_lease import GeneratorLease

log = logging.getLogger("avatargen.storage")

Direction = Literal["redis", "files"]
PATIENCE = 10.0  # seconds a Redis call of the migration may take


class MigrationRefused(Exception):
    """The migration cannot start or go on; the message says why and what to do."""


@dataclass
class Moved:
    images: dict[str, int]
    held: dict[str, int]
    set_aside: int
    ledger_entries: int


async def migrate(settings: Settings, to: Direction, *, say: Callable[[str], None] = print) -> Moved:
    """Move both buckets (and copy the ledger) to `to`; `[storage] url` names the Redis either way."""
    if not settings.storage.url:
        raise MigrationRefused('[storage] url must name the Redis to migrate to or from (redis://host:port/db)')
    folders = FolderBackend(settings)
    # A batch job, not a visitor: it waits for a busy Redis rather than stopping half-way.
    patient = replace(settings.storage, backend="redis", timeout=max(settings.storage.timeout, PATIENCE))
    redis = RedisBackend(replace(settings, storage=patient))
    lock = GeneratorLock(settings.server.data_dir)
    try:
        if not lock.acquire():
            raise MigrationRefused(f"an avatargen server uses {settings.server.data_dir} (pid {lock.holder()}): "
                                   "stop every avatargen serve first")
        lease = GeneratorLease(redis.client)
        try:
            held = await lease.acquire()
        except StorageUnavailable as exc:
            raise MigrationRefused(str(exc)) from None
        if not held:
            raise MigrationRefused(f"an avatargen server uses the Redis ({await lease.holder()}): stop every "
                                   "avatargen serve first (a replica killed a moment ago holds it for 10 s more)")
        try:
            return await _move(folders, redis, to, say)
        except StorageUnavailable as exc:
            raise MigrationRefused(f"{exc}; nothing was lost: run the migration again once Redis answers") from None
        finally:
            await lease.release()
    finally:
        lock.release()
        await redis.aclose()


async def _move(folders: FolderBackend, redis: RedisBackend, to: Direction, say: Callable[[str], None]) -> Moved:
    moved, held, set_aside = {}, {}, 0
    for name, folder in folders.folders.items():
        await asyncio.to_thread(folder.folder.recover, stale_after=0)  # no server runs: every claim is stale
        shared = redis.shared[name]
        await shared.refresh()
        origin, destination = (folder, shared) if to == "redis" else (shared, folder)
        count = 0
        for image_id in sorted(origin.ids()):
            try:
                image, metadata = await origin.read(image_id), await origin.metadata(image_id)
            except BadImage:
                set_aside += 1  # broken: kept in the folder's .rejected/ for the owner, not moved
                continue
            except ImageNotFound:
                continue
            framed = await origin.framed(image_id)
            await destination.publish(image, metadata, prepared=framed, image_id=image_id)
            if origin.is_kept(image_id):
                await destination.keep(image_id)
            await origin.delete(image_id)
            count += 1
        moved[name] = count
        waiting = await origin.held(origin.held_count())
        for record in waiting:
            await destination.hold(await origin.read_held(record.id), record.metadata, image_id=record.id)
            await origin.delete_held(record.id)
        held[name] = len(waiting)
        say(f"{name}: {count} image(s) moved to {'Redis' if to == 'redis' else folder.folder.directory}"
            + (f", with {len(waiting)} held for review" if waiting else ""))
    source, target = ((await folders.open_ledger(), await redis.open_ledger()) if to == "redis"
                      else (await redis.open_ledger(), await folders.open_ledger()))
    try:
        entries = await source.entries(0)
        await target.record(entries)
    finally:
        await source.aclose()
        await target.aclose()
    say(f"cost ledger: {len(entries)} run(s) copied to {target.location}")
    return Moved(moved, held, set_aside, len(entries))
