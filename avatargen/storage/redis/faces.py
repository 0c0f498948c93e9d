"""The visitors' faces (`avatargen.storage.face_memo`) in Redis, shared by every replica."""

from __future__ import annotations

from avatargen.storage.models import Face
from avatargen.storage.redis.connection import RedisStorage


class RedisFaces:
    """The faces in Redis, one hash per visitor that expires with its window: shared by every replica, and
    a unique's variants gone from Redis the moment the window ends."""

    def __init__(self, storage: RedisStorage) -> None:
        self.storage = storage

    async def get(self, visitor: str, now: float) -> Face | None:
        async with self.storage.guard("read a visitor's face"):
            fields: dict[bytes, bytes] = await self.storage.client.hgetall(  # type: ignore[misc,assignment]
                self.storage.key("face", visitor))
        if not fields or float(fields[b"until"]) <= now:
            return None
        return Face(fields[b"kind"].decode(), fields[b"id"].decode(), float(fields[b"until"]),
                    fields.get(b"variants") or None)

    async def put(self, visitor: str, face: Face, now: float) -> None:
        key = self.storage.key("face", visitor)
        record: dict[str | bytes | bytearray | memoryview | int | float, bytes | bytearray | memoryview | str
                     | int | float] = {"kind": face.kind, "id": face.id, "until": repr(face.until),
                                       "variants": face.variants or b""}
        async with self.storage.guard("remember a visitor's face"), \
                self.storage.client.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.hset(key, mapping=record)
            pipe.pexpireat(key, int(face.until * 1000) + 1)
            await pipe.execute()

    async def aclose(self) -> None:
        """Nothing to close: the client belongs to the process's storage."""
