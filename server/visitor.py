"""The visitor side: `GET /avatar` (a unique when the allowance says so, else a fallback) and the demo page.

The order matters: a fresh conditional request gets 304 before any bucket is touched; only a GET that
will send a body may claim a unique (never HEAD: link previewers send those); the token is spent only
when a unique is actually claimed; a claimed file is deleted by a BackgroundTask once the body is sent
(in Redis the claim itself took it out). The unique is a plain Response (no FileResponse: a byte-range
request would serve it in pieces).

Visitors never see an error page: whatever fails on the way to a unique (a read-only bucket, a full disk
under the allowance's SQLite file, a Redis that is down or slow) or to a fallback, the visitor gets a
fallback (from memory, when the store cannot be read) or the placeholder, never a unique twice; the
owner gets the cause in the log and in `VisitorService.status()`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from avatargen.api.wire import VisitorErrors
from avatargen.buckets import Claim, ImageNotFound
from avatargen.config import Settings
from avatargen.imaging import placeholder_webp
from avatargen.metrics import VISITOR_ERRORS
from avatargen.storage.protocols import StoredBucket, UniqueAllowance
from avatargen.storage.redis_connection import StorageUnavailable
from server.addresses import visitor_key

log = logging.getLogger("avatargen.visitor")

DEMO_PAGE = Path(__file__).parent / "static" / "index.html"
# A placeholder only means "the buckets are empty right now": it must not stick in the browser for a day.
PLACEHOLDER_MAX_AGE = 60
# Fallback images kept in memory; each is a few kB, and hot ones would otherwise be re-read per request.
FALLBACK_CACHE_SIZE = 256
# A failure that repeats (a read-only bucket fails every claim) is logged again at most this often.
REPORT_EVERY = 60.0


@functools.lru_cache(maxsize=256)
def http_date(text: str) -> float | None:
    """An HTTP date as a timestamp, or None. Cached: browsers send back the Last-Modified they were given,
    so a few distinct values make up most If-Modified-Since headers, and parsing is the 304 path's cost."""
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@functools.lru_cache(maxsize=2)
def _http_date_of(second: int) -> bytes:
    return formatdate(second, usegmt=True).encode("latin-1")


def http_now() -> bytes:
    """The current time as an HTTP date header value, formatted once per second rather than once per request."""
    return _http_date_of(int(time.time()))


class PreparedResponse(Response):
    """A response whose header lines the caller encoded itself.

    Starlette's Response checks, lower-cases and encodes every header of every response; on the fallback
    path that was a tenth of the server's time per request (more than the route's own work), for the
    same few lines each time. The visitor route builds them from pre-encoded parts instead.
    """

    def __init__(self, body: bytes, raw_headers: list[tuple[bytes, bytes]], *, status_code: int = 200,
                 background: BackgroundTask | None = None) -> None:
        self._prepared = raw_headers
        super().__init__(body, status_code, background=background)

    def init_headers(self, headers: Mapping[str, str] | None = None) -> None:
        self.raw_headers = self._prepared


class _RecentImages:
    """A small LRU of fallback image bytes by id (used from the event loop only)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[str, bytes] = OrderedDict()

    def get(self, image_id: str) -> bytes | None:
        data = self._items.get(image_id)
        if data is not None:
            self._items.move_to_end(image_id)
        return data

    def put(self, image_id: str, data: bytes) -> None:
        self._items[image_id] = data
        self._items.move_to_end(image_id)
        if len(self._items) > self._size:
            self._items.popitem(last=False)

    def drop(self, image_id: str) -> None:
        self._items.pop(image_id, None)

    def newest(self, wanted: Callable[[str], bool]) -> tuple[str, bytes] | None:
        """The most recently used image held whose id is `wanted`; None when none is."""
        return next(((image_id, data) for image_id, data in reversed(self._items.items()) if wanted(image_id)), None)


class PathErrors:
    """Failures visitors never see (they get another avatar): counted, the last one kept for the owner's
    status, logged at once and then, while the same kind repeats (same step, same error), at most once
    per `REPORT_EVERY`.

    Recorded from worker threads and the event loop alike.
    """

    def __init__(self) -> None:
        self.count = 0
        self.last: str | None = None
        self.last_at: float | None = None
        self._lock = threading.Lock()
        self._kind: tuple[str, str, int | None] | None = None
        self._reported_at = float("-inf")
        self._unreported = 0

    def record(self, what: str, exc: Exception) -> None:
        """`what` did not happen because of `exc`."""
        kind = (what, type(exc).__name__, getattr(exc, "errno", None))
        message = f"{what}: {exc}"
        VISITOR_ERRORS.inc()
        with self._lock:
            self.count += 1
            self.last, self.last_at = message, time.time()
            now = time.monotonic()
            if kind == self._kind and now - self._reported_at < REPORT_EVERY:
                self._unreported += 1
                return
            repeats, self._unreported, self._reported_at, self._kind = self._unreported, 0, now, kind
        log.error("%s%s", message, f" ({repeats} more like it since the last report)" if repeats else "")

    def status(self) -> VisitorErrors:
        last_at = None if self.last_at is None else datetime.fromtimestamp(self.last_at, UTC)
        return VisitorErrors(self.count, self.last, last_at)


class VisitorService:
    """Serves avatars to visitors from the unique and fallback buckets, within the shared allowance."""

    def __init__(self, settings: Settings, buckets: Mapping[str, StoredBucket]) -> None:
        self.settings = settings
        self.unique = buckets["unique"]
        self.fallback = buckets["fallback"]
        self.max_age = settings.serving.cache_max_age
        self._cache_control = (b"cache-control", f"private, max-age={int(self.max_age)}".encode())
        self._ipv6_prefix = int(settings.serving.unique_per_network.removeprefix("/"))
        # Room for the whole fallback bucket (a few MB): a miss means a read from the disk or Redis, and
        # while those cannot be read, what is here is what visitors get.
        self._recent = _RecentImages(max(FALLBACK_CACHE_SIZE, settings.buckets.fallback.max))
        self._allowance: UniqueAllowance | None = None
        self._page = b""
        self.errors = PathErrors()

    def status(self) -> VisitorErrors:
        """For the owner: how many visitors got another avatar because something failed, and the last cause."""
        return self.errors.status()

    async def start(self, allowance: UniqueAllowance) -> None:
        """Serve within `allowance` (its owner closes it); load the demo page."""
        self._allowance = allowance
        self._page = await asyncio.to_thread(DEMO_PAGE.read_bytes)

    def routes(self) -> list[Route]:
        """`/avatar` and the demo page `/`; Starlette answers HEAD on both, which `avatar` handles itself."""
        return [Route("/avatar", self.avatar, methods=["GET"]), Route("/", self.demo_page, methods=["GET"])]

    @property
    def allowance(self) -> UniqueAllowance:
        if self._allowance is None:
            raise RuntimeError("VisitorService.start() has not been awaited (the app's lifespan does it)")
        return self._allowance

    # --- the routes --------------------------------------------------------------------------------------

    async def demo_page(self, request: Request) -> Response:
        """A small "about" page that shows /avatar the way the owner's site does; revalidated, never stale."""
        return HTMLResponse(self._page, headers={"Cache-Control": "no-cache"})

    async def avatar(self, request: Request) -> Response:
        """304 for a fresh copy; else a unique (GET only, allowance permitting), a fallback or the placeholder."""
        if self._still_fresh(request.headers.get("if-modified-since")):
            return PreparedResponse(b"", [self._cache_control], status_code=304)
        sends_body = request.method == "GET"
        # The visitor's key is only worked out when a unique could be given at all (the hot path skips it).
        if sends_body and self.unique.count() and self.allowance.token_may_be_due():
            visitor = visitor_key(request.client.host if request.client else None, self._ipv6_prefix)
            try:
                claim = await self._claim_unique(visitor)
            except StorageUnavailable:  # one failure of the store is all this visitor waits for
                return self._from_memory()
            if claim is not None:
                return self._image_response(claim.image, b"unique", claim.id,
                                            BackgroundTask(self._finish_claim, claim))
        return await self._fallback_response(retire=sends_body)

    def forget(self, bucket: str, image_id: str) -> None:
        """An image left its bucket by the owner's hand (deleted, moved): no visitor gets it again, not even
        from the copy in memory (the bucket itself has already dropped it from its index)."""
        if bucket == self.fallback.name:
            self._recent.drop(image_id)

    # --- the pieces --------------------------------------------------------------------------------------

    def _still_fresh(self, if_modified_since: str | None) -> bool:
        """Whether the visitor's copy is younger than cache_max_age: it may keep it (304)."""
        since = http_date(if_modified_since) if if_modified_since else None
        return since is not None and 0 <= time.time() - since < self.max_age

    async def _claim_unique(self, visitor: str) -> Claim | None:
        """A unique for this visitor if the allowance grants one and one is left (checked in memory first).

        Any failure means no unique this time (recorded for the owner): what was taken was given back, or
        in Redis, a claim whose answer was lost took that unique out unseen (it is lost, never doubled).
        A store that is down or slow (StorageUnavailable) is raised after it is recorded: the visitor then
        gets a fallback from memory without waiting on the store again.
        """
        if not self.allowance.may_grant(visitor):
            return None
        try:
            return await self.allowance.claim(visitor)
        except Exception as exc:
            self.errors.record("a visitor got no unique", exc)
            if isinstance(exc, StorageUnavailable):
                raise
            return None

    async def _finish_claim(self, claim: Claim) -> None:
        """After the unique was sent: delete it for good (a failure only leaves a file for the claim sweep)."""
        try:
            await self.allowance.sent(claim)
        except Exception as exc:
            self.errors.record(f"a sent unique cannot be deleted from the {self.unique.name} bucket", exc)

    async def _retire(self, image_id: str) -> None:
        """After a retired fallback was sent: delete it, unless the owner kept it meanwhile (a failure leaves it
        for the next rescan to serve)."""
        try:
            await self.fallback.retire(image_id)
        except Exception as exc:
            self.errors.record(f"a retired fallback cannot be deleted from the {self.fallback.name} bucket", exc)

    async def _take_retire_slot(self) -> bool:
        """Whether the fallback about to be served is retired: the shared slot is due and was taken."""
        if not self.allowance.may_retire():
            return False
        try:
            return await self.allowance.retire()
        except Exception as exc:
            self.errors.record("no fallback retired: the retire slot cannot be taken", exc)
            return False

    async def _read_fallback(self, image_id: str) -> bytes | None:
        """A fallback's bytes: from memory once the bucket says it may still be served (deleted anywhere is
        gone at once), else from its bucket; None when it is gone. A failure of the store is raised."""
        data = self._recent.get(image_id)
        if data is None:
            try:
                data = await self.fallback.read(image_id)
            except ImageNotFound:  # retired or deleted by another process since the last look, or broken
                self.fallback.forget(image_id)
                return None
            self._recent.put(image_id, data)
            return data
        if await self.fallback.servable(image_id):
            return data
        self._recent.drop(image_id)
        self.fallback.forget(image_id)
        return None

    async def _fallback_response(self, *, retire: bool) -> Response:
        """A random fallback; at most one served per retire period is deleted afterwards (never one the owner
        keeps: looked up only when a retirement is due). Else the placeholder. The first failure of the store
        sends the visitor to memory: a slow Redis costs one timeout, not one per fallback tried."""
        while (image_id := self.fallback.random_id()) is not None:
            try:
                data = await self._read_fallback(image_id)
            except Exception as exc:  # unreadable now: it stays in the bucket's index (its level stays right)
                self.errors.record(f"a fallback cannot be read from the {self.fallback.name} bucket", exc)
                return self._from_memory()
            if data is None:
                continue
            background = None
            if retire and self.allowance.may_retire() and not self.fallback.is_kept(image_id) \
                    and await self._take_retire_slot():
                # Out of the pool at once, so no later request picks it; the file goes once this one is sent.
                self.fallback.forget(image_id)
                self._recent.drop(image_id)
                background = BackgroundTask(self._retire, image_id)
            return self._image_response(data, b"fallback", image_id, background)
        return self._from_memory()

    def _from_memory(self) -> Response:
        """What a visitor gets without asking the store: a fallback kept in memory that the bucket listed at its
        last successful look (one deleted before it is never sent), else the placeholder."""
        if (kept := self._recent.newest(self.fallback.listed)) is not None:
            return self._image_response(kept[1], b"fallback", kept[0], None)
        return Response(
            placeholder_webp(self.settings.generator.image_size),
            media_type="image/webp",
            # Dated just outside the cache_max_age window: a revalidation with it gets an image, never a 304
            # that would keep the placeholder for a whole day.
            headers={"Cache-Control": f"private, max-age={PLACEHOLDER_MAX_AGE}",
                     "Last-Modified": formatdate(time.time() - self.max_age - 1, usegmt=True),
                     "X-Avatar-Kind": "placeholder", "X-Avatar-Id": "placeholder"},
        )

    def _image_response(self, data: bytes, kind: bytes, image_id: str,
                        background: BackgroundTask | None) -> Response:
        return PreparedResponse(data, [
            (b"content-type", b"image/webp"),
            (b"content-length", b"%d" % len(data)),
            self._cache_control,
            (b"last-modified", http_now()),
            (b"x-avatar-kind", kind),
            (b"x-avatar-id", image_id.encode()),
        ], background=background)
