"""The unique allowance in Redis: a global token bucket, one unique per visitor per window, the claim itself.

Deciding and claiming are one script: it checks the visitor's window and the tokens, takes a random
unique out of its bucket for good and only then spends the token and marks the visitor. Replicas can
never spend one token twice or hand one unique to two visitors, and a bucket found empty costs nothing.
The fallback retire slot (at most one served fallback deleted per `fallback_retire_every`) is a second
script on the same hash.

Times are the callers' wall clocks (as with the SQLite allowance, so tests can move them); the visitor's
key expires with its window, so Redis forgets visitors by itself.

Like `avatargen.storage.files.allowance.Allowance`, this process remembers what it can (`AllowanceMemo`) and only asks
Redis when a grant might succeed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from avatargen.config import ServingSettings
from avatargen.storage.allowance_memo import AllowanceMemo
from avatargen.storage.errors import StorageUnavailable
from avatargen.storage.models import AllowanceState, Claim
from avatargen.storage.redis.buckets import PUT, TAKE_ONE, RedisBucket
from avatargen.storage.redis.connection import RedisStorage

log = logging.getLogger("avatargen.storage")

# KEYS: allowance visitor ids images framed meta version; ARGV: now every burst window
_GRANT_AND_CLAIM = TAKE_ONE + """
local now, every, burst, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local function fmt(x) return string.format('%.17g', x) end
local tokens = tonumber(redis.call('HGET', KEYS[1], 'tokens'))
local tokens_at = tonumber(redis.call('HGET', KEYS[1], 'tokens_at'))
if tokens == nil then tokens, tokens_at = burst, now end  -- a fresh allowance starts full
if every <= 0 then tokens = burst else tokens = math.min(burst, tokens + math.max(0, now - tokens_at) / every) end
local granted_at = tonumber(redis.call('GET', KEYS[2]))
if granted_at and granted_at > now - window then return {'visited', fmt(tokens), fmt(granted_at)} end
if tokens < 1 then return {'no_token', fmt(tokens)} end
local taken = take_one(KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7])
if not taken then return {'empty', fmt(tokens)} end
tokens = tokens - 1
redis.call('HSET', KEYS[1], 'tokens', fmt(tokens), 'tokens_at', fmt(now))
if window > 0 then redis.call('SET', KEYS[2], fmt(now), 'PX', math.ceil(window * 1000)) end
return {'claimed', fmt(tokens), taken[1], taken[2], taken[3], taken[4], taken[5], taken[6]}
"""

# KEYS: allowance visitor ids images framed meta version; ARGV: id score image framed meta burst granted_at
# A claim nobody received (its answer came too late): the unique goes back, with the token and the visitor's
# chance, unless the visitor has been granted another since.
_UNDO_CLAIM = PUT + """
put(KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
local tokens = tonumber(redis.call('HGET', KEYS[1], 'tokens')) or 0
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', math.min(tonumber(ARGV[6]), tokens + 1)))
if redis.call('GET', KEYS[2]) == ARGV[7] then redis.call('DEL', KEYS[2]) end
return 1
"""

# KEYS: allowance; ARGV: now every. The first served fallback may be retired at once.
_RETIRE = """
local now, every = tonumber(ARGV[1]), tonumber(ARGV[2])
local due = tonumber(redis.call('HGET', KEYS[1], 'next_retire_at')) or now
if now < due then return {0, string.format('%.17g', due)} end
due = now + every
redis.call('HSET', KEYS[1], 'next_retire_at', string.format('%.17g', due))
return {1, string.format('%.17g', due)}
"""


class RedisAllowance:
    """Who may have a unique from `unique` now, shared by every replica through Redis."""

    def __init__(self, storage: RedisStorage, serving: ServingSettings, unique: RedisBucket, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.storage = storage
        self.unique = unique
        self.every = serving.unique_every
        self.burst = serving.unique_burst
        self.window = serving.unique_per_visitor
        self.retire_every = serving.fallback_retire_every
        self.clock = clock
        self._key = storage.key("allowance")
        self._grant_and_claim = storage.script(_GRANT_AND_CLAIM)
        self._retire = storage.script(_RETIRE)
        self._undo = storage.script(_UNDO_CLAIM)
        self._undoing: set[asyncio.Future[None]] = set()  # puts-back in flight, kept from the garbage collector
        self.memo = AllowanceMemo(every=self.every, burst=self.burst, window=self.window, clock=clock)

    async def state(self) -> AllowanceState | None:
        """The whole allowance in Redis (for a migration); None when it was never used (it starts full)."""
        async with self.storage.guard("read the unique allowance"):
            values: dict[bytes, bytes] = await self.storage.client.hgetall(self._key)  # type: ignore[assignment]
            names: list[bytes] = [name async for name in self.storage.client.scan_iter(match=self._visitor_key("*"))]
            granted = await self.storage.client.mget(names) if names else []
        if not values:
            return None
        fields = {name.decode(): float(value) for name, value in values.items()}
        now = self.clock()
        cut = len(self._visitor_key(""))
        visitors = {name.decode()[cut:]: float(at) for name, at in zip(names, granted, strict=True)
                    if at is not None and float(at) > now - self.window}
        return AllowanceState(fields.get("tokens", float(self.burst)), fields.get("tokens_at", now),
                              fields.get("next_retire_at", now), visitors)

    async def adopt(self, state: AllowanceState) -> None:
        """Take over an allowance carried from the folders: its tokens and retire slot, and each visitor still
        inside the window, whose key expires when the window it started does."""
        now = self.clock()
        async with self.storage.guard("write the unique allowance"), \
                self.storage.client.pipeline(transaction=True) as pipe:
            pipe.hset(self._key, mapping={"tokens": repr(state.tokens), "tokens_at": repr(state.tokens_at),
                                          "next_retire_at": repr(state.next_retire_at)})
            for visitor, granted_at in state.visitors.items():
                left_ms = math.ceil((granted_at + self.window - now) * 1000)
                if left_ms > 0:
                    pipe.set(self._visitor_key(visitor), repr(granted_at), px=left_ms)
            await pipe.execute()

    async def drop(self) -> int:
        """Delete the allowance and every visitor's key from Redis (carried to the folders); how many keys."""
        async with self.storage.guard("delete the unique allowance"):
            names = [self._key, *[name async for name in self.storage.client.scan_iter(match=self._visitor_key("*"))]]
            return int(await self.storage.client.delete(*names))

    def _visitor_key(self, visitor: str) -> str:
        return self.storage.key("visitor", visitor)

    def token_may_be_due(self) -> bool:
        return self.memo.token_may_be_due()

    def may_grant(self, visitor: str) -> bool:
        return self.memo.may_grant(visitor)

    async def claim(self, visitor: str) -> Claim | None:
        """A unique for this visitor, if the allowance grants one and one is left; else None.

        The unique is out of the bucket for good when this returns it (there is nothing to finish).
        """
        now = self.clock()
        keys = [self._key, self._visitor_key(visitor), *self.unique.keys]
        args: list[str | int] = [repr(now), repr(self.every), self.burst, repr(self.window)]
        claiming = asyncio.ensure_future(self._grant_and_claim(keys=keys, args=args))
        try:
            async with self.storage.guard("claim a unique"):
                reply = await asyncio.shield(claiming)
        except StorageUnavailable:
            # Sent, perhaps, and answered too late for this visitor: whatever it took goes back.
            claiming.add_done_callback(partial(self._undo_unseen, keys, repr(now)))
            raise
        outcome, tokens = reply[0].decode(), float(reply[1])
        self.memo.tokens_left(tokens, now)
        if outcome == "visited":
            self.memo.served(visitor, float(reply[2]))
            return None
        if outcome != "claimed":
            return None
        self.memo.served(visitor, now)
        image_id = reply[2].decode()
        self.unique.forget(image_id)
        return Claim(image_id, bytes(reply[3]), json.loads(reply[4]))

    def _undo_unseen(self, keys: list[str], granted_at: str, claiming: asyncio.Future[Any]) -> None:
        if claiming.cancelled() or claiming.exception() is not None:
            return  # it never happened, or Redis will not say: nothing to undo that can be known
        reply = claiming.result()
        if reply[0] == b"claimed":
            image_id, image, copy, score, sidecar = reply[2], reply[5], reply[6], reply[7], reply[4]
            args: list[bytes | str | int] = [image_id, score, image, copy, sidecar, self.burst, granted_at]
            self._undoing.add(asyncio.ensure_future(self._put_back(keys, args)))

    async def _put_back(self, keys: list[str], args: list[bytes | str | int]) -> None:
        try:
            async with self.storage.guard("put back a unique nobody received"):
                await self._undo(keys=keys, args=args)
        except StorageUnavailable as exc:
            log.error("unique %s was claimed but its answer came too late to serve it, and it cannot be put "
                      "back: %s; it is lost (never served twice)", args[0], exc)
        finally:
            self._undoing.discard(asyncio.current_task())  # type: ignore[arg-type]

    async def sent(self, claim: Claim) -> None:
        """Nothing left to do: the claim took the unique out of Redis for good."""

    def may_retire(self) -> bool:
        return self.memo.may_retire()

    async def retire(self) -> bool:
        """Take the fallback retire slot if it is due (across all replicas); True: retire this image."""
        async with self.storage.guard("take the fallback retire slot"):
            taken, due = await self._retire(keys=[self._key], args=[repr(self.clock()), repr(self.retire_every)])
        self.memo.retire_due_at(float(due))
        return bool(taken)

    async def aclose(self) -> None:
        """Wait for uniques claimed too late for their visitor to be put back (the client belongs to the
        process's storage: nothing else to close)."""
        while self._undoing:
            await asyncio.gather(*self._undoing, return_exceptions=True)
