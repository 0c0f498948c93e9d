"""The avatar URL sites expect, over real HTTP on both storage backends (folders, and a real redis-server):
sizes, formats, ETag and If-None-Match, `?d=`, one face per visitor within `serving.same_face_for`, and
that a deleted or held image has no variant served anywhere."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from avatargen.api import AdminClient
from avatargen.config import Settings
from avatargen.imaging import frame_unique, to_avatar_webp
from avatargen.storage.backend import open_backend
from avatargen.storage.framing import unique_copy
from avatargen.testing import RedisServer
from avatargen.variants import FORMATS, framed_variants, unpack
from tests.support import fast_settings, serving

TOKEN = "avatar-url-test-token"
EDGE = 128  # the stored edge in these tests: sizes 32, 64 and 128 (256 is beyond it)
AVIF_FIRST = "image/avif,image/webp,image/apng,*/*;q=0.8"  # what Chrome and Firefox send for an <img>
PILLOW_NAMES = {"image/avif": "AVIF", "image/webp": "WEBP", "image/jpeg": "JPEG", "image/png": "PNG"}


@pytest.fixture(params=["files", "redis"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Fast settings on one backend; the Redis one starts its own redis-server."""
    overrides: dict[str, Any] = {"generator__image_size": EDGE, "admin__token": TOKEN,
                                 "serving__unique_every": "0s", "serving__unique_burst": 100,
                                 "serving__same_face_for": "3s"}
    if request.param == "redis":
        redis: RedisServer = request.getfixturevalue("redis_server")
        overrides |= {"storage__backend": "redis", "storage__url": redis.url}
    return fast_settings(tmp_path, **overrides)


async def stock(settings: Settings, unique: int = 0, fallback: int = 0) -> dict[str, list[str]]:
    """Distinct avatars published as the generator publishes them (a unique with its framed variants)."""
    backend = open_backend(settings)
    await backend.recover()
    try:
        published: dict[str, list[str]] = {"unique": [], "fallback": []}
        for name, count in (("unique", unique), ("fallback", fallback)):
            for n in range(count):
                image = to_avatar_webp(Image.new("RGB", (EDGE, EDGE), (n * 40 % 256, 90, 150)), EDGE, 60)
                record = await backend.buckets[name].publish(image, {"prompt": f"{name} {n}"})
                published[name].append(record.id)
        return published
    finally:
        await backend.aclose()


@contextlib.asynccontextmanager
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(settings) as (url, _), httpx.AsyncClient(base_url=url, timeout=30) as http:
        yield http


def visitor(address: str, accept: str | None = AVIF_FIRST, **more: str) -> dict[str, str]:
    """A visitor's request headers (`more`: If_None_Match=... is sent as If-None-Match)."""
    headers = {name.replace("_", "-"): value for name, value in more.items()}
    return {"X-Forwarded-For": address, **({"Accept": accept} if accept is not None else {}), **headers}


def picture(response: httpx.Response) -> tuple[str, tuple[int, int]]:
    """The format Pillow finds in a body (checked against its Content-Type) and its size."""
    image = Image.open(io.BytesIO(response.content))
    assert image.format == PILLOW_NAMES[response.headers["content-type"]]
    return image.format, image.size


async def test_size_and_format_come_from_the_query_accept_and_suffix(settings: Settings) -> None:
    await stock(settings, fallback=2)
    async with client(settings) as http:
        cases = [  # (path, Accept, expected format, expected edge)
            ("/avatar?s=64", AVIF_FIRST, "AVIF", 64),
            ("/avatar?size=64", "image/webp,*/*", "WEBP", 64),
            ("/avatar?s=50", "image/jpeg", "JPEG", 64),  # snapped up
            ("/avatar?s=1", None, "JPEG", 32),  # no Accept: JPEG, which every client shows
            ("/avatar?s=900", "image/avif", "AVIF", EDGE),  # beyond the largest: the largest
            ("/avatar?s=abc&size=", "image/avif;q=0, image/webp", "WEBP", EDGE),  # refused AVIF; unparsable ignored
            ("/avatar", "*/*", "JPEG", EDGE),
            ("/avatar.jpg?s=32", AVIF_FIRST, "JPEG", 32),  # a suffix forces the format
            ("/avatar.webp?s=64", "image/jpeg", "WEBP", 64),
            ("/avatar.avif", "image/jpeg", "AVIF", EDGE),
        ]
        for path, accept, form, edge in cases:
            response = await http.get(path, headers=visitor("203.0.113.9", accept))
            assert response.status_code == 200, path
            assert picture(response) == (form, (edge, edge)), (path, accept)
            assert response.headers["vary"] == "Accept"
            assert response.headers["x-avatar-kind"] == "fallback"
            assert int(response.headers["content-length"]) == len(response.content)
            assert response.headers["cache-control"].startswith("private, max-age=")
            assert "last-modified" in response.headers


@pytest.mark.parametrize("query", ["s=%ff%fe", "s=-5", "s=" + "9" * 5000, "d=%00", "&&==&", "s=64&s=32&d=404",
                                   "size=1e3", "s=0x40", "d=identicon", "%zz=1"])
async def test_a_query_string_never_makes_an_error_page(settings: Settings, query: str) -> None:
    await stock(settings, fallback=1)
    async with client(settings) as http:
        response = await http.get(f"/avatar?{query}", headers=visitor("203.0.113.10"))
        assert response.status_code == 200 and response.headers["x-avatar-kind"] == "fallback"
        picture(response)


async def test_etag_is_strong_per_variant_and_if_none_match_answers_304_without_claiming(settings: Settings) -> None:
    ids = await stock(settings, unique=2, fallback=1)
    async with client(settings) as http:
        first = await http.get("/avatar?s=64", headers=visitor("203.0.113.20"))
        assert first.headers["x-avatar-kind"] == "unique"
        tag = first.headers["etag"]
        assert tag.startswith('"') and not tag.startswith("W/"), "a strong validator"
        other = await http.get("/avatar?s=32", headers=visitor("203.0.113.20"))
        jpeg = await http.get("/avatar.jpg?s=64", headers=visitor("203.0.113.20"))
        assert len({tag, other.headers["etag"], jpeg.headers["etag"]}) == 3, "one tag per size and format"
        # Revalidations from many visitors: 304, and not one unique claimed by them.
        for n in range(5):
            again = await http.get("/avatar?s=64", headers=visitor(f"198.51.100.{n}", If_None_Match=tag))
            assert (again.status_code, again.content) == (304, b"")
            assert again.headers["vary"] == "Accept"
            head = await http.head("/avatar?s=64", headers=visitor(f"198.51.100.{n}"))
            assert head.headers["x-avatar-kind"] == "fallback" and head.content == b""
        # A tag for another size or format is no match: the full answer (here: the visitor's own face).
        changed = await http.get("/avatar?s=32", headers=visitor("203.0.113.20", If_None_Match=tag))
        assert changed.status_code == 200 and changed.headers["x-avatar-id"] == first.headers["x-avatar-id"]
        # If-None-Match wins over If-Modified-Since (RFC 9110): a stale tag with a fresh date is a 200.
        stale = await http.get("/avatar", headers=visitor("203.0.113.20", If_None_Match='"nothing"',
                                                          If_Modified_Since=first.headers["last-modified"]))
        assert stale.status_code == 200
        fresh = await http.get("/avatar", headers=visitor("198.51.100.41",
                                                          If_Modified_Since=first.headers["last-modified"]))
        assert fresh.status_code == 304 and fresh.headers["vary"] == "Accept"
        # The second unique is still there for the next visitor who sends a plain GET.
        last = await http.get("/avatar", headers=visitor("198.51.100.99"))
        assert last.headers["x-avatar-kind"] == "unique"
        assert {first.headers["x-avatar-id"], last.headers["x-avatar-id"]} == set(ids["unique"])


async def test_when_nothing_can_be_served_d_says_what_to_answer(settings: Settings) -> None:
    async with client(settings) as http:
        missing = await http.get("/avatar?d=404&s=64", headers=visitor("203.0.113.30"))
        assert missing.status_code == 404 and missing.headers["vary"] == "Accept"
        assert missing.headers["cache-control"] == "private, max-age=60"
        blank = await http.get("/avatar?s=32&d=blank", headers=visitor("203.0.113.30"))
        assert blank.status_code == 200 and blank.headers["content-type"] == "image/png"
        image = Image.open(io.BytesIO(blank.content))
        alpha = image.convert("RGBA").getchannel("A")
        assert image.size == (32, 32) and alpha.getextrema() == (0, 0), "fully transparent"
        for accept, form in (("image/avif", "AVIF"), ("image/jpeg", "JPEG")):
            default = await http.get("/avatar?s=64", headers=visitor("203.0.113.30", accept))
            assert default.headers["x-avatar-kind"] == "placeholder"
            assert picture(default) == (form, (64, 64))
            assert "etag" not in default.headers
    await stock(settings, fallback=1)
    async with client(settings) as http:
        found = await http.get("/avatar?d=404", headers=visitor("203.0.113.31"))
        assert found.status_code == 200 and found.headers["x-avatar-kind"] == "fallback"


async def test_a_visitor_sees_one_face_per_window_in_every_process(settings: Settings) -> None:
    await stock(settings, unique=1, fallback=3)
    # Two servers over the same storage, as two workers or two replicas: each with its own memory.
    async with client(settings) as first, client(settings) as second:
        small = await first.get("/avatar?s=32", headers=visitor("203.0.113.40"))
        assert small.headers["x-avatar-kind"] == "unique"
        unique_id = small.headers["x-avatar-id"]
        large = await second.get("/avatar.jpg?s=128", headers=visitor("203.0.113.40"))
        assert (large.headers["x-avatar-kind"], large.headers["x-avatar-id"]) == ("unique", unique_id)
        assert picture(small) == ("AVIF", (32, 32)) and picture(large) == ("JPEG", (EDGE, EDGE))
        # Nobody else ever gets it, in either process; a fallback's visitor keeps theirs too.
        others = [await http.get("/avatar?s=64", headers=visitor(f"198.51.100.{n}"))
                  for n in range(10) for http in (first, second)]
        assert all(answer.headers["x-avatar-kind"] == "fallback" for answer in others)
        seen = await first.get("/avatar", headers=visitor("198.51.100.7"))
        assert seen.headers["x-avatar-id"] == others[14].headers["x-avatar-id"]
        # The window ends: the visitor's unique is gone for good, and their next face is a fallback.
        deadline = time.monotonic() + 30
        while (await second.get("/avatar", headers=visitor("203.0.113.40"))).headers["x-avatar-kind"] == "unique":
            assert time.monotonic() < deadline, "the same face outlived serving.same_face_for"
            await asyncio.sleep(0.5)
        await first.get("/avatar", headers=visitor("198.51.100.200"))  # a write sweeps ended windows
    assert unique_id not in await stored_faces(settings)


async def test_a_pages_parallel_requests_show_one_face(settings: Settings) -> None:
    await stock(settings, unique=3, fallback=3)
    async with client(settings) as http:
        for n in range(5):  # the first visit of each: a unique, and its other <img> waits for that choice
            answers = await asyncio.gather(*(http.get(f"/avatar?s={size}", headers=visitor(f"192.0.2.{n}"))
                                             for size in (32, 64, 128)))
            assert len({answer.headers["x-avatar-id"] for answer in answers}) == 1, [a.headers for a in answers]


async def stored_faces(settings: Settings) -> set[str]:
    """The image ids in the shared face store, whichever the backend (expired records included)."""
    if settings.storage.backend == "redis":
        backend = open_backend(settings)
        try:
            assert backend.redis is not None
            client = backend.redis.client
            keys = [key async for key in client.scan_iter(match=backend.redis.key("face", "*"))]
            found: list[bytes | None] = [await client.hget(key, "id") for key in keys]  # type: ignore[misc]
            return {image_id.decode() for image_id in found if image_id is not None}
        finally:
            await backend.aclose()
    with contextlib.closing(sqlite3.connect(settings.server.data_dir / "faces.sqlite3")) as db:
        return {row[0] for row in db.execute("SELECT id FROM faces")}


async def test_head_and_conditional_requests_never_take_a_face_or_a_unique(settings: Settings) -> None:
    await stock(settings, unique=1, fallback=2)
    async with client(settings) as http:
        head = await http.head("/avatar?s=64", headers=visitor("203.0.113.50"))
        assert head.headers["x-avatar-kind"] == "fallback"
        assert await stored_faces(settings) == set()
        get = await http.get("/avatar?s=64", headers=visitor("203.0.113.50"))
        assert get.headers["x-avatar-kind"] == "unique", "the HEAD left the visitor their unique"


async def test_a_deleted_fallback_has_no_variant_served_and_takes_no_face_with_it(settings: Settings) -> None:
    ids = await stock(settings, fallback=3)
    async with client(settings) as http, AdminClient(str(http.base_url), TOKEN) as owner:
        retired = await http.get("/avatar", headers=visitor("198.51.100.1"))  # the first retire slot is due
        first = await http.get("/avatar?s=64", headers=visitor("203.0.113.60"))
        doomed = first.headers["x-avatar-id"]
        for form in FORMATS:  # every variant made and kept in memory
            await http.get(f"/avatar.{form.name}?s=32", headers=visitor("203.0.113.60"))
        await owner.delete_image("fallback", doomed)
        answers = [await http.get(path, headers=visitor(address))
                   for address in ("203.0.113.60", "203.0.113.61")
                   for path in ("/avatar.avif?s=32", "/avatar.jpg?s=32", "/avatar?s=64", "/avatar")]
    assert {answer.headers["x-avatar-id"] for answer in answers} == set(ids["fallback"]) - {
        doomed, retired.headers["x-avatar-id"]}


async def test_a_held_image_is_never_served_and_has_no_variants(settings: Settings) -> None:
    await stock(settings, fallback=1)
    backend = open_backend(settings)
    image = to_avatar_webp(Image.new("RGB", (EDGE, EDGE), (200, 10, 10)), EDGE, 60)
    held = [(await backend.buckets[name].hold(image, {"review": {"held": True}})).id for name in ("unique", "fallback")]
    await backend.aclose()
    async with client(settings) as http:
        answers = [await http.get(f"/avatar?s={size}", headers=visitor(f"198.51.100.{n}"))
                   for n, size in enumerate((32, 64, 128) * 3)]
    assert not {answer.headers["x-avatar-id"] for answer in answers} & set(held)
    if settings.storage.backend == "files":
        assert not list((settings.buckets.unique.dir / ".framed").glob(f"{held[0]}*"))


def test_a_unique_is_framed_at_every_size_in_every_format(settings: Settings) -> None:
    plain = to_avatar_webp(Image.new("RGB", (EDGE, EDGE), (40, 90, 150)), EDGE, 60)
    archive = unique_copy(settings)(plain)
    assert archive == framed_variants(plain, 60, settings.sizes), "deterministic"
    assert unpack(archive, f"{EDGE}.webp") == frame_unique(plain, 60)
    for size in settings.sizes:
        for form in FORMATS:
            image = Image.open(io.BytesIO(unpack(archive, f"{size}.{form.name}"))).convert("RGB")
            assert image.size == (size, size)
            red, _, blue = (channel.tobytes() for channel in image.split())
            gold = sum(1 for r, b in zip(red, blue, strict=True) if r > 150 and b < 120)
            assert gold > size, f"the gold frame at {size} px ({form.name})"
    small = Image.open(io.BytesIO(unpack(archive, "32.webp"))).convert("RGB")
    corner = small.getpixel((24, 24))
    assert isinstance(corner, tuple) and corner[0] > 150 and corner[2] < 120, "the gold diamond marks it at 32 px"


async def test_a_unique_framed_for_other_sizes_is_served_at_the_size_asked(settings: Settings) -> None:
    await stock(settings, unique=1)  # framed for 32, 64 and 128 px
    changed = dataclasses.replace(settings, serving=dataclasses.replace(settings.serving, sizes=(48,)))
    async with client(changed) as http:
        answer = await http.get("/avatar?s=40", headers=visitor("203.0.113.70"))
        assert answer.headers["x-avatar-kind"] == "unique" and picture(answer) == ("AVIF", (48, 48))
        again = await http.get("/avatar.jpg?s=48", headers=visitor("203.0.113.70"))
        assert again.headers["x-avatar-id"] == answer.headers["x-avatar-id"] and picture(again) == ("JPEG", (48, 48))
