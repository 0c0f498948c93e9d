"""`avatargen migrate --to redis` (and `--to files`): the buckets and the cost ledger moved between the
folders and Redis, without losing or duplicating an image.

Each image is copied under its own id (with the owner's keep mark), then removed from where it came
from; so are the images the safety gate holds back for review. Copying twice leaves one copy (the id is
the key), so a migration that stops half-way (Ctrl-C, Redis gone) is finished by running it again: an
image is always in the source, in the target, or, for that moment, in both, and the next run moves it
once more. It refuses to start while any `avatargen serve` uses either side, and no server starts while it runs: it
holds the data folder alone (`avatargen.storage.files.lock.DataFolderLock`, which every server shares while it runs)
and the generator lease in Redis (which one replica always holds). A unique that a server the lock
cannot see (a replica on another machine) claims while it is being copied is served once from there, and
its copy is deleted again. Ledger entries are copied (by run id: again harmless); the unique allowance
(the global tokens, the retire slot and every visitor inside the per-visitor window) is carried too, so
nobody gets a second unique by the switch. `--to files` then deletes the ledger, the allowance and the
visitors' keys from Redis; `--to redis` leaves the SQLite files in data_dir, which are not read again
while the backend is Redis.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

from avatargen.config import Settings
from avatargen.storage.backend import VISITORS_FILE, FolderBackend, RedisBackend
from avatargen.storage.errors import BadImage, ImageNotFound, StorageUnavailable
from avatargen.storage.files.allowance import Allowance
from avatargen.storage.files.lock import DataFolderInUse, DataFolderLock
from avatargen.storage.redis.allowance import RedisAllowance
from avatargen.storage.redis.lease import RedisLease
from avatargen.storage.redis.ledger import RedisLedger

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
    visitors: int = 0  # visitors inside their unique window, carried with the allowance


async def migrate(settings: Settings, to: Direction, *, say: Callable[[str], None] = print) -> Moved:
    """Move both buckets (and copy the ledger) to `to`; `[storage] url` names the Redis either way."""
    if not settings.storage.url:
        raise MigrationRefused('[storage] url must name the Redis to migrate to or from (redis://host:port/db)')
    folders = FolderBackend(settings)
    # A batch job, not a visitor: it waits for a busy Redis rather than stopping half-way.
    patient = replace(settings.storage, backend="redis", timeout=max(settings.storage.timeout, PATIENCE))
    redis = RedisBackend(replace(settings, storage=patient))
    lock = DataFolderLock(settings.server.data_dir)
    try:
        try:
            lock.take_alone()
        except DataFolderInUse as exc:
            raise MigrationRefused(str(exc)) from None
        lease = RedisLease(redis.client)
        try:
            held = await lease.acquire()
        except StorageUnavailable as exc:
            raise MigrationRefused(str(exc)) from None
        if not held:
            raise MigrationRefused(f"an avatargen server uses the Redis ({await lease.holder()}): stop every "
                                   "avatargen serve first (a replica killed a moment ago holds it for 10 s more)")
        try:
            return await _move(settings, folders, redis, to, say)
        except StorageUnavailable as exc:
            raise MigrationRefused(f"{exc}; nothing was lost: run the migration again once Redis answers") from None
        finally:
            await lease.release()
    finally:
        lock.release()
        await redis.aclose()


async def _move(settings: Settings, folders: FolderBackend, redis: RedisBackend, to: Direction,
                say: Callable[[str], None]) -> Moved:
    moved, held, set_aside = {}, {}, 0
    for name, folder in folders.folders.items():
        await asyncio.to_thread(folder.folder.repair.recover, stale_after=0)  # no server runs: every claim is stale
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
            if not await origin.delete(image_id):
                # Claimed (or deleted) meanwhile by a server the lock could not see (a replica on another
                # machine): it was served from there, so the copy must not be served again after the switch.
                await destination.delete(image_id)
                continue
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
    visitors = await _carry_allowance(settings, redis, to)
    say(f"unique allowance: the tokens and {visitors} visitor(s) inside their window carried to "
        f"{'Redis' if to == 'redis' else settings.server.data_dir / VISITORS_FILE}")
    if to == "files":  # nothing of the site's state stays behind in Redis to be read again later
        await RedisLedger(redis.client).drop()
        say("Redis: the ledger, the allowance and the visitors' keys deleted (carried to the folders)")
    return Moved(moved, held, set_aside, len(entries), visitors)


async def _carry_allowance(settings: Settings, redis: RedisBackend, to: Direction) -> int:
    """The global tokens, the retire slot and each visitor inside its window, carried to `to` (someone who got
    today's unique does not get another after the switch); how many visitors. `--to files` then deletes them
    from Redis."""
    shared = RedisAllowance(redis.client, settings.serving, redis.shared["unique"])
    local = await asyncio.to_thread(Allowance, settings.server.data_dir / VISITORS_FILE, settings.serving)
    try:
        if to == "redis":
            state = await asyncio.to_thread(local.state)
            await shared.adopt(state)
            return len(state.visitors)
        carried = await shared.state()
        if carried is not None:
            await asyncio.to_thread(local.adopt, carried)
        await shared.drop()
        return 0 if carried is None else len(carried.visitors)
    finally:
        await asyncio.to_thread(local.close)
