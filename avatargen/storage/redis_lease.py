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
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket

from avatargen.storage.redis_connection import LeaseLost, Outage, RedisStorage, StorageUnavailable

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
# KEYS: lease; ARGV: holder
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class GeneratorLease:
    """This replica's claim on the generator; `acquire`, then `keep` while the generator runs."""

    def __init__(self, storage: RedisStorage, *, ttl: float = DEFAULT_TTL) -> None:
        self.storage = storage
        self.ttl = ttl
        # Who holds it, for the owner ("web-2 pid 4242"), and a nonce: a restarted process is someone else.
        self.name = f"{socket.gethostname()} pid {os.getpid()} {secrets.token_hex(4)}"
        self.fence: int | None = None
        self._key = storage.key("lease")
        self._acquire = storage.script(_ACQUIRE)
        self._renew = storage.script(_RENEW)
        self._release = storage.script(_RELEASE)

    @property
    def _ttl_ms(self) -> int:
        return max(1, round(self.ttl * 1000))

    async def acquire(self) -> bool:
        """True when this replica now holds the lease (and a new fencing token); False when another does."""
        async with self.storage.guard("take the generator lease"):
            fence = int(await self._acquire(keys=[self._key, self.storage.fence_key], args=[self.name, self._ttl_ms]))
        if not fence:
            return False
        self.fence = self.storage.fence = fence
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

    async def holder(self) -> str | None:
        """Who holds the lease now (host, pid and nonce), or None when nobody does."""
        async with self.storage.guard("read the generator lease"):
            value: bytes | None = await self.storage.client.get(self._key)  # type: ignore[assignment]
        return value.decode() if value is not None else None

    async def keep(self) -> None:
        """Renew every third of the ttl; raise LeaseLost when another replica has it or it may have expired
        (Redis unreachable for a whole ttl). Never returns otherwise: cancel it to stop renewing."""
        loop = asyncio.get_running_loop()
        renewed_at = loop.time()
        while True:
            await asyncio.sleep(self.ttl / 3)
            sent_at = loop.time()
            try:  # patient: a busy event loop must not cost the lease (it is fenced anyway)
                async with self.storage.guard("renew the generator lease", timeout=self.ttl / 3):
                    renewed = await self._renew(keys=[self._key], args=[self.name, self._ttl_ms])
            except StorageUnavailable as exc:
                if loop.time() - renewed_at >= self.ttl:
                    raise LeaseLost(f"the generator lease could not be renewed for {self.ttl:g}s ({exc}); "
                                    "another replica may hold it now") from exc
                log.warning("could not renew the generator lease (%s); retrying", exc)
                continue
            if not renewed:
                raise LeaseLost(f"the generator lease was taken over by {await self._holder_or_unknown()}")
            renewed_at = sent_at

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
