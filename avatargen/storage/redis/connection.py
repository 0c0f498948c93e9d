"""One Redis connection pool per process, the key names, and the one exception callers handle.

Every operation runs under `guard`: a deadline of `[storage] timeout` for the whole call (connecting,
one retry on a fresh connection, the reply), after which a Redis that is down, slow, still loading its
data after a restart, refusing writes or out of memory raises `StorageUnavailable`. Visitors then get a
fallback and the generator pauses; no caller sees the client library's own exceptions.

Scripts (`script`) run atomically inside Redis: each of the storage modules does its check-then-write
in one, never as a read-modify-write from Python.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as rx
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript

from avatargen.config import StorageSettings
from avatargen.storage.errors import LeaseLost, StorageUnavailable

log = logging.getLogger("avatargen.storage")

# Error replies that mean "not now" rather than "wrong request": a background save failing (MISCONF), a
# script running too long (BUSY), no replica acknowledging a write (NOREPLICAS). The library maps
# LOADING, READONLY, OOM and TRYAGAIN to classes of their own, listed in _UNAVAILABLE.
_TRANSIENT_REPLIES = ("MISCONF", "BUSY", "NOREPLICAS", "MASTERDOWN", "CLUSTERDOWN")
_UNAVAILABLE = (rx.ConnectionError, rx.TimeoutError, rx.ReadOnlyError, rx.OutOfMemoryError, rx.TryAgainError)
# Connections per process: Redis runs one command at a time, so a burst of visitors queues for a few
# connections (within the timeout) rather than opening hundreds of them at once.
MAX_CONNECTIONS = 16
# A script refuses a write from a generator whose lease was taken over with this reply prefix.
FENCED = "FENCED"
# Lua for the scripts of generator writes: `local refused = fenced(KEYS[n], ARGV[m]); if refused then return
# refused end`, with the fencing counter's key and the writer's token ('' for a write outside the generator).
FENCING = f"""
local function fenced(fence_key, token)
  if token ~= '' and redis.call('GET', fence_key) ~= token then
    return redis.error_reply('{FENCED} the generator lease was taken over; token ' .. token .. ' is stale')
  end
end
"""


def _is_transient(exc: rx.RedisError) -> bool:
    if isinstance(exc, _UNAVAILABLE):
        return True
    return isinstance(exc, rx.ResponseError) and str(exc).split(" ", 1)[0] in _TRANSIENT_REPLIES


class RedisStorage:
    """The client of one process, its key prefix and deadline; shared by every Redis-backed piece.

    `fence` is the generator lease's fencing token while this process holds the lease (set by
    `RedisLease`); generator writes carry it, and Redis refuses them once a newer lease exists.
    """

    def __init__(self, client: aioredis.Redis, *, prefix: str, timeout: float, where: str) -> None:
        self.client = client
        self.prefix = prefix
        self.timeout = timeout
        self.where = where  # for messages: host, port and database, never the password
        self.fence: int | None = None
        self._blocking: aioredis.Redis | None = None

    @classmethod
    def connect(cls, settings: StorageSettings) -> RedisStorage:
        """A client for `[storage]` (no connection is made until the first call)."""
        pool = aioredis.BlockingConnectionPool.from_url(settings.url, max_connections=MAX_CONNECTIONS,
                                                        timeout=settings.timeout, **_client_options(settings))
        client = aioredis.Redis(connection_pool=pool)
        where = settings.url.split("?", 1)[0]
        return cls(client, prefix=settings.key_prefix, timeout=settings.timeout, where=where)

    def __repr__(self) -> str:
        return f"RedisStorage({self.where!r}, prefix={self.prefix!r})"

    def key(self, *parts: str) -> str:
        """A key under this site's prefix: `key("bucket", "unique", "ids")` -> `avatargen:bucket:unique:ids`."""
        return ":".join((self.prefix, *parts))

    @property
    def fence_key(self) -> str:
        """The generator lease's fencing counter (see `avatargen.storage.redis.lease`)."""
        return self.key("lease", "fence")

    @property
    def fence_token(self) -> str:
        """What a generator write passes to `fenced`: this process's token, '' when it never held the lease."""
        return "" if self.fence is None else str(self.fence)

    def script(self, source: str) -> AsyncScript:
        """A Lua script, sent by its hash (and loaded again after a Redis restart forgot it)."""
        return self.client.register_script(source)

    def blocking_client(self) -> aioredis.Redis:
        """A second pool without a socket timeout, for reads that wait on purpose (XREAD BLOCK); the
        caller's `guard(timeout=...)` bounds them instead."""
        if self._blocking is None:
            kwargs = self.client.connection_pool.connection_kwargs
            self._blocking = aioredis.Redis(connection_pool=aioredis.ConnectionPool(
                connection_class=self.client.connection_pool.connection_class,
                **{**kwargs, "socket_timeout": None}))
        return self._blocking

    @contextlib.asynccontextmanager
    async def guard(self, what: str, *, timeout: float | None = None) -> AsyncIterator[None]:
        """Run a Redis call within the deadline; its failures become StorageUnavailable (or LeaseLost)."""
        deadline = self.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(deadline):
                yield
        except rx.RedisError as exc:
            if isinstance(exc, rx.ResponseError) and str(exc).startswith(FENCED):
                raise LeaseLost(f"{what}: {exc}") from None
            if not _is_transient(exc):
                raise
            raise StorageUnavailable(f"Redis at {self.where} cannot {what}: {exc or type(exc).__name__}") from exc
        except (TimeoutError, OSError) as exc:
            detail = f"no answer within {deadline:g}s" if isinstance(exc, TimeoutError) else str(exc)
            raise StorageUnavailable(f"Redis at {self.where} cannot {what}: {detail}") from exc

    async def ping(self) -> None:
        """Raise StorageUnavailable unless Redis answers now."""
        async with self.guard("answer a ping"):
            await self.client.ping()

    async def aclose(self) -> None:
        for client in (self.client, self._blocking):
            if client is not None:
                await client.aclose()


async def ask_redis(settings: StorageSettings) -> str | None:
    """What `check-config` says about Redis: None when it answers a ping within `[storage] timeout` (what the
    server itself allows it), else why not and what the server does about it."""
    storage = RedisStorage.connect(settings)
    try:
        await storage.ping()
    except (StorageUnavailable, rx.RedisError) as exc:
        return (f"{exc}: `avatargen serve` starts all the same, serves the placeholder (or what it has in "
                "memory) and starts the generator once Redis answers")
    finally:
        await storage.aclose()
    return None


class Outage:
    """Says once that Redis cannot be reached and what that means, and once that it answers again, for
    loops that keep trying (a warning per attempt would flood the owner's log)."""

    def __init__(self, consequence: str, recovery: str) -> None:
        self.consequence = consequence
        self.recovery = recovery
        self.down = False

    def failed(self, exc: StorageUnavailable) -> None:
        if not self.down:
            log.warning("%s; %s", exc, self.consequence)
        self.down = True

    def ended(self) -> None:
        if self.down:
            log.info("Redis answers again: %s", self.recovery)
        self.down = False


def _client_options(settings: StorageSettings) -> dict[str, Any]:
    """Fail fast: one retry on a fresh connection (a pooled one may be from before a Redis restart), no
    backoff, every wait bounded by the timeout."""
    password = settings.password().reveal() or None
    return {
        "password": password,
        "socket_timeout": settings.timeout,
        "socket_connect_timeout": settings.timeout,
        "retry": Retry(NoBackoff(), retries=1),
        "retry_on_error": [rx.ConnectionError],
        "health_check_interval": 30,
    }
