"""The owner's word on stored images, through real HTTP: delete, keep, move, and images held for review,
which no visitor ever gets (GET, HEAD, 304, a restart)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from email.utils import formatdate
from pathlib import Path
from typing import Any

import httpx
import pytest

from avatargen.api import (
    AdminClient,
    AdminError,
    ImageApproved,
    ImageInfo,
    ImageKept,
    ImageMoved,
    ImageRemoved,
)
from avatargen.config import Settings
from avatargen.storage.backend import RedisBackend
from avatargen.storage.files.bucket import Bucket, open_buckets
from avatargen.storage.redis.buckets import RedisBucket
from avatargen.storage.redis.connection import RedisStorage
from avatargen.testing import RedisServer
from tests.support import fast_settings, serving
from tests.test_buckets import META, webp

TOKEN = "owner-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HELD = {"held": True, "reasons": [{"kind": "no_face", "label": "", "score": 0.0, "error": "", "text": "no face"}]}


def settings_for(tmp_path: Path, **overrides: Any) -> Settings:
    # No unique allowance: every GET /avatar is a fallback (or the placeholder), so what it serves is predictable.
    return fast_settings(tmp_path, admin__token=TOKEN, serving__unique_burst=0, **overrides)


def seed(settings: Settings, bucket: str, count: int, *, held: bool = False) -> list[str]:
    """Images stored before the server starts, as the generator would store (or hold) them."""
    store: Bucket = open_buckets(settings)[bucket]
    return [(store.held.hold(webp(n), {**META, "review": HELD}) if held else store.images.publish(webp(n), META)).id
            for n in range(count)]


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[tuple[AdminClient, httpx.AsyncClient]]:
    """The server on these settings, the owner's client, and a plain HTTP client with the owner's token."""
    async with serving(settings) as (url, _app), AdminClient(url, TOKEN) as owner, \
            httpx.AsyncClient(base_url=url, headers=AUTH, timeout=30) as web:
        yield owner, web


async def next_event(owner: AdminClient, kind: type, action: Callable[[], Any]) -> Any:
    """Do `action` while listening, and return the first event of `kind` it caused."""
    async with asyncio.timeout(20), owner.subscribe() as events:
        result = action()
        if asyncio.iscoroutine(result):
            await result
        async for _, event in events:
            if isinstance(event, kind):
                return event
    raise AssertionError("the event stream ended")


async def served_ids(web: httpx.AsyncClient, n: int, method: str = "GET") -> set[str]:
    answers = [await web.request(method, "/avatar") for _ in range(n)]
    return {answer.headers["x-avatar-id"] for answer in answers}


# --- delete -----------------------------------------------------------------------------------------------


async def test_delete_an_image_204_then_404_and_every_panel_is_told(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    first, second = seed(settings, "unique", 2)
    async with running(settings) as (owner, web):
        removed = await next_event(owner, ImageRemoved, lambda: web.delete(f"/admin/api/images/unique/{first}"))
        assert removed == ImageRemoved("unique", first, False, removed.buckets)
        assert removed.buckets["unique"].count == 1
        assert (await web.get(f"/admin/api/images/unique/{first}")).status_code == 404
        assert [image.id for image in await owner.images("unique", 10)] == [second]
        again = await web.delete(f"/admin/api/images/unique/{first}")
        assert again.status_code == 404 and first in again.json()["error"]
        assert (await owner.status()).buckets["unique"].count == 1
    assert sorted(path.name for path in (tmp_path / "data" / "unique").iterdir() if path.is_file()) == \
        [f"{second}.json", f"{second}.webp"]


@pytest.mark.parametrize("path", ["/admin/api/images/nope/20250101T000000-000000-deadbeef",
                                  "/admin/api/images/unique/not..an..id",
                                  "/admin/api/images/fallback/20250101T000000-000000-deadbeef"])
async def test_delete_of_nothing_is_404(tmp_path: Path, path: str) -> None:
    async with running(settings_for(tmp_path)) as (_, web):
        response = await web.delete(path)
        assert response.status_code == 404 and response.json()["error"]


async def test_a_deleted_fallback_is_gone_from_the_visitors_cache_at_once(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    [only] = seed(settings, "fallback", 1)
    async with running(settings) as (owner, web):
        assert await served_ids(web, 3, "HEAD") == {only}  # read once, then sent from memory
        await owner.delete_image("fallback", only)
        for method in ("GET", "HEAD"):
            assert await served_ids(web, 5, method) == {"placeholder"}


# --- keep -------------------------------------------------------------------------------------------------


async def test_keep_a_fallback_for_good_and_undo_it(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    [image_id] = seed(settings, "fallback", 1)
    async with running(settings) as (owner, web):
        await keep_and_undo(owner, web, image_id)


async def keep_and_undo(owner: AdminClient, web: httpx.AsyncClient, image_id: str) -> None:
    response = await web.post(f"/admin/api/images/fallback/{image_id}/keep")
    assert response.status_code == 200
    assert response.json()["image"]["kept"] is True
    assert response.json()["image"]["url"] == f"/admin/api/images/fallback/{image_id}"
    assert [(image.id, image.kept) for image in await owner.images("fallback", 5)] == [(image_id, True)]
    event = await next_event(owner, ImageKept, lambda: owner.keep_image("fallback", image_id, kept=False))
    assert (event.image.id, event.image.kept) == (image_id, False)
    assert not (await owner.images("fallback", 5))[0].kept


async def test_keep_refuses_a_unique_and_an_unknown_image(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    [unique] = seed(settings, "unique", 1)
    async with running(settings) as (_, web):
        response = await web.post(f"/admin/api/images/unique/{unique}/keep")
        assert response.status_code == 422 and "only fallback images can be kept" in response.json()["error"]
        response = await web.post("/admin/api/images/fallback/20250101T000000-000000-deadbeef/keep")
        assert response.status_code == 404
    assert not (Path(settings.buckets.fallback.dir) / ".kept" / "20250101T000000-000000-deadbeef").exists()


async def test_a_kept_fallback_is_never_retired(tmp_path: Path) -> None:
    # Every served fallback is retired... (and each request is a visitor's first: no same face for a while)
    settings = settings_for(tmp_path, serving__fallback_retire_every=0, serving__same_face_for=0)
    kept, other = seed(settings, "fallback", 2)
    async with running(settings) as (owner, web):
        await owner.keep_image("fallback", kept)
        served = [(await web.get("/avatar")).headers["x-avatar-id"] for _ in range(20)]
        assert served.count(other) == 1, "...the one not kept, once"
        assert served[-1] == kept and set(served) == {kept, other}
    assert (Path(settings.buckets.fallback.dir) / f"{kept}.webp").exists()


# --- move -------------------------------------------------------------------------------------------------


async def test_move_a_unique_into_the_fallback_bucket(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    [image_id] = seed(settings, "unique", 1)
    async with running(settings) as (owner, web):
        await move_and_check(owner, web, image_id)


async def move_and_check(owner: AdminClient, web: httpx.AsyncClient, image_id: str) -> None:
    event = await next_event(owner, ImageMoved, lambda: web.post(f"/admin/api/images/unique/{image_id}/move",
                                                                 json={"to": "fallback"}))
    assert (event.image.id, event.image.bucket, event.from_bucket) == (image_id, "fallback", "unique")
    assert (event.buckets["unique"].count, event.buckets["fallback"].count) == (0, 1)
    assert (await web.get(f"/admin/api/images/fallback/{image_id}")).content == webp(0)
    assert (await web.get(f"/admin/api/images/unique/{image_id}")).status_code == 404
    assert (await web.get("/avatar")).headers["x-avatar-id"] == image_id
    with pytest.raises(AdminError) as refused:
        await owner.move_image("unique", image_id, "fallback")
    assert refused.value.status == 404


@pytest.mark.parametrize(("body", "says"), [({"to": "unique"}, "already in the unique bucket"),
                                           ({"to": "attic"}, "unknown bucket 'attic'"),
                                           ({}, "to must name the bucket"),
                                           ({"to": 3}, "to must name the bucket")])
async def test_move_refuses_what_cannot_be_done(tmp_path: Path, body: dict[str, Any], says: str) -> None:
    settings = settings_for(tmp_path)
    [image_id] = seed(settings, "unique", 1)
    async with running(settings) as (_, web):
        response = await web.post(f"/admin/api/images/unique/{image_id}/move", json=body)
        assert response.status_code == 422 and says in response.json()["error"]
        assert (await web.get(f"/admin/api/images/unique/{image_id}")).status_code == 200


async def assert_fallback_stays(web: httpx.AsyncClient, image_id: str) -> None:
    """A fallback asked to become a unique is refused, and stays a fallback."""
    response = await web.post(f"/admin/api/images/fallback/{image_id}/move", json={"to": "unique"})
    assert response.status_code == 422 and "never becomes a unique" in response.json()["error"]
    assert (await web.get(f"/admin/api/images/fallback/{image_id}")).status_code == 200
    assert (await web.get(f"/admin/api/images/unique/{image_id}")).status_code == 404


async def test_a_fallback_never_becomes_a_unique(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    [image_id] = seed(settings, "fallback", 1)
    async with running(settings) as (_, web):
        await assert_fallback_stays(web, image_id)


# --- held back for review ---------------------------------------------------------------------------------


async def test_held_images_are_listed_counted_and_shown_to_the_owner_only(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    held = seed(settings, "fallback", 2, held=True)
    async with running(settings) as (owner, web):
        listed = (await web.get("/admin/api/images", params={"bucket": "fallback", "held": "true"})).json()["images"]
        assert [image["id"] for image in listed] == held[::-1]
        assert all(image["held"] and image["metadata"]["review"] == HELD for image in listed)
        assert ImageInfo.from_json(listed[0]).held_because == ["no face"]
        assert (await web.get(listed[0]["url"])).content == webp(1)
        assert await owner.images("fallback", 10) == []
        status = (await web.get("/admin/api/status")).json()
        assert status["buckets"]["fallback"] == {"count": 0, "min": 0, "max": 6, "held": 2, "rejected": 0}
        bad = await web.get("/admin/api/images", params={"bucket": "fallback", "held": "maybe"})
        assert bad.status_code == 422 and "held must be true or false" in bad.json()["error"]


async def test_held_images_never_reach_a_visitor_even_after_a_restart(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, serving__fallback_retire_every=0)
    held = seed(settings, "fallback", 3, held=True)
    long_ago = formatdate(0, usegmt=True)
    for _ in ("first start", "restart"):
        async with serving(settings) as (url, _app), httpx.AsyncClient(base_url=url) as web:
            for method in ("GET", "HEAD"):
                assert await served_ids(web, 4, method) == {"placeholder"}
            stale = await web.get("/avatar", headers={"If-Modified-Since": long_ago})
            assert stale.headers["x-avatar-kind"] == "placeholder"
            fresh = await web.get("/avatar", headers={"If-Modified-Since": formatdate(usegmt=True)})
            assert fresh.status_code == 304 and "x-avatar-id" not in fresh.headers
    assert sorted(path.stem for path in (Path(settings.buckets.fallback.dir) / ".review").glob("*.webp")) == held


async def test_approve_publishes_a_held_image_and_delete_removes_one(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    approved, refused = seed(settings, "unique", 2, held=True)
    async with running(settings) as (owner, web):
        event = await next_event(owner, ImageApproved, lambda: web.post(f"/admin/api/images/unique/{approved}/approve"))
        assert (event.image.id, event.image.held) == (approved, False)
        assert event.buckets["unique"].count == 1 and event.buckets["unique"].held == 1
        assert [image.id for image in await owner.images("unique", 5)] == [approved]
        assert (await web.post(f"/admin/api/images/unique/{approved}/approve")).status_code == 404

        removed = await next_event(owner, ImageRemoved, lambda: owner.delete_image("unique", refused))
        assert (removed.id, removed.held, removed.buckets["unique"].held) == (refused, True, 0)
        assert await owner.images("unique", 5, held=True) == []
    assert not any((Path(settings.buckets.unique.dir) / ".review").iterdir())


# --- with the buckets in Redis, shared by replicas ---------------------------------------------------------


async def seed_redis(settings: Settings, bucket: str, shades: range, *, held: bool = False) -> list[str]:
    """Images stored in Redis before the server starts, as a generator on any replica would store them."""
    backend = RedisBackend(settings)
    try:
        store = backend.shared[bucket]
        return [(await (store.hold(webp(n), {**META, "review": HELD}) if held else store.publish(webp(n), META))).id
                for n in shades]
    finally:
        await backend.aclose()


async def test_the_owners_word_on_images_in_redis(tmp_path: Path, redis_server: RedisServer) -> None:
    settings = settings_for(tmp_path, storage__backend="redis", storage__url=redis_server.url, storage__timeout="10s",
                            serving__fallback_retire_every=0,  # every served fallback is retired, unless kept
                            serving__same_face_for=0)  # and each request picks one afresh
    moving, deleted = await seed_redis(settings, "unique", range(2))
    [kept] = await seed_redis(settings, "fallback", range(2, 3))
    approved, refused = await seed_redis(settings, "unique", range(3, 5), held=True)
    async with running(settings) as (owner, web):
        assert (await owner.keep_image("fallback", kept)).kept
        assert await served_ids(web, 3) == {kept}, "kept: served, never retired"

        removed = await next_event(owner, ImageRemoved, lambda: owner.delete_image("unique", deleted))
        assert (removed.id, removed.held, removed.buckets["unique"].count) == (deleted, False, 1)
        assert (await web.delete(f"/admin/api/images/unique/{deleted}")).status_code == 404

        event = await next_event(owner, ImageMoved, lambda: owner.move_image("unique", moving, "fallback"))
        assert (event.image.id, event.from_bucket) == (moving, "unique")
        assert (event.buckets["unique"].count, event.buckets["fallback"].count) == (0, 2)
        assert (await web.get(f"/admin/api/images/fallback/{moving}")).content == webp(0)
        assert (await served_ids(web, 20)) == {kept, moving}
        assert [image.id for image in await owner.images("fallback", 5)] == [kept], "the moved one was retired"

        assert [image.id for image in await owner.images("unique", 5, held=True)] == [refused, approved]
        assert (await web.get(f"/admin/api/images/unique/{approved}")).content == webp(3)
        event = await next_event(owner, ImageApproved, lambda: owner.approve_image("unique", approved))
        assert (event.image.id, event.buckets["unique"].count, event.buckets["unique"].held) == (approved, 1, 1)
        removed = await next_event(owner, ImageRemoved, lambda: owner.delete_image("unique", refused))
        assert (removed.id, removed.held, removed.buckets["unique"].held) == (refused, True, 0)
        assert (await owner.status()).buckets["fallback"].count == 1
        await assert_fallback_stays(web, kept)
        replica = RedisBucket(RedisStorage.connect(settings.storage), "fallback")  # what any replica finds
        try:
            await replica.refresh()
            assert replica.ids() == [kept] and replica.is_kept(kept)
        finally:
            await replica.storage.aclose()

        redis_server.stop()  # the owner is told why nothing can be listed now; visitors get the placeholder
        with pytest.raises(AdminError) as down:
            await owner.images("fallback", 5)
        assert down.value.status == 503 and down.value.message.startswith("Redis at redis://127.0.0.1:")
        # Not the kept one from memory: whether it is still in the bucket cannot be known with Redis down.
        assert await served_ids(web, 3) == {"placeholder"}
