"""`GET /avatar` through real HTTP: the real app under uvicorn on loopback, real buckets on disk.

uvicorn trusts X-Forwarded-For from 127.0.0.1 here (as `avatargen serve` does for trusted_proxies), so
each request can come from a distinct visitor address.
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import time
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from avatargen.api import AdminClient
from avatargen.config import Settings
from avatargen.imaging import check_webp, frame_unique, to_avatar_webp
from avatargen.storage.files.bucket import open_buckets
from avatargen.storage.files.folder_bucket import FolderBucket
from avatargen.tasks import background
from avatargen.variants import unpack
from benchmarks.storage_faults import fill, read_only, tmpfs
from tests.support import fast_settings, serving, wait_until

TOKEN = "visitor-test-token"
# What a browser's image request lists: the stored WebP is then sent as it is (tests/test_avatar_url.py
# covers the other formats and sizes).
STORED_FORMAT = {"Accept": "image/webp,*/*"}


def stock(settings: Settings, unique: int = 0, fallback: int = 0) -> dict[str, list[str]]:
    """Publish distinct avatars into the buckets, as the generator would; the ids per bucket."""
    buckets = open_buckets(settings)
    size, quality = settings.generator.image_size, settings.generator.webp_quality
    published: dict[str, list[str]] = {}
    for name, count in (("unique", unique), ("fallback", fallback)):
        published[name] = [
            buckets[name].images.publish(to_avatar_webp(Image.new("RGB", (size, size), (n * 40 % 256, 90, 150)),
                                                 size, quality), {"prompt": f"{name} {n}"}).id
            for n in range(count)
        ]
    return published


def stored(settings: Settings, name: str) -> set[str]:
    """Ids of the images in a bucket folder, read straight from the disk."""
    folder = settings.buckets.unique.dir if name == "unique" else settings.buckets.fallback.dir
    return {path.stem for path in folder.glob("*.webp")}


def claimed(settings: Settings) -> list[Path]:
    return list((settings.buckets.unique.dir / ".claimed").glob("*"))


def visitor(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


def kinds(responses: list[httpx.Response]) -> list[str]:
    return [response.headers["x-avatar-kind"] for response in responses]


async def get_many(url: str, addresses: list[str], method: str = "GET", **headers: Any) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(addresses))
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30, headers=STORED_FORMAT) as client:
        return list(await asyncio.gather(*(
            client.request(method, "/avatar", headers={**visitor(address), **headers}) for address in addresses
        )))


async def test_exactly_one_of_200_concurrent_visitors_gets_the_last_unique(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path)
    ids = stock(settings, unique=1, fallback=3)
    plain = open_buckets(settings)["unique"].images.read(ids["unique"][0])
    async with serving(settings) as (url, _):
        responses = await get_many(url, [f"198.51.{n // 250}.{n % 250 + 1}" for n in range(200)])
        assert [response.status_code for response in responses] == [200] * 200
        assert kinds(responses).count("unique") == 1
        assert kinds(responses).count("fallback") == 199
        unique = next(response for response in responses if response.headers["x-avatar-kind"] == "unique")
        assert unique.headers["x-avatar-id"] == ids["unique"][0]
        assert unique.content == frame_unique(plain, settings.generator.webp_quality)
        await wait_until(lambda: not claimed(settings))
        assert stored(settings, "unique") == set()
        assert not (settings.buckets.unique.dir / f"{ids['unique'][0]}.json").exists()
        assert {response.headers["x-avatar-id"] for response in responses} <= {*ids["fallback"], *ids["unique"]}


async def test_response_headers_and_no_byte_ranges(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path, serving__cache_max_age="24h")
    stock(settings, unique=1, fallback=1)
    async with serving(settings) as (url, _), httpx.AsyncClient(base_url=url, headers=STORED_FORMAT) as client:
        response = await client.get("/avatar", headers={**visitor("203.0.113.9"), "Range": "bytes=0-9"})
        assert response.status_code == 200, "a unique is never served in pieces"
        assert response.headers["x-avatar-kind"] == "unique"
        assert response.headers["content-type"] == "image/webp"
        assert response.headers["cache-control"] == "private, max-age=86400"
        assert "accept-ranges" not in response.headers
        assert abs(parsedate_to_datetime(response.headers["last-modified"]).timestamp() - time.time()) < 5
        assert Image.open(io.BytesIO(response.content)).format == "WEBP"
        assert int(response.headers["content-length"]) == len(response.content)


async def test_a_visitor_gets_one_unique_per_window(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path, serving__same_face_for=0)
    stock(settings, unique=5, fallback=2)
    async with serving(settings) as (url, _), httpx.AsyncClient(base_url=url, headers=STORED_FORMAT) as client:
        async def kind(address: str) -> str:
            return (await client.get("/avatar", headers=visitor(address))).headers["x-avatar-kind"]

        assert [await kind("203.0.113.5") for _ in range(3)] == ["unique", "fallback", "fallback"]
        assert await kind("203.0.113.6") == "unique"
        # one IPv6 visitor holds a whole /64
        assert [await kind(f"2001:db8:5:6::{n:x}") for n in (1, 2, 0xFFFF)] == ["unique", "fallback", "fallback"]
        assert await kind("2001:db8:5:7::1") == "unique"
    assert len(stored(settings, "unique")) == 1


@pytest.mark.parametrize(("network", "most"), [("/48", 1), ("/64", 20)])
async def test_unique_per_network_limits_visitors_inside_one_ipv6_network(tmp_path: Path, network: str,
                                                                        most: int) -> None:
    settings = fast_settings(tmp_path, serving__unique_per_network=network, serving__unique_burst=20,
                             buckets__unique__max=20)
    stock(settings, unique=20, fallback=2)
    # 500 visitors, each from a /64 of its own, all inside the one /48 2001:db8:77::/48
    addresses = [f"2001:db8:77:{n:x}::1" for n in range(500)]
    async with serving(settings) as (url, _):
        responses = await get_many(url, addresses)
    assert [response.status_code for response in responses] == [200] * 500
    assert kinds(responses).count("unique") == most


async def test_forwarded_for_from_an_untrusted_peer_changes_nothing(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path, serving__same_face_for=0, server__trusted_proxies=["192.0.2.1"])
    stock(settings, unique=3, fallback=3)
    async with serving(settings) as (url, _):
        responses = [
            (await get_many(url, [f"203.0.113.{n}"]))[0] for n in range(1, 6)
        ]
    assert kinds(responses) == ["unique", "fallback", "fallback", "fallback", "fallback"]
    assert len(stored(settings, "unique")) == 2


async def test_head_never_claims(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path)
    ids = stock(settings, unique=2, fallback=2)
    async with serving(settings) as (url, _):
        heads = await get_many(url, [f"203.0.113.{n}" for n in range(10)], method="HEAD")
        for response in heads:
            assert response.status_code == 200 and response.content == b""
            assert response.headers["x-avatar-kind"] == "fallback"
            assert response.headers["x-avatar-id"] in ids["fallback"]
            assert response.headers["content-type"] == "image/webp"
            assert response.headers["cache-control"].startswith("private, max-age=")
        assert stored(settings, "unique") == set(ids["unique"]) and not claimed(settings)
        get = (await get_many(url, ["203.0.113.1"]))[0]
        assert get.headers["x-avatar-kind"] == "unique", "HEAD spent neither the visitor's nor the global allowance"


async def test_fresh_conditional_request_gets_304_without_touching_a_bucket(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path, serving__cache_max_age="1h")
    ids = stock(settings, unique=2, fallback=1)
    async with serving(settings) as (url, _), httpx.AsyncClient(base_url=url, headers=STORED_FORMAT) as client:
        for age in (0, 60, 3599):
            since = formatdate(time.time() - age, usegmt=True)
            response = await client.get("/avatar", headers={**visitor(f"203.0.113.{age % 250}"),
                                                            "If-Modified-Since": since})
            assert response.status_code == 304 and response.content == b""
            assert response.headers["cache-control"] == "private, max-age=3600"
        assert stored(settings, "unique") == set(ids["unique"])
        for since in (formatdate(time.time() - 3601, usegmt=True), "not a date", formatdate(time.time() + 600)):
            response = await client.get("/avatar", headers={**visitor("198.51.100.1"), "If-Modified-Since": since})
            assert response.status_code == 200, since
    assert len(stored(settings, "unique")) == 1


async def test_empty_buckets_give_the_short_lived_placeholder(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path)
    async with serving(settings) as (url, _), httpx.AsyncClient(base_url=url, headers=STORED_FORMAT) as client:
        for method in ("GET", "HEAD"):
            response = await client.request(method, "/avatar", headers=visitor("203.0.113.7"))
            assert response.status_code == 200
            assert response.headers["x-avatar-kind"] == "placeholder"
            assert response.headers["cache-control"] == "private, max-age=60"
            assert "last-modified" in response.headers  # never fresh for a revalidation: test_placeholder_headers
            assert response.headers["content-type"] == "image/webp"
        body = (await client.get("/avatar")).content
    image = Image.open(io.BytesIO(body))
    assert (image.format, image.size) == ("WEBP", (settings.generator.image_size,) * 2)


async def test_allowance_is_spent_only_on_a_claim_and_survives_a_restart(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path, serving__unique_burst=1)
    stock(settings, fallback=3)
    async with serving(settings) as (url, _):
        assert kinds(await get_many(url, ["203.0.113.1"])) == ["fallback"], "no unique left: no token spent"
    stock(settings, unique=3)
    async with serving(settings) as (url, _):
        assert kinds(await get_many(url, ["203.0.113.2"])) == ["unique"]
        assert kinds(await get_many(url, ["203.0.113.3"])) == ["fallback"], "the one token is spent"
    async with serving(settings) as (url, _):
        assert kinds(await get_many(url, ["203.0.113.4"])) == ["fallback"], "a restart does not refill it"
    assert len(stored(settings, "unique")) == 2


async def test_at_most_one_served_fallback_is_retired_per_period(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path, serving__unique_burst=0, serving__fallback_retire_every="1h")
    ids = stock(settings, fallback=5)
    async with serving(settings) as (url, _), httpx.AsyncClient(base_url=url, headers=STORED_FORMAT) as client:
        for _ in range(5):
            await client.head("/avatar")
        first = await client.get("/avatar")
        for _ in range(10):
            assert (await client.get("/avatar")).headers["x-avatar-kind"] == "fallback"
        await wait_until(lambda: len(stored(settings, "fallback")) < 5)
        assert stored(settings, "fallback") == set(ids["fallback"]) - {first.headers["x-avatar-id"]}
        for _ in range(10):
            assert (await client.get("/avatar")).headers["x-avatar-id"] != first.headers["x-avatar-id"]
    assert len(stored(settings, "fallback")) == 4


async def test_retire_every_zero_retires_each_served_fallback(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path, serving__unique_burst=0, serving__fallback_retire_every=0)
    stock(settings, fallback=4)
    async with serving(settings) as (url, _), httpx.AsyncClient(base_url=url, headers=STORED_FORMAT) as client:
        served = [(await client.get("/avatar")).headers["x-avatar-id"] for _ in range(3)]
        assert len(set(served)) == 3, "a retired fallback is never served again"
        await wait_until(lambda: len(stored(settings, "fallback")) == 1)
        assert (await client.get("/avatar")).headers["x-avatar-kind"] == "fallback"
        await wait_until(lambda: not stored(settings, "fallback"))
        assert (await client.get("/avatar")).headers["x-avatar-kind"] == "placeholder"


async def test_demo_page_shows_the_avatar(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path)
    async with serving(settings) as (url, _), httpx.AsyncClient(base_url=url, headers=STORED_FORMAT) as client:
        response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert '<source type="image/avif" srcset="/avatar.avif">' in response.text
    assert '<img id="avatar" src="/avatar.jpg"' in response.text
    assert "UNIQUE LIMITED EDITION" in response.text


def break_image(bucket_dir: Path, image_id: str, framed: bool = False) -> None:
    """Cut an image (or its framed copy) to half its size, as a full disk or an interrupted copy leaves it."""
    path = bucket_dir / (".framed" if framed else "") / f"{image_id}.webp"
    os.truncate(path, path.stat().st_size // 2)


async def test_a_broken_unique_without_its_framed_copy_is_set_aside_at_start_up(tmp_path: Path,
                                                                                caplog: pytest.LogCaptureFixture
                                                                                ) -> None:
    settings = fast_settings(tmp_path)
    ids = stock(settings, unique=2, fallback=1)
    folder = settings.buckets.unique.dir
    broken, good = ids["unique"]
    break_image(folder, broken)
    (folder / ".framed" / f"{broken}.webp").unlink()
    async with serving(settings) as (url, app), httpx.AsyncClient(base_url=url, headers=STORED_FORMAT) as client:
        assert (await client.get("/healthz")).status_code == 200
        await wait_until(lambda: (folder / ".rejected" / f"{broken}.webp").exists())
        assert (await app.state.services.status()).buckets["unique"].rejected == 1
        response = await client.get("/avatar", headers=visitor("203.0.113.1"))
        assert (response.status_code, response.headers["x-avatar-id"]) == (200, good)
    assert (folder / ".rejected" / f"{broken}.json").exists(), "the sidecar goes with it, for the owner to look at"
    assert stored(settings, "unique") == set()
    assert f"image {broken} of the unique bucket set aside" in caplog.text


async def test_broken_images_are_never_sent_and_are_set_aside(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path, serving__fallback_retire_every="24h")
    ids = stock(settings, unique=2, fallback=3)
    unique_dir, fallback_dir = settings.buckets.unique.dir, settings.buckets.fallback.dir
    reframed, lost = ids["unique"]
    break_image(unique_dir, reframed, framed=True)  # the framed copy is broken, the image itself is whole
    break_image(unique_dir, lost)
    break_image(unique_dir, lost, framed=True)
    broken_fallback, *whole_fallbacks = ids["fallback"]  # the first served one is retired: two whole ones
    break_image(fallback_dir, broken_fallback)
    original = open_buckets(settings)["unique"].images.read(reframed)
    async with serving(settings) as (url, _):
        responses = await get_many(url, [f"203.0.113.{n}" for n in range(1, 41)])
    assert [response.status_code for response in responses] == [200] * 40
    for response in responses:
        check_webp(response.content)
    uniques = [response for response in responses if response.headers["x-avatar-kind"] == "unique"]
    assert [response.headers["x-avatar-id"] for response in uniques] == [reframed]
    assert uniques[0].content == frame_unique(original, settings.generator.webp_quality), "framed again, whole"
    assert {response.headers["x-avatar-id"] for response in responses} - {reframed} <= set(whole_fallbacks)
    assert {path.name for path in (unique_dir / ".rejected").iterdir()} == {f"{lost}.webp", f"{lost}.json"}
    assert {path.stem for path in (fallback_dir / ".rejected").glob("*.webp")} == {broken_fallback}


async def test_the_server_answers_before_uniques_restored_without_framed_copies_are_framed(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path, buckets__unique__max=200)
    ids = stock(settings, unique=200)
    framed = settings.buckets.unique.dir / ".framed"
    originals = {image_id: (framed / f"{image_id}.webp").read_bytes() for image_id in ids["unique"]}
    edge = settings.generator.image_size
    shutil.rmtree(framed)  # a backup restored without its .framed/ folder
    async with serving(settings) as (url, _):
        assert len(list(framed.iterdir())) < 200, "the port opened before every unique was framed"
        response = (await get_many(url, ["203.0.113.1"]))[0]
        assert response.headers["x-avatar-kind"] == "unique"
        assert response.content == unpack(originals[response.headers["x-avatar-id"]], f"{edge}.webp"), \
            "framed by its claim if need be"
        left = stored(settings, "unique")
        await wait_until(lambda: all((framed / f"{image_id}.webp").exists() for image_id in left))
    assert len(left) == 199
    assert all((framed / f"{image_id}.webp").read_bytes() == originals[image_id] for image_id in left)


async def test_broken_files_are_found_after_start_up_before_a_visitor_meets_them(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path)
    ids = stock(settings, unique=2, fallback=2)
    unique_dir, fallback_dir = settings.buckets.unique.dir, settings.buckets.fallback.dir
    framed_copy = unique_dir / ".framed" / f"{ids['unique'][0]}.webp"
    whole = framed_copy.read_bytes()
    break_image(unique_dir, ids["unique"][0], framed=True)
    break_image(fallback_dir, ids["fallback"][0])
    async with serving(settings) as (_, app):
        await wait_until(lambda: app.state.services.buckets["fallback"].rejected() == 1)
        await wait_until(lambda: framed_copy.exists() and framed_copy.read_bytes() == whole)
    assert stored(settings, "fallback") == {ids["fallback"][1]}
    assert stored(settings, "unique") == set(ids["unique"])


async def test_a_read_only_unique_bucket_gives_fallbacks_and_keeps_its_uniques(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # same_face_for 0: the visitor asks again after the fix, and must not be shown their fallback again
    settings = fast_settings(tmp_path, admin__token=TOKEN, serving__same_face_for=0)
    folder = settings.buckets.unique.dir
    with tmpfs(folder):
        ids = stock(settings, unique=3, fallback=2)
        read_only(folder)
        async with serving(settings) as (url, _app):
            responses = await get_many(url, [f"203.0.113.{n}" for n in range(1, 11)])
            assert [(r.status_code, r.headers["x-avatar-kind"]) for r in responses] == [(200, "fallback")] * 10
            assert stored(settings, "unique") == set(ids["unique"]) and not claimed(settings)
            async with AdminClient(url, TOKEN) as owner:  # the owner sees why in the status
                visitors = (await owner.status()).visitors
            assert visitors.errors >= 6 and "Read-only file system" in (visitors.last_error or "")
            assert visitors.last_error_at is not None
            read_only(folder, on=False)  # the owner fixes the mount: nobody's allowance was spent meanwhile
            assert kinds(await get_many(url, ["203.0.113.1"])) == ["unique"]
    failures = [record for record in caplog.records if "Read-only file system" in record.getMessage()]
    assert len(failures) == 1, "a failure that repeats is logged once, then counted"


async def test_a_full_disk_under_data_dir_gives_fallbacks_and_spends_nothing(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path, server__data_dir="state", admin__token=TOKEN)
    with tmpfs(settings.server.data_dir, size="4m"):
        ids = stock(settings, unique=3, fallback=2)
        async with serving(settings) as (url, _app):
            filler = fill(settings.server.data_dir)
            responses = await get_many(url, [f"203.0.113.{n}" for n in range(1, 31)])
            assert [(r.status_code, r.headers["x-avatar-kind"]) for r in responses] == [(200, "fallback")] * 30
            assert stored(settings, "unique") == set(ids["unique"])
            async with AdminClient(url, TOKEN) as owner:
                assert "database or disk is full" in ((await owner.status()).visitors.last_error or "")
            filler.unlink()
            assert kinds(await get_many(url, ["203.0.113.1"])) == ["unique"]


async def test_a_bucket_folder_that_vanishes_gives_the_placeholder(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path, serving__unique_burst=0)
    stock(settings, fallback=2)
    async with serving(settings) as (url, _), httpx.AsyncClient(base_url=url, headers=STORED_FORMAT) as client:
        assert (await client.get("/avatar")).headers["x-avatar-kind"] == "fallback"
        settings.buckets.fallback.dir.rename(tmp_path / "moved away")
        answers = []
        # Nothing announces the bucket's next look at its folder (at most once a second): ask for longer.
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            response = await client.get("/avatar")
            answers.append((response.status_code, response.headers.get("x-avatar-kind")))
            await asyncio.sleep(0.05)
    assert set(answers) == {(200, "placeholder")}


async def test_a_unique_claimed_by_a_dead_process_goes_back(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path)
    ids = stock(settings, unique=2)
    dead = open_buckets(settings)["unique"].claims.claim()  # claimed, then the process died before sending it
    assert dead is not None and len(stored(settings, "unique")) == 1
    async with background(FolderBucket(open_buckets(settings)["unique"], sweep_every=0.1).follow(), "sweep"):
        await wait_until(lambda: len(stored(settings, "unique")) == 2)
    assert stored(settings, "unique") == set(ids["unique"]) and not claimed(settings)
