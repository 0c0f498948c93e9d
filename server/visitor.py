"""The visitor side: `GET /avatar` (a unique when the allowance says so, else a fallback) and the demo page.

Each answer is the variant asked for (`server.avatar_request`: size, format, `?d=`) with a strong ETag and
`Vary: Accept`; the visitor's face is remembered for `serving.same_face_for` (`avatargen.storage.face_memo`), so a page
that shows the avatar twice shows one person. A unique's variants come made with it (an archive); a
fallback's variant is made on first use, in a worker thread, and kept with its image in memory.

The order matters: a fresh conditional request gets 304 before any bucket is touched; only a GET that
will send a body may claim a unique (never HEAD: link previewers send those); the token is spent only
when a unique is actually claimed; a claimed file is deleted by a BackgroundTask once the body is sent
(in Redis the claim itself took it out). The unique is a plain Response (no FileResponse: a byte-range
request would serve it in pieces).

Visitors never see an error page: whatever fails on the way to a unique (a read-only bucket, a full disk
under the allowance's SQLite file, a Redis that is down or slow) or to a fallback, the visitor gets a
fallback or the placeholder, never a unique twice, never a deleted image (with Redis down or slow a
fallback in memory cannot be checked, so the placeholder); the owner gets the cause in the log and in
`VisitorService.status()`.
"""

from __future__ import annotations

import asyncio
import functools
import io
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path

from PIL import Image
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from avatargen.api.wire import VisitorErrors
from avatargen.config import Settings
from avatargen.imaging import ImageError, placeholder_webp
from avatargen.metrics import VISITOR_ERRORS
from avatargen.storage.errors import ImageNotFound, StorageUnavailable
from avatargen.storage.face_memo import FaceMemo
from avatargen.storage.models import Claim, Face
from avatargen.storage.protocols import FaceStore, StoredBucket, UniqueAllowance
from avatargen.variants import (
    FORMATS,
    WEBP,
    Format,
    is_archive,
    scaled_variants,
    unpack,
    variant,
    webp_members,
)
from server.addresses import visitor_key
from server.avatar_request import AvatarRequests, Wanted

log = logging.getLogger("avatargen.visitor")

DEMO_PAGE = Path(__file__).parent / "static" / "index.html"
# A placeholder only means "the buckets are empty right now": it must not stick in the browser for a day.
PLACEHOLDER_MAX_AGE = 60
# Fallback images kept in memory; each is a few kB, and hot ones would otherwise be re-read per request.
FALLBACK_CACHE_SIZE = 256
# The bytes those images and their variants may take in one process, all told: with the real-use 2,500
# fallbacks and a site asking for two or three variants of each, they all fit.
FALLBACK_CACHE_BYTES = 64 * 1024 * 1024
# The IPv6 network one client holds: the key of the face a viewer sees (`avatargen.storage.face_memo`).
FACE_PREFIX = 64
# An answer that differs by the Accept header says so, so that no cache hands an AVIF to a JPEG-only client.
VARY = (b"vary", b"Accept")
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


@functools.lru_cache(maxsize=4096)
def _visitor(host: str | None, ipv6_prefix: int) -> str:
    """`visitor_key`, cached: it is needed on every request now, and a few addresses send most of them."""
    return visitor_key(host, ipv6_prefix)


@functools.lru_cache(maxsize=32)
def placeholder(size: int, form: Format) -> bytes:
    """The placeholder in one size and format (drawn once per process)."""
    webp = placeholder_webp(size)
    return webp if form is WEBP else variant(webp, size, form, 80)


@functools.lru_cache(maxsize=8)
def blank_png(size: int) -> bytes:
    """A fully transparent square, for `?d=blank` (PNG: every client shows it, transparency included)."""
    out = io.BytesIO()
    Image.new("LA", (size, size), (0, 0)).save(out, format="PNG", optimize=True)
    return out.getvalue()


def _request_headers(raw: list[tuple[bytes, bytes]]) -> tuple[str | None, str | None, str | None]:
    """If-None-Match, If-Modified-Since and Accept, in one pass over the raw headers (the ASGI server gives
    their names in lower case): Starlette's `request.headers` would build an object and scan once per name,
    a measurable share of the 304 path."""
    if_none_match = if_modified_since = accept = None
    for name, value in raw:
        if name == b"accept":
            accept = value.decode("latin-1")
        elif name == b"if-modified-since":
            if_modified_since = value.decode("latin-1")
        elif name == b"if-none-match":
            if_none_match = value.decode("latin-1")
    return if_none_match, if_modified_since, accept


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
    """A small LRU of fallback image bytes by id, each with the variants made of it (event loop only).

    An image and its variants are one entry: whatever drops the image drops every variant with it. At most
    `size` images and `budget` bytes are held; the least recently used go first.
    """

    def __init__(self, size: int, budget: int = FALLBACK_CACHE_BYTES) -> None:
        self._size = size
        self._budget = budget
        self._bytes = 0
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._variants: dict[str, dict[str, bytes]] = {}

    def get(self, image_id: str) -> bytes | None:
        data = self._items.get(image_id)
        if data is not None:
            self._items.move_to_end(image_id)
        return data

    def variant(self, image_id: str, name: str) -> bytes | None:
        """A variant made earlier (`64.avif`) of an image held here."""
        return self._variants.get(image_id, {}).get(name)

    def put(self, image_id: str, data: bytes) -> None:
        self.drop(image_id)
        self._items[image_id] = data
        self._bytes += len(data)
        self._trim()

    def put_variant(self, image_id: str, name: str, data: bytes) -> None:
        """Keep a variant, if its image is still held (a variant never outlives its image here)."""
        if image_id in self._items and name not in (held := self._variants.setdefault(image_id, {})):
            held[name] = data
            self._bytes += len(data)
            self._trim()

    def drop(self, image_id: str) -> None:
        data = self._items.pop(image_id, None)
        if data is not None:
            self._bytes -= len(data) + sum(map(len, self._variants.pop(image_id, {}).values()))

    def _trim(self) -> None:
        while len(self._items) > self._size or (self._bytes > self._budget and len(self._items) > 1):
            self.drop(next(iter(self._items)))

    def newest(self) -> tuple[str, bytes] | None:
        """The most recently used image held; None when none is."""
        return next(reversed(self._items.items()), None)


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
        self._faces: FaceMemo | None = None
        self.requests = AvatarRequests(settings.sizes)
        self._page = b""
        self.errors = PathErrors()

    def status(self) -> VisitorErrors:
        """For the owner: how many visitors got another avatar because something failed, and the last cause."""
        return self.errors.status()

    async def start(self, allowance: UniqueAllowance, faces: FaceStore) -> None:
        """Serve within `allowance`, remembering faces in `faces` (their owner closes both); load the demo page."""
        self._allowance = allowance
        self._faces = FaceMemo(faces, self.settings.serving.same_face_for)
        self._page = await asyncio.to_thread(DEMO_PAGE.read_bytes)

    def routes(self) -> list[Route]:
        """`/avatar` (and `/avatar.jpg`, `.webp`, `.avif`: one format whatever the Accept header) and the demo
        page `/`; Starlette answers HEAD on all of them, which `avatar` handles itself."""
        forced = [Route(f"/avatar.{form.name}", self._forcing(form), methods=["GET"]) for form in FORMATS]
        return [Route("/avatar", self.avatar, methods=["GET"]), *forced,
                Route("/", self.demo_page, methods=["GET"])]

    def _forcing(self, form: Format) -> Callable[[Request], Awaitable[Response]]:
        async def avatar_as(request: Request) -> Response:
            return await self.avatar(request, form)
        avatar_as.__doc__ = f"`/avatar` as {form.media_type}, whatever the client's Accept header says."
        return avatar_as

    @property
    def faces(self) -> FaceMemo:
        if self._faces is None:
            raise RuntimeError("VisitorService.start() has not been awaited (the app's lifespan does it)")
        return self._faces

    @property
    def allowance(self) -> UniqueAllowance:
        if self._allowance is None:
            raise RuntimeError("VisitorService.start() has not been awaited (the app's lifespan does it)")
        return self._allowance

    # --- the routes --------------------------------------------------------------------------------------

    async def demo_page(self, request: Request) -> Response:
        """A small "about" page that shows /avatar the way the owner's site does; revalidated, never stale."""
        return HTMLResponse(self._page, headers={"Cache-Control": "no-cache"})

    async def avatar(self, request: Request, forced: Format | None = None) -> Response:
        """304 for a fresh copy; else the face this visitor got within `same_face_for`, a unique (GET only,
        allowance permitting), a fallback, or what `?d=` asks for when there is none: in the size and
        format asked for."""
        if_none_match, if_modified_since, accept = _request_headers(request.scope["headers"])
        # If-None-Match, when sent, wins over If-Modified-Since (RFC 9110).
        if if_none_match is None and self._still_fresh(if_modified_since):
            return PreparedResponse(b"", [self._cache_control, VARY], status_code=304)
        wanted = self.requests.wanted(request.scope["query_string"], accept, forced)
        if if_none_match is not None and wanted.matches(if_none_match):
            return PreparedResponse(b"", [self._cache_control, VARY], status_code=304)
        if request.method != "GET":  # HEAD: a fallback's headers; it never claims, nor takes a face
            return await self._fallback_response(wanted, None)
        host = request.client.host if request.client else None
        # A face is one client's (IPv6: its /64), even where the allowance counts a wider network as one
        # visitor: a unique is never shown to the other clients of that network.
        viewer = _visitor(host, FACE_PREFIX)
        visitor = viewer if self._ipv6_prefix == FACE_PREFIX else _visitor(host, self._ipv6_prefix)
        face = self.faces.seen(viewer) or await self.faces.being_chosen(viewer)
        if face is not None and (again := await self._face_response(face, wanted)) is not None:
            return again
        with self.faces.choosing(viewer):  # this viewer's other requests to this process wait for the choice
            try:
                face = await self._recall(viewer)  # chosen in another process?
            except StorageUnavailable:  # one failure of the store is all this visitor waits for
                return self._nothing_response(wanted)
            if face is not None and (again := await self._face_response(face, wanted)) is not None:
                return again
            if self.unique.count() and self.allowance.token_may_be_due():
                try:
                    claim = await self._claim_unique(visitor)
                except StorageUnavailable:  # one failure of the store is all this visitor waits for
                    return self._nothing_response(wanted)
                if claim is not None:
                    archive = await self._unique_variants(claim.image)
                    if (data := await self._unique_variant(claim.id, archive, wanted)) is not None:
                        # Remembered before it is sent, as a fallback is: remembered once the body was sent, a
                        # loaded machine answered the page's next request, in another process, with another face.
                        await self._remember(viewer, "unique", claim.id, archive)
                        return self._image_response(data, b"unique", claim.id, wanted,
                                                    BackgroundTask(self._finish_claim, claim))
            return await self._fallback_response(wanted, viewer)

    def forget(self, bucket: str, image_id: str) -> None:
        """An image left its bucket by the owner's hand (deleted, moved): no visitor gets it again, not even
        from the copy in memory with its variants (the bucket itself has already dropped it from its index)."""
        if bucket == self.fallback.name:
            self._recent.drop(image_id)
            self.faces.forget_image(image_id)

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
        gets the placeholder without waiting on the store again.
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

    async def _recall(self, viewer: str) -> Face | None:
        """The viewer's face from the shared store; None when they have none (or it cannot be read now). A
        store that is down or slow (StorageUnavailable) is raised after it is recorded, as by a claim."""
        try:
            return await self.faces.recall(viewer)
        except Exception as exc:
            self.errors.record("a visitor's face cannot be looked up", exc)
            if isinstance(exc, StorageUnavailable):
                raise
            return None

    async def _remember(self, viewer: str, kind: str, image_id: str, archive: bytes | None = None) -> None:
        """Remember what the viewer got (a failure only costs them the same face next time)."""
        try:
            await self.faces.remember(viewer, kind, image_id, archive)
        except Exception as exc:
            self.errors.record("a visitor's face cannot be remembered", exc)

    async def _face_response(self, face: Face, wanted: Wanted) -> Response | None:
        """The visitor's face again, in the size and format asked now; None when it is gone (a fallback
        deleted or retired since: the visitor gets another)."""
        if face.variants is not None:
            data = await self._unique_variant(face.id, face.variants, wanted)
            return None if data is None else self._image_response(data, b"unique", face.id, wanted, None)
        try:
            data = await self._fallback_variant(face.id, wanted)
        except Exception as exc:  # the store failed: the visitor is served like any other, from memory
            self.errors.record(f"a fallback cannot be read from the {self.fallback.name} bucket", exc)
            return await self._from_memory(wanted, exc)
        return None if data is None else self._image_response(data, b"fallback", face.id, wanted, None)

    async def _unique_variants(self, copy: bytes) -> bytes:
        """A claimed unique's variants archive; a copy framed before variants existed is made into one now."""
        if is_archive(copy):
            return copy
        return await asyncio.to_thread(scaled_variants, copy, self.settings.generator.webp_quality,
                                       self.settings.sizes)

    async def _unique_variant(self, image_id: str, archive: bytes, wanted: Wanted) -> bytes | None:
        """The variant asked for from a unique's archive. One made for other sizes (`serving.sizes` changed
        since) is made from its largest WebP now; None when the archive is broken (recorded: a claimed file
        goes back to its bucket with the next sweep of stale claims)."""
        try:
            try:
                return unpack(archive, wanted.member)
            except KeyError:
                largest = max(webp_members(archive), key=len)
                return await asyncio.to_thread(variant, largest, wanted.size, wanted.form,
                                               self.settings.generator.webp_quality)
        except (ImageError, ValueError) as exc:
            self.errors.record(f"unique {image_id} cannot be sent: its variants are broken", exc)
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

    async def _fallback_variant(self, image_id: str, wanted: Wanted) -> bytes | None:
        """The variant asked for of a fallback (`_variant`); None when the image is gone or cannot be made.
        A failure of the store is raised."""
        data = await self._read_fallback(image_id)
        return None if data is None else await self._variant(image_id, data, wanted)

    async def _variant(self, image_id: str, data: bytes, wanted: Wanted) -> bytes | None:
        """The variant asked for of a fallback whose stored bytes are `data`: kept in memory with its image,
        else made now in a worker thread (once per process); None when it cannot be made."""
        if wanted.size == self.requests.largest and wanted.form is WEBP:
            return data  # the stored image is this variant
        if (made := self._recent.variant(image_id, wanted.member)) is not None:
            return made
        try:
            made = await asyncio.to_thread(variant, data, wanted.size, wanted.form,
                                           self.settings.generator.webp_quality)
        except ImageError as exc:  # a whole WebP file whose pixels do not decode
            self.errors.record(f"no variant can be made of fallback {image_id}", exc)
            self.fallback.forget(image_id)
            self._recent.drop(image_id)
            return None
        self._recent.put_variant(image_id, wanted.member, made)
        return made

    async def _fallback_response(self, wanted: Wanted, viewer: str | None) -> Response:
        """A random fallback, remembered as the face of `viewer` (None: a HEAD, which neither retires nor is
        remembered); at most one served per retire period is deleted afterwards (never one the owner keeps:
        looked up only when a retirement is due). Else what memory holds, or what `?d=` asks for. The first
        failure of the store sends the visitor to memory: a slow Redis costs one timeout, not one per
        fallback tried."""
        while (image_id := self.fallback.random_id()) is not None:
            try:
                data = await self._fallback_variant(image_id, wanted)
            except Exception as exc:  # unreadable now: it stays in the bucket's index (its level stays right)
                self.errors.record(f"a fallback cannot be read from the {self.fallback.name} bucket", exc)
                return await self._from_memory(wanted, exc)
            if data is None:
                continue
            background = None
            if viewer is not None:
                await self._remember(viewer, "fallback", image_id)
                if self.allowance.may_retire() and not self.fallback.is_kept(image_id) \
                        and await self._take_retire_slot():
                    # Out of the pool at once, so no later request picks it; the file goes once this one is sent.
                    self.fallback.forget(image_id)
                    self._recent.drop(image_id)
                    background = BackgroundTask(self._retire, image_id)
            return self._image_response(data, b"fallback", image_id, wanted, background)
        return await self._from_memory(wanted, None)

    async def _from_memory(self, wanted: Wanted, failure: Exception | None) -> Response:
        """What a visitor gets when no fallback could be read from the bucket (`failure`, or none listed): the
        newest fallback kept in memory once the bucket says it may still be served, in the variant asked;
        else what `?d=` asks for, by default the placeholder.

        Never a fallback whose `servable` cannot be known: with the store down or slow (StorageUnavailable,
        now or just before) a delete made through another replica meanwhile cannot be seen, and a deleted
        image is never shown. Nor is the store asked again after it failed: one timeout per visitor."""
        if isinstance(failure, StorageUnavailable) or (kept := self._recent.newest()) is None:
            return self._nothing_response(wanted)
        try:
            servable = await self.fallback.servable(kept[0])
        except StorageUnavailable:
            return self._nothing_response(wanted)
        if servable and (data := await self._variant(kept[0], kept[1], wanted)) is not None:
            return self._image_response(data, b"fallback", kept[0], wanted, None)
        return self._nothing_response(wanted)

    def _nothing_response(self, wanted: Wanted) -> Response:
        """Both buckets empty: 404 (`?d=404`), a transparent image (`?d=blank`) or the placeholder. Briefly
        cached, and with no ETag: a revalidation must not keep it for a whole day."""
        headers = {"Cache-Control": f"private, max-age={PLACEHOLDER_MAX_AGE}", "Vary": "Accept",
                   # Dated just outside the cache_max_age window: a revalidation with it gets an image, never
                   # a 304 that would keep the placeholder for a whole day.
                   "Last-Modified": formatdate(time.time() - self.max_age - 1, usegmt=True),
                   "X-Avatar-Kind": "placeholder", "X-Avatar-Id": "placeholder"}
        if wanted.default == "404":
            return Response("no avatar to serve now\n", 404, headers=headers, media_type="text/plain")
        if wanted.default == "blank":
            return Response(blank_png(wanted.size), headers={**headers, "X-Avatar-Kind": "blank",
                                                              "X-Avatar-Id": "blank"}, media_type="image/png")
        return Response(placeholder(wanted.size, wanted.form), headers=headers, media_type=wanted.form.media_type)

    def _image_response(self, data: bytes, kind: bytes, image_id: str, wanted: Wanted,
                        background: BackgroundTask | None) -> Response:
        return PreparedResponse(data, [
            _CONTENT_TYPES[wanted.form.name],
            (b"content-length", b"%d" % len(data)),
            self._cache_control,
            (b"last-modified", http_now()),
            (b"etag", wanted.etag(image_id)),
            VARY,
            (b"x-avatar-kind", kind),
            (b"x-avatar-id", image_id.encode()),
        ], background=background)


_CONTENT_TYPES = {form.name: (b"content-type", form.media_type.encode()) for form in FORMATS}
