"""A bucket that lives in Redis, shared by every replica: image bytes, framed copies and metadata.

Keys, under `<prefix>:bucket:<name>:`: `ids` (a sorted set: id -> creation time, for newest-first and
random picks), `images`, `framed` and `meta` (hashes by id: the WebP bytes, the copy a unique's claimer
receives, the sidecar JSON) and `version` (bumped by every change). Each change is one script, so an
image is visible whole, with its metadata, or not at all, and nothing is ever half-deleted.

Counting and picking a random fallback happen on every visit: they read an in-memory copy of the ids,
which `follow` refreshes (a version check per period; the id list only when it changed). The copy is
also what keeps fallbacks coming from the visitor's local cache while Redis is down.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast

from avatargen.buckets import ImageNotFound, ImageRecord, _Index, check_id, stamped
from avatargen.storage.redis_connection import FENCING, Outage, RedisStorage, StorageUnavailable

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

# KEYS: ids images framed meta version; ARGV: id
_DELETE = """
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
if removed == 1 then redis.call('INCR', KEYS[5]) end
return removed
"""

# KEYS: ids version; ARGV: the version already known. The ids only when they changed since.
_SNAPSHOT = """
local version = redis.call('GET', KEYS[2]) or '0'
if version == ARGV[1] then return {version} end
return {version, redis.call('ZRANGE', KEYS[1], 0, -1)}
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
    """One bucket in Redis, with the same operations as the folder-backed `avatargen.buckets.Bucket`.

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
        self._publish = storage.script(_PUBLISH)
        self._delete = storage.script(_DELETE)
        self._snapshot = storage.script(_SNAPSHOT)
        self._newest = storage.script(_NEWEST)
        self._index = _Index([])
        self._version = ""

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
        """Drop an id found gone (taken by another replica) until the next refresh."""
        self._index.discard(image_id)

    async def refresh(self) -> bool:
        """Bring the in-memory ids up to date: one version check, the id list only when it changed."""
        async with self.storage.guard(f"list the {self.name} bucket"):
            reply = await self._snapshot(keys=[self._keys[0], self._keys[4]], args=[self._version])
        version = reply[0].decode()
        if len(reply) == 1:
            return False
        self._index = _Index([image_id.decode() for image_id in reply[1]])
        self._version = version
        return True

    async def follow(self) -> None:
        """Refresh every `refresh_every` seconds, for ever (a task of the server's lifespan). While Redis is
        unreachable the last copy stays: fallbacks keep coming from the visitor's cache."""
        outage = Outage(f"visitors get fallbacks from the last known list of the {self.name} bucket",
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
        if n <= 0:
            return []
        async with self.storage.guard(f"list the {self.name} bucket"):
            rows = await self._newest(keys=[self._keys[0], self._keys[3]], args=[n])
        records = []
        for raw_id, score, sidecar in rows:
            metadata = json.loads(sidecar)
            created = metadata.get("created_at")
            created_at = (datetime.fromisoformat(created) if isinstance(created, str)
                          else datetime.fromtimestamp(float(score), UTC))
            records.append(ImageRecord(raw_id.decode(), self.name, None, metadata, created_at))
        return records

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
        """Remove an image with its framed copy and metadata; False if it was not there."""
        async with self.storage.guard(f"delete an image of the {self.name} bucket"):
            removed = await self._delete(keys=self._keys, args=[check_id(image_id)])
        self._index.discard(image_id)
        return bool(removed)

