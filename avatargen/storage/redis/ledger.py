"""The cost ledger in Redis: billed machine time per run, shared by every replica.

The same entries as the SQLite ledger (`avatargen.storage.files.ledger`): a run's entry is written when billing starts
and again when the stop is confirmed; whichever replica holds the generator lease writes, and every
replica reads today's and this month's spend from it. Keys, under `<prefix>:ledger:`: `entries` (a hash
by run id of `[run_id, started, stopped or null, hourly_cost, images]`; an entry written before images
were counted lacks the last, and counts 0), `ends` (a sorted set by run id of the stop time,
+inf while open, so the entries of a period are one range) and `born` (a marker written with the
ledger: when it is gone, Redis lost its data, and the generator writes again what it holds in memory).

Writes carry the generator lease's fencing token: a replica that lost the lease cannot bill any more.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable
from typing import Any

from avatargen.storage.redis.connection import FENCING, RedisStorage
from avatargen.storage.spend import Entry, Spend, month_start

# KEYS: entries ends fence; ARGV: token, then run_id entry-json end (x n)
_RECORD = FENCING + """
local refused = fenced(KEYS[3], ARGV[1])
if refused then return refused end
for i = 2, #ARGV, 3 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('ZADD', KEYS[2], ARGV[i + 2], ARGV[i])
end
return 1
"""

# KEYS: entries ends; ARGV: since. The entries still open or stopped after `since`.
_ENTRIES = """
local ids = redis.call('ZRANGE', KEYS[2], '(' .. ARGV[1], '+inf', 'BYSCORE')
if #ids == 0 then return {} end
return redis.call('HMGET', KEYS[1], unpack(ids))
"""

# KEYS: born; ARGV: the marker this replica knows, a new one. nil when it is still there; else why not (a
# missing marker is replaced by the new one, so that every other replica notices too).
_LOST = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then return false end
if current then return 'replaced by another ledger' end
redis.call('SET', KEYS[1], ARGV[2])
return 'deleted'
"""


class RedisLedger:
    """The ledger in Redis, with the operations of `avatargen.storage.files.ledger.CostLedger` as coroutines."""

    def __init__(self, storage: RedisStorage) -> None:
        self.storage = storage
        self.location = f"{storage.where} {storage.key('ledger')}"  # for the owner's messages
        self._keys = [storage.key("ledger", part) for part in ("entries", "ends", "born")]
        self._record = storage.script(_RECORD)
        self._entries = storage.script(_ENTRIES)
        self._lost = storage.script(_LOST)
        self._born: str | None = None  # the marker of the ledger adopted by `open`

    def __str__(self) -> str:
        return self.location

    async def drop(self) -> None:
        """Delete the ledger from Redis (a migration carried it to the folders' SQLite ledger)."""
        async with self.storage.guard("delete the cost ledger"):
            await self.storage.client.delete(*self._keys)

    async def open(self) -> None:
        """Adopt the ledger in Redis (marking a new one as born now), so that losing it is noticed."""
        marker = secrets.token_hex(8)
        async with self.storage.guard("open the cost ledger"):
            await self.storage.client.set(self._keys[2], marker, nx=True)
            current = await self.storage.client.get(self._keys[2])
        self._born = current.decode() if isinstance(current, bytes) else marker

    async def reopen_if_lost(self) -> str | None:
        """Why the ledger in Redis is no longer the one opened ("deleted": Redis lost its data), or None.

        A ledger not opened yet (Redis was down at start-up) is opened now: nothing was lost."""
        if self._born is None:
            await self.open()
            return None
        new = secrets.token_hex(8)
        async with self.storage.guard("check the cost ledger"):
            lost = await self._lost(keys=[self._keys[2]], args=[self._born, new])
        if lost is None:
            return None
        if lost == b"deleted":
            self._born = new
        else:
            await self.open()  # another replica noticed first and marked it: that one is the ledger now
        return lost.decode()

    async def is_empty(self) -> bool:
        async with self.storage.guard("read the cost ledger"):
            return not await self.storage.client.exists(self._keys[0])

    async def entries(self, since: float) -> list[Entry]:
        """The entries still open or stopped after `since`."""
        async with self.storage.guard("read the cost ledger"):
            rows: list[Any] = await self._entries(keys=self._keys[:2], args=[repr(since)])
        entries = []
        for row in rows:
            if row is not None:  # an id without its entry is impossible (one script writes both); skip it
                entries.append(Entry(*json.loads(row)))
        return entries

    async def record(self, entries: Iterable[Entry]) -> None:
        """Write entries as they are now, in one script; refused (LeaseLost) once another replica holds the
        generator lease."""
        args: list[str] = [self.storage.fence_token]
        for entry in entries:
            end = "+inf" if entry.stopped is None else repr(entry.stopped)
            fields = [entry.run_id, entry.started, entry.stopped, entry.hourly_cost, entry.images]
            args += [entry.run_id, json.dumps(fields), end]
        if len(args) == 1:
            return
        async with self.storage.guard("write the cost ledger"):
            await self._record(keys=[*self._keys[:2], self.storage.fence_key], args=args)

    async def spend(self, now: float | None = None) -> Spend:
        """Today's and this month's billed time and cost, open entries counted up to now."""
        now = time.time() if now is None else now
        return Spend.of(await self.entries(month_start(now)), now)

    async def aclose(self) -> None:
        """Nothing to close: the client belongs to the process's storage."""
