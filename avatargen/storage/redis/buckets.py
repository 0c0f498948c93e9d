"""A bucket that lives in Redis, shared by every replica: image bytes, framed copies and metadata.

Keys, under `<prefix>:bucket:<name>:`: `ids` (a sorted set: id -> creation time, for newest-first and
random picks), `images`, `framed` and `meta` (hashes by id: the WebP bytes, the copy a unique's claimer
receives, the sidecar JSON), `kept` (the set of ids the owner keeps for good), `held_ids`, `held_images`
and `held_meta` (the images the safety gate held back, out of the bucket until the owner approves them)
and `version` (bumped by every change). Each change is one script, so an image is visible whole, with
its metadata, or not at all, nothing is ever half-deleted, and an image the owner moves or approves is
in one place at every moment. Nothing is set aside as broken here: what is stored was checked on its
way in, and Redis does not rot a value the way a disk can a file.

Counting and picking a random fallback happen on every visit: they read an in-memory copy of the ids,
which `follow` refreshes (a version check per period; the id list only when it changed, or when an id was
dropped from it). The copy is also what keeps fallbacks coming from the visitor's local cache while Redis
is down; a failed read never drops an id from it, and while the last look failed the count is marked
unknown (`unknown`), so no run is started on it. A fallback served from a replica's memory is checked
first (`servable`) against a look at Redis begun after the visitor came: deleted is gone everywhere.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast

from avatargen.storage.errors import ImageNotFound, StorageUnavailable
from avatargen.storage.index import IdIndex
from avatargen.storage.models import ImageRecord, check_id, stamped
from avatargen.storage.redis.connection import FENCING, Outage, RedisStorage
from avatargen.storage.redis.fresh_look import FreshLook
from avatargen.timestamps import utc_iso

# Takes one random image out of a bucket for good and returns {id, what the claimer gets, metadata, then the
# image, framed copy and score to put it back with}, or nil when it is empty; used inside the allowance's
# script, which decides whether a visitor may claim.
TAKE_ONE = """
local function take_one(ids, images, framed, meta, version)
  local id = redis.call('ZRANDMEMBER', ids)
  if not id then return nil end
  local image = redis.call('HGET', images, id) or ''
  local copy = redis.call('HGET', framed, id) or ''
  local sidecar = redis.call('HGET', meta, id) or '{}'
  local score = redis.call('ZSCORE', ids, id)
  redis.call('ZREM', ids, id)
  redis.call('HDEL', images, id)
  redis.call('HDEL', framed, id)
  redis.call('HDEL', meta, id)
  redis.call('INCR', version)
  return {id, copy ~= '' and copy or image, sidecar, image, copy, score}
end
"""

# Stores one image under the given id, its framed copy only when there is one (the inverse of take_one).
PUT = """
local function put(ids, images, framed, meta, version, id, score, image, copy, sidecar)
  redis.call('HSET', images, id, image)
  if copy ~= '' then redis.call('HSET', framed, id, copy) end
  redis.call('HSET', meta, id, sidecar)
  redis.call('ZADD', ids, score, id)
  return redis.call('INCR', version)
end
"""

# KEYS: ids images framed meta version fence; ARGV: id score image framed meta token
_PUBLISH = FENCING + PUT + """
local refused = fenced(KEYS[6], ARGV[6])
if refused then return refused end
return put(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
"""

# Removes one image with its framed copy, metadata and keep mark (the inverse of put); 1 if it was there.
REMOVE = """
local function remove(ids, images, framed, meta, version, kept, id)
  local removed = redis.call('ZREM', ids, id)
  redis.call('HDEL', images, id)
  redis.call('HDEL', framed, id)
  redis.call('HDEL', meta, id)
  redis.call('SREM', kept, id)
  if removed == 1 then redis.call('INCR', version) end
  return removed
end
"""

# KEYS: ids images framed meta version kept; ARGV: id, '1' to spare an image the owner keeps (retirement)
_DELETE = REMOVE + """
if ARGV[2] == '1' and redis.call('SISMEMBER', KEYS[6], ARGV[1]) == 1 then return 0 end
return remove(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], ARGV[1])
"""

# KEYS: ids meta kept version; ARGV: id, '1' to keep or '0' not to. {score, sidecar}, nil when not in the bucket.
_KEEP = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score then
  redis.call('SREM', KEYS[3], ARGV[1])
  return nil
end
if ARGV[2] == '1' then redis.call('SADD', KEYS[3], ARGV[1]) else redis.call('SREM', KEYS[3], ARGV[1]) end
redis.call('INCR', KEYS[4])
return {score, redis.call('HGET', KEYS[2], ARGV[1]) or '{}'}
"""

# KEYS: the source's ids images framed meta version kept, then the target's ids images framed meta version;
# ARGV: id, the target's framed copy ('' for none), the sidecar it gets. The score, nil when not in the source.
_MOVE = PUT + REMOVE + """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score then return nil end
local image = redis.call('HGET', KEYS[2], ARGV[1])
remove(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], ARGV[1])
put(KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11], ARGV[1], score, image, ARGV[2], ARGV[3])
return score
"""

# KEYS: held_ids held_images held_meta version fence; ARGV: id score image sidecar token
_HOLD = FENCING + """
local refused = fenced(KEYS[5], ARGV[5])
if refused then return refused end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return redis.call('INCR', KEYS[4])
"""

# KEYS: held_ids held_images held_meta version; ARGV: id. 1 if it was held.
_DELETE_HELD = """
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
if removed == 1 then redis.call('INCR', KEYS[4]) end
return removed
"""

# KEYS: held_ids held_images held_meta ids images framed meta version; ARGV: id framed sidecar.
# The held image published under its id with its new sidecar; the score, nil when none is held.
_APPROVE = PUT + """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score then return nil end
local image = redis.call('HGET', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
put(KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], ARGV[1], score, image, ARGV[2], ARGV[3])
return score
"""

# KEYS: ids version kept held_ids; ARGV: the version already known. The ids, the kept ids and how many are
# held, only when something changed since.
_SNAPSHOT = """
local version = redis.call('GET', KEYS[2]) or '0'
if version == ARGV[1] then return {version} end
return {version, redis.call('ZRANGE', KEYS[1], 0, -1), redis.call('SMEMBERS', KEYS[3]), redis.call('ZCARD', KEYS[4])}
"""

# KEYS: ids meta; ARGV: n. The n newest ids with their creation times and sidecars, newest first.
_NEWEST = """
local newest = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1, 'REV', 'WITHSCORES')
local out = {}
for i = 1, #newest, 2 do
  out[#out + 1] = {newest[i], newest[i + 1], redis.call('HGET', KEYS[2], newest[i]) or '{}'}
end
return out
"""


class RedisBucket:
    """One bucket in Redis, with the same operations as the folder-backed `avatargen.storage.files.bucket.Bucket`.

    `count`, `ids` and `random_id` answer from memory (see `follow`); every other operation is a
    coroutine that raises StorageUnavailable when Redis does not answer in time.
    """

    def __init__(self, storage: RedisStorage, name: str, *, prepare: Callable[[bytes], bytes] | None = None,
                 refresh_every: float = 1.0) -> None:
        self.storage = storage
        self.name = name
        self.prepare = prepare
        self.refresh_every = refresh_every
        self._keys = [storage.key("bucket", name, part) for part in ("ids", "images", "framed", "meta", "version")]
        self._kept_key = storage.key("bucket", name, "kept")
        self._held_keys = [storage.key("bucket", name, part) for part in ("held_ids", "held_images", "held_meta")]
        self._publish = storage.script(_PUBLISH)
        self._delete = storage.script(_DELETE)
        self._snapshot = storage.script(_SNAPSHOT)
        self._newest = storage.script(_NEWEST)
        self._keep = storage.script(_KEEP)
        self._move = storage.script(_MOVE)
        self._hold = storage.script(_HOLD)
        self._delete_held = storage.script(_DELETE_HELD)
        self._approve = storage.script(_APPROVE)
        self._index = IdIndex([])
        self._kept: set[str] = set()
        self._held_count = 0
        self._version = ""
        self._unknown: str | None = f"the {name} bucket was not read from Redis yet"
        self._look = FreshLook(self.refresh)

    def __repr__(self) -> str:
        return f"RedisBucket({self.name!r}, {self.storage!r})"

    @property
    def keys(self) -> list[str]:
        """ids, images, framed, meta, version: the KEYS of a script that takes an image out (TAKE_ONE)."""
        return list(self._keys)

    # --- the in-memory copy of the ids -----------------------------------------------------------

    def count(self) -> int:
        """How many images the bucket held at the last refresh (no I/O)."""
        return len(self._index)

    def ids(self) -> list[str]:
        return list(self._index)

    def random_id(self) -> str | None:
        return self._index.choice()

    def forget(self, image_id: str) -> None:
        """Drop an id found gone (taken by another replica) until the next refresh, which reads the whole
        list again whatever its version: an id dropped by mistake comes back then, never stays out."""
        self._index.discard(image_id)
        self._version = ""

    async def servable(self, image_id: str) -> bool:
        """Whether the image is in the bucket now, as every replica sees it: the list is brought up to date by
        a look at Redis begun after this call (shared by the visitors who ask meanwhile: one round trip for
        a batch), so an image deleted by any replica before this call is never served from memory.
        StorageUnavailable when Redis does not answer."""
        await self._look()
        return image_id in self._index

    def unknown(self) -> str | None:
        """Why `count` cannot be trusted now (the last look at Redis failed, or none succeeded yet); None when
        it is as of the last refresh. No run is started on a level that is unknown."""
        return self._unknown

    def is_kept(self, image_id: str) -> bool:
        """Whether the owner keeps this image, as of the last refresh (no I/O: asked on the visitor path;
        retiring checks again inside Redis)."""
        return image_id in self._kept

    def held_count(self) -> int:
        """How many images the safety gate holds back, as of the last refresh."""
        return self._held_count

    def rejected(self) -> int:
        """Nothing is ever set aside as broken in Redis (see the module's docstring)."""
        return 0

    async def refresh(self) -> bool:
        """Bring the in-memory ids up to date: one version check, the id list only when it changed."""
        try:
            async with self.storage.guard(f"list the {self.name} bucket"):
                reply = await self._snapshot(keys=[self._keys[0], self._keys[4], self._kept_key, self._held_keys[0]],
                                             args=[self._version])
        except StorageUnavailable as exc:
            self._unknown = str(exc)
            raise
        self._unknown = None
        version = reply[0].decode()
        if len(reply) == 1:
            return False
        self._index = IdIndex([image_id.decode() for image_id in reply[1]])
        self._kept = {image_id.decode() for image_id in reply[2]}
        self._held_count = int(reply[3])
        self._version = version
        return True

    async def follow(self) -> None:
        """Refresh every `refresh_every` seconds, for ever (a task of the server's lifespan). While Redis is
        unreachable the last copy stays (the levels the generator sees); visitors get the placeholder, since
        no image can be checked against Redis."""
        outage = Outage(f"visitors get the placeholder until the {self.name} bucket can be read again",
                        f"the {self.name} bucket's list is up to date")
        while True:
            try:
                await self.refresh()
            except StorageUnavailable as exc:
                outage.failed(exc)
            else:
                outage.ended()
            await asyncio.sleep(self.refresh_every)

    # --- reading ---------------------------------------------------------------------------------

    async def read(self, image_id: str) -> bytes:
        """The stored WebP bytes of an image; ImageNotFound if it is not (or no longer) in the bucket."""
        async with self.storage.guard(f"read an image of the {self.name} bucket"):
            data = await self.storage.client.hget(self._keys[1], check_id(image_id))
        if data is None:
            raise ImageNotFound(f"no image {image_id!r} in the {self.name} bucket")
        return cast(bytes, data)  # the client decodes nothing

    async def metadata(self, image_id: str) -> dict[str, Any]:
        async with self.storage.guard(f"read metadata of the {self.name} bucket"):
            data = await self.storage.client.hget(self._keys[3], check_id(image_id))
        if data is None:
            raise ImageNotFound(f"no metadata for image {image_id!r} in the {self.name} bucket")
        return json.loads(data)

    async def newest(self, n: int) -> list[ImageRecord]:
        """The `n` newest images, newest first."""
        return [self._record(raw_id.decode(), score, sidecar, kept=raw_id.decode() in self._kept)
                for raw_id, score, sidecar in await self._newest_of(self._keys[0], self._keys[3], n)]

    async def _newest_of(self, ids: str, meta: str, n: int) -> list[list[bytes]]:
        if n <= 0:
            return []
        async with self.storage.guard(f"list the {self.name} bucket"):
            return cast(list[list[bytes]], await self._newest(keys=[ids, meta], args=[n]))

    def _record(self, image_id: str, score: bytes | float, sidecar: bytes | str, *, kept: bool = False,
                held: bool = False) -> ImageRecord:
        metadata = json.loads(sidecar)
        created = metadata.get("created_at")
        created_at = (datetime.fromisoformat(created) if isinstance(created, str)
                      else datetime.fromtimestamp(float(score), UTC))
        return ImageRecord(image_id, self.name, None, metadata, created_at, kept=kept, held=held)

    # --- writing ---------------------------------------------------------------------------------

    async def publish(self, image: bytes, metadata: dict[str, Any], *, prepared: bytes | None = None,
                      image_id: str | None = None) -> ImageRecord:
        """Store a WebP image with its metadata (and its framed copy when the bucket frames), in one script;
        `image_id` keeps an image's id (a migration moves images without renaming them, and storing one
        twice leaves one).

        A generator that lost its lease meanwhile is refused (LeaseLost): see `RedisStorage.fence`.
        """
        image_id, metadata, created_at = stamped(self.name, image, metadata, image_id)
        sidecar = json.dumps(metadata, ensure_ascii=False)
        framed = b""
        if self.prepare is not None:
            framed = prepared if prepared is not None else await asyncio.to_thread(self.prepare, image)
        async with self.storage.guard(f"store an image in the {self.name} bucket"):
            await self._publish(keys=[*self._keys, self.storage.fence_key],
                                args=[image_id, created_at.timestamp(), image, framed, sidecar,
                                      self.storage.fence_token])
        self._index.add(image_id)
        return ImageRecord(image_id, self.name, None, metadata, created_at)

    async def framed(self, image_id: str) -> bytes | None:
        """The framed copy of an image, None when it has none."""
        async with self.storage.guard(f"read an image of the {self.name} bucket"):
            return cast(bytes | None, await self.storage.client.hget(self._keys[2], check_id(image_id)))

    async def delete(self, image_id: str) -> bool:
        """Remove an image with its framed copy, metadata and keep mark; False if it was not there."""
        return await self._remove(image_id, retiring=False)

    async def retire(self, image_id: str) -> bool:
        """Delete a served fallback unless the owner keeps it (checked in the same script); whether it went."""
        return await self._remove(image_id, retiring=True)

    async def _remove(self, image_id: str, *, retiring: bool) -> bool:
        async with self.storage.guard(f"delete an image of the {self.name} bucket"):
            removed = await self._delete(keys=[*self._keys, self._kept_key],
                                         args=[check_id(image_id), "1" if retiring else "0"])
        if removed:
            self._index.discard(image_id)
            self._kept.discard(image_id)
        return bool(removed)

    # --- the owner's word --------------------------------------------------------------------------

    async def keep(self, image_id: str, kept: bool = True) -> ImageRecord:
        """Keep an image for good (never retired), or undo that; ImageNotFound if it is not in the bucket."""
        async with self.storage.guard(f"keep an image of the {self.name} bucket"):
            reply = await self._keep(keys=[self._keys[0], self._keys[3], self._kept_key, self._keys[4]],
                                     args=[check_id(image_id), "1" if kept else "0"])
        if reply is None:
            self._kept.discard(image_id)
            raise ImageNotFound(f"no image {image_id!r} in the {self.name} bucket")
        (self._kept.add if kept else self._kept.discard)(image_id)
        return self._record(image_id, reply[0], reply[1], kept=kept)

    async def move(self, image_id: str, target: RedisBucket) -> ImageRecord:
        """Move an image into `target` under the same id, in one script: a visitor's claim takes it before
        or not at all (never both), and it is in one bucket at every moment. Framed for the target when the
        target frames; the keep mark stays behind. ImageNotFound if it is not in this bucket."""
        image, metadata = await self.read(image_id), await self.metadata(image_id)
        metadata = {**metadata, "moved_from": self.name}
        framed = await asyncio.to_thread(target.prepare, image) if target.prepare is not None else b""
        async with self.storage.guard(f"move an image of the {self.name} bucket"):
            score = await self._move(keys=[*self._keys, self._kept_key, *target.keys],
                                     args=[image_id, framed, json.dumps(metadata, ensure_ascii=False)])
        self._index.discard(image_id)
        self._kept.discard(image_id)
        if score is None:
            raise ImageNotFound(f"no image {image_id!r} in the {self.name} bucket")
        target._index.add(image_id)
        return target._record(image_id, score, json.dumps(metadata))

    # --- held back by the safety gate --------------------------------------------------------------

    async def hold(self, image: bytes, metadata: dict[str, Any], *, image_id: str | None = None) -> ImageRecord:
        """Store an image the safety gate held back, out of the bucket (never served, claimed or counted)
        until the owner approves it; `metadata` says why (`review`). Fenced like `publish`."""
        image_id, metadata, created_at = stamped(self.name, image, metadata, image_id)
        async with self.storage.guard(f"hold an image of the {self.name} bucket back"):
            await self._hold(keys=[*self._held_keys, self._keys[4], self.storage.fence_key],
                             args=[image_id, created_at.timestamp(), image, json.dumps(metadata, ensure_ascii=False),
                                   self.storage.fence_token])
        self._held_count += 1
        return ImageRecord(image_id, self.name, None, metadata, created_at, held=True)

    async def held(self, n: int) -> list[ImageRecord]:
        """The `n` newest images held back for review, newest first."""
        return [self._record(raw_id.decode(), score, sidecar, held=True)
                for raw_id, score, sidecar in await self._newest_of(self._held_keys[0], self._held_keys[2], n)]

    async def read_held(self, image_id: str) -> bytes:
        """The bytes of an image held back for review (for the owner's eyes only)."""
        async with self.storage.guard(f"read a held image of the {self.name} bucket"):
            data = await self.storage.client.hget(self._held_keys[1], check_id(image_id))
        if data is None:
            raise ImageNotFound(f"no image {image_id!r} held back in the {self.name} bucket")
        return cast(bytes, data)

    async def delete_held(self, image_id: str) -> bool:
        """Delete an image held back for review; False if none is held with that id."""
        async with self.storage.guard(f"delete a held image of the {self.name} bucket"):
            removed = await self._delete_held(keys=[*self._held_keys, self._keys[4]], args=[check_id(image_id)])
        if removed:
            self._held_count = max(0, self._held_count - 1)
        return bool(removed)

    async def approve(self, image_id: str) -> ImageRecord:
        """Publish an image the owner approved after the gate held it back (its sidecar noting the approval,
        framed when the bucket frames), in one script. ImageNotFound when none is held with that id."""
        image = await self.read_held(image_id)
        async with self.storage.guard(f"read a held image of the {self.name} bucket"):
            sidecar = await self.storage.client.hget(self._held_keys[2], image_id)
        metadata = json.loads(sidecar) if sidecar else {}
        metadata = metadata if isinstance(metadata, dict) else {}
        review = metadata.get("review")
        metadata["review"] = {**(review if isinstance(review, dict) else {}), "approved_at": utc_iso(datetime.now(UTC))}
        image_id, metadata, created_at = stamped(self.name, image, metadata, image_id)
        framed = await asyncio.to_thread(self.prepare, image) if self.prepare is not None else b""
        async with self.storage.guard(f"approve a held image of the {self.name} bucket"):
            score = await self._approve(keys=[*self._held_keys, *self._keys],
                                        args=[image_id, framed, json.dumps(metadata, ensure_ascii=False)])
        if score is None:
            raise ImageNotFound(f"no image {image_id!r} held back in the {self.name} bucket")
        self._held_count = max(0, self._held_count - 1)
        self._index.add(image_id)
        return ImageRecord(image_id, self.name, None, metadata, created_at)

