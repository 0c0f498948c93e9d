"""Exactly one generator among replicas: a lease in Redis with a fencing token.

The lease is a key holding the holder's name that expires after `ttl` unless renewed; the holder renews
it every third of that. Taking it is `SET NX PX` and, in the same script, `INCR` of a fencing counter: the
holder's token. Generator writes carry the token (`RedisStorage.fence`) and Redis refuses them once a
newer one exists, so a holder that was paused past its lease (a stalled VM, a long GC) cannot publish or
bill after a replica took over, even before it notices.

The holder gives the lease up as lost, on its own clock, `ttl` after the last renewal it sent that was
answered: no later than Redis lets it expire. Replicas without the lease try to take it every third of
`ttl`, so one of them takes over within about `ttl` of a holder's death; it then starts the generator,
whose start-up stops a machine the dead holder left on.

The machine itself is fenced too: before every provider call that changes it (start, stop), the holder
`confirm`s the lease, a Redis-side compare of its name and fencing token that renews it in the same
script. The call is bounded well within `ttl` (`avatargen.gpu.api.CHANGE_TIMEOUT`), so no replica can take
the lease before the call has ended: a holder that stalled past its lease wakes up to a refused confirm
and never starts or stops the machine under the new holder's run.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket

from avatargen.storage.errors import LeaseLost, LeaseUnconfirmed, StorageUnavailable
from avatargen.storage.redis.connection import Outage, RedisStorage

log = logging.getLogger("avatargen.storage")

DEFAULT_TTL = 10.0

# KEYS: lease fence; ARGV: holder ttl_ms
_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return redis.call('INCR', KEYS[2]) end
return 0
"""
# KEYS: lease; ARGV: holder ttl_ms
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# KEYS: lease fence; ARGV: holder token ttl_ms
_CONFIRM = """
if redis.call('GET', KEYS[1]) == ARGV[1] and redis.call('GET', KEYS[2]) == ARGV[2] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 0
"""
# KEYS: lease; ARGV: holder
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisLease:
    """This replica's claim on the generator, as a `GeneratorLease`; `acquire`, then `keep` while the generator
    runs."""

    def __init__(self, storage: RedisStorage, *, ttl: float = DEFAULT_TTL) -> None:
        self.storage = storage
        self.ttl = ttl
        # Who holds it, for the owner ("web-2 pid 4242"), and a nonce: a restarted process is someone else.
        self.name = f"{socket.gethostname()} pid {os.getpid()} {secrets.token_hex(4)}"
        self.fence: int | None = None
        self._key = storage.key("lease")
        self._acquire = storage.script(_ACQUIRE)
        self._renew = storage.script(_RENEW)
        self._confirm = storage.script(_CONFIRM)
        # Until when (event loop clock) Redis keeps the lease at the latest: the last answered renewal's
        # send time + ttl. The monotonic clock counts time spent stopped, so a stalled process sees it passed.
        self._valid_until = 0.0
        self._release = storage.script(_RELEASE)

    @property
    def takeover(self) -> float:
        """At most how long after this holder dies another replica holds the lease: the lease outlives its last
        renewal by `ttl`, and a replica tries every third of it."""
        return self.ttl * 4 / 3

    @property
    def _ttl_ms(self) -> int:
        return max(1, round(self.ttl * 1000))

    async def acquire(self) -> bool:
        """True when this replica now holds the lease (and a new fencing token); False when another does."""
        sent_at = asyncio.get_running_loop().time()
        async with self.storage.guard("take the generator lease"):
            fence = int(await self._acquire(keys=[self._key, self.storage.fence_key], args=[self.name, self._ttl_ms]))
        if not fence:
            return False
        self.fence = self.storage.fence = fence
        self._valid_until = sent_at + self.ttl
        log.info("this replica (%s) holds the generator lease, fencing token %d", self.name, fence)
        return True

    async def wait_acquire(self) -> None:
        """Try every third of the ttl until the lease is ours (another replica's expired or was released)."""
        outage = Outage("no replica can take the generator lease until it answers",
                        "the generator lease can be taken")
        while True:
            try:
                if await self.acquire():
                    return
            except StorageUnavailable as exc:
                outage.failed(exc)
            else:
                outage.ended()
            await asyncio.sleep(self.ttl / 3)

    def held(self) -> bool:
        """Until the last answered renewal's send time + ttl, on the event loop's monotonic clock: a process
        SIGSTOPped past that sees it passed as soon as it runs again, before its renewal is refused."""
        return self.fence is not None and asyncio.get_running_loop().time() < self._valid_until

    async def holder(self) -> str | None:
        """Who holds the lease now (host, pid and nonce), or None when nobody does."""
        async with self.storage.guard("read the generator lease"):
            value: bytes | None = await self.storage.client.get(self._key)  # type: ignore[assignment]
        return value.decode() if value is not None else None

    def inherited(self) -> str | None:
        """Always None: a dead replica's lease expires like a released one, so a replica that finds it free
        cannot tell them apart. The replicas standing by (`wait_acquire`) are the ones that take over."""
        return None

    async def keep(self) -> None:
        """Renew every third of the ttl; raise LeaseLost when another replica has it or it may have expired
        (Redis unreachable for a whole ttl). Never returns otherwise: cancel it to stop renewing."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.ttl / 3)
            sent_at = loop.time()
            try:  # patient: a busy event loop must not cost the lease (it is fenced anyway)
                async with self.storage.guard("renew the generator lease", timeout=self.ttl / 3):
                    renewed = await self._renew(keys=[self._key], args=[self.name, self._ttl_ms])
            except StorageUnavailable as exc:
                if not self.held():
                    raise LeaseUnconfirmed(f"the generator lease could not be renewed for {self.ttl:g}s ({exc}); "
                                           "another replica may hold it once Redis answers") from exc
                log.warning("could not renew the generator lease (%s); retrying", exc)
                continue
            if not renewed:
                raise LeaseLost(f"the generator lease was taken over by {await self._holder_or_unknown()}")
            self._valid_until = sent_at + self.ttl

    async def confirm(self, duration: float) -> None:
        """Return only when this replica holds the lease for `duration` seconds more (renewed here, in Redis,
        if its fencing token is still the newest); raise LeaseLost otherwise. Awaited right before a call that
        changes the machine, `duration` being the longest that call may take.

        When Redis does not answer, the last renewal counts: Redis cannot have let the lease expire before
        then. An answer that comes too late (this process stalled after sending) confirms nothing.
        """
        if duration >= self.ttl:
            raise ValueError(f"a machine call of {duration:g}s cannot fit in the {self.ttl:g}s generator lease")
        loop = asyncio.get_running_loop()
        sent_at = loop.time()
        try:
            async with self.storage.guard("confirm the generator lease"):
                held = await self._confirm(keys=[self._key, self.storage.fence_key],
                                           args=[self.name, self.storage.fence_token, self._ttl_ms])
        except StorageUnavailable as exc:
            if loop.time() + duration < self._valid_until:
                log.warning("%s; the generator lease is still held for %.1fs on this process's clock",
                            exc, self._valid_until - loop.time())
                return
            raise LeaseUnconfirmed(f"the generator lease could not be confirmed ({exc}); another replica may hold "
                                   "it once Redis answers") from exc
        if not held:
            raise LeaseLost(f"the generator lease was taken over by {await self._holder_or_unknown()}")
        self._valid_until = sent_at + self.ttl
        if loop.time() + duration >= self._valid_until:
            raise LeaseLost("the generator lease was confirmed too late (this process stalled); "
                            "another replica may hold it by the time the machine call ends")

    async def _holder_or_unknown(self) -> str:
        try:
            return await self.holder() or "nobody"
        except StorageUnavailable:
            return "another replica"

    async def release(self) -> None:
        """Give the lease up now (a clean shutdown), so a standby replica takes over at once; if Redis cannot
        be reached, it expires by itself."""
        try:
            async with self.storage.guard("release the generator lease"):
                await self._release(keys=[self._key], args=[self.name])
        except StorageUnavailable as exc:
            log.warning("%s; the generator lease expires by itself within %gs", exc, self.ttl)
