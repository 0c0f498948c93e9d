"""What the owner does to stored images, on real folders: delete, keep, move, and images held for review."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from functools import partial
from pathlib import Path

import pytest

from avatargen.imaging import frame_unique
from avatargen.storage.errors import ImageNotFound
from avatargen.storage.files.bucket import Bucket
from tests.test_buckets import META, webp

frame = partial(frame_unique, quality=60)
VERDICT = {"held": True, "reasons": [{"kind": "no_face", "label": "", "score": 0.0, "error": "", "text": "no face"}]}


@pytest.fixture
def unique(tmp_path: Path) -> Bucket:
    return Bucket("unique", tmp_path / "unique", prepare=frame)


@pytest.fixture
def fallback(tmp_path: Path) -> Bucket:
    return Bucket("fallback", tmp_path / "fallback")


def files(bucket: Bucket) -> set[str]:
    """Every file under the bucket folder, by path relative to it."""
    return {path.relative_to(bucket.directory).as_posix() for path in bucket.directory.rglob("*") if path.is_file()}


# --- delete -----------------------------------------------------------------------------------------------


def test_delete_removes_the_image_with_everything_that_goes_with_it(unique: Bucket, fallback: Bucket) -> None:
    record = unique.images.publish(webp(1), META)
    other = unique.images.publish(webp(2), META)
    assert unique.images.delete(record.id) is True
    assert files(unique) == {f"{other.id}.webp", f"{other.id}.json", f".framed/{other.id}.webp"}
    assert unique.index.ids() == [other.id] and unique.index.count() == 1
    assert unique.images.delete(record.id) is False

    kept = fallback.images.publish(webp(3), META)
    fallback.images.keep(kept.id)
    assert fallback.images.delete(kept.id) is True
    assert files(fallback) == set(), "the keep marker goes with its image"


def test_delete_of_an_image_a_visitor_is_being_sent_changes_nothing(unique: Bucket) -> None:
    record = unique.images.publish(webp(1), META)
    claim = unique.claims.claim()
    assert claim is not None and claim.id == record.id
    assert unique.images.delete(record.id) is False
    assert unique.images.metadata(record.id)["seed"] == META["seed"], "the claimed unique keeps its sidecar"
    unique.claims.release(record.id)  # not sent after all: it is back, whole
    assert unique.index.ids() == [record.id]


def test_a_delete_cut_short_leaves_nothing_recovery_would_serve(fallback: Bucket) -> None:
    """The image is renamed away first: whatever happens after, no visitor can be given it, and a restart
    removes the rest."""
    record = fallback.images.publish(webp(1), META)
    # What a crash right after the rename leaves: the image under .tmp/, its sidecar still in place.
    os.rename(fallback.directory / f"{record.id}.webp", fallback.directory / ".tmp" / f"0000-removed-{record.id}.webp")
    restarted = Bucket("fallback", fallback.directory)
    assert restarted.index.count() == 0 and restarted.index.random_id() is None
    restarted.repair.recover(stale_after=0)
    assert files(restarted) == set()


# --- keep -------------------------------------------------------------------------------------------------


def test_a_kept_fallback_is_never_retired_and_the_mark_survives_a_restart(fallback: Bucket) -> None:
    kept = fallback.images.publish(webp(1), META)
    other = fallback.images.publish(webp(2), META)
    record = fallback.images.keep(kept.id)
    assert record.kept and record.id == kept.id and record.metadata["seed"] == META["seed"]
    assert fallback.images.retire(kept.id) is False
    assert fallback.images.retire(other.id) is True

    restarted = Bucket("fallback", fallback.directory)
    restarted.repair.recover(stale_after=0)
    assert restarted.images.is_kept(kept.id) and restarted.images.retire(kept.id) is False
    assert [(r.id, r.kept) for r in restarted.images.newest(5)] == [(kept.id, True)]

    assert restarted.images.keep(kept.id, kept=False).kept is False
    assert restarted.images.retire(kept.id) is True


def test_keeping_an_image_that_is_not_there_is_not_found_and_leaves_no_marker(fallback: Bucket) -> None:
    with pytest.raises(ImageNotFound):
        fallback.images.keep("20250101T000000-000000-deadbeef")
    assert files(fallback) == set()
    with pytest.raises(ValueError, match="invalid image id"):
        fallback.images.keep("../escape")


def test_recovery_removes_keep_markers_whose_image_is_gone(fallback: Bucket) -> None:
    record = fallback.images.publish(webp(1), META)
    fallback.images.keep(record.id)
    (fallback.directory / f"{record.id}.webp").unlink()  # gone behind the bucket's back
    fallback.repair.recover()
    assert (fallback.directory / ".kept" / record.id).exists(), "fresh: another process may be keeping it now"
    fallback.repair.recover(stale_after=0)
    assert not (fallback.directory / ".kept" / record.id).exists()


# --- move -------------------------------------------------------------------------------------------------


def test_move_a_unique_into_the_fallback_bucket(unique: Bucket, fallback: Bucket) -> None:
    record = unique.images.publish(webp(1), META)
    moved = unique.move(record.id, fallback)
    assert (moved.id, moved.bucket) == (record.id, "fallback")
    assert files(unique) == set(), "image, sidecar and framed copy all gone from the unique bucket"
    assert files(fallback) == {f"{record.id}.webp", f"{record.id}.json"}
    assert fallback.images.read(record.id) == webp(1)
    assert fallback.images.metadata(record.id) == {**record.metadata, "moved_from": "unique"}
    assert unique.index.count() == 0 and fallback.index.count() == 1
    with pytest.raises(ImageNotFound):
        unique.move(record.id, fallback)


def test_a_fallback_moved_into_the_unique_bucket_is_framed_there(unique: Bucket, fallback: Bucket) -> None:
    record = fallback.images.publish(webp(1), META)
    fallback.images.keep(record.id)
    fallback.move(record.id, unique)
    assert files(fallback) == set()
    assert (unique.directory / ".framed" / f"{record.id}.webp").read_bytes() == frame(webp(1))
    claim = unique.claims.claim()
    assert claim is not None and claim.image == frame(webp(1))


def test_a_move_and_visitors_claiming_never_both_get_the_unique(unique: Bucket, fallback: Bucket) -> None:
    ids = [unique.images.publish(webp(n), META).id for n in range(40)]
    claimed: list[str] = []
    moved: list[str] = []
    start = threading.Barrier(2)

    def claim_all() -> None:
        start.wait()
        while (claim := unique.claims.claim()) is not None:
            claimed.append(claim.id)
            unique.claims.finish(claim.id)

    def move_all() -> None:
        start.wait()
        for image_id in ids:
            with contextlib.suppress(ImageNotFound):
                moved.append(unique.move(image_id, fallback).id)

    workers = [threading.Thread(target=claim_all), threading.Thread(target=move_all)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert sorted(claimed + moved) == sorted(ids)
    assert sorted(fallback.index.ids()) == sorted(moved)
    assert files(unique) == set()


def test_a_move_that_fails_puts_the_unique_back(unique: Bucket, tmp_path: Path) -> None:
    record = unique.images.publish(webp(1), META)
    target = Bucket("fallback", tmp_path / "fallback")
    (target.directory / ".tmp").rmdir()
    (target.directory / ".tmp").write_bytes(b"")  # the target cannot take it: its work folder is a file
    with pytest.raises(NotADirectoryError):
        unique.move(record.id, target)
    assert unique.index.ids() == [record.id]
    assert files(unique) == {f"{record.id}.webp", f"{record.id}.json", f".framed/{record.id}.webp"}


# --- held back for review ---------------------------------------------------------------------------------


def test_a_held_image_waits_in_the_review_folder_out_of_every_visitor_path(unique: Bucket) -> None:
    held = unique.held.hold(webp(1), {**META, "review": VERDICT})
    assert held.held
    assert files(unique) == {f".review/{held.id}.webp", f".review/{held.id}.json"}
    assert unique.index.count() == 0 and unique.index.ids() == [] and unique.claims.claim() is None
    assert unique.held.count() == 1
    [listed] = unique.held.newest(10)
    assert (listed.id, listed.held, listed.metadata["review"]) == (held.id, True, VERDICT)
    assert unique.held.read(held.id) == webp(1)
    with pytest.raises(ImageNotFound):
        unique.images.read(held.id)

    restarted = Bucket("unique", unique.directory, prepare=frame)
    restarted.repair.recover(stale_after=0)
    assert restarted.index.count() == 0 and restarted.claims.claim() is None, "recovery never publishes a held image"
    assert restarted.held.count() == 1


def test_approving_publishes_a_held_image_as_any_new_one(unique: Bucket) -> None:
    held = unique.held.hold(webp(1), {**META, "review": VERDICT})
    record = unique.held.approve(held.id)
    assert (record.id, record.held) == (held.id, False)
    assert files(unique) == {f"{held.id}.webp", f"{held.id}.json", f".framed/{held.id}.webp"}
    sidecar = json.loads((unique.directory / f"{held.id}.json").read_text())
    assert sidecar["review"]["held"] is True and sidecar["review"]["approved_at"].endswith("Z")
    assert unique.held.count() == 0 and unique.index.count() == 1
    claim = unique.claims.claim()
    assert claim is not None and claim.image == frame(webp(1))
    with pytest.raises(ImageNotFound):
        unique.held.approve(held.id)


def test_deleting_a_held_image(fallback: Bucket) -> None:
    held = fallback.held.hold(webp(1), {**META, "review": VERDICT})
    published = fallback.images.publish(webp(2), META)
    assert fallback.images.delete(held.id) is False, "delete is for published images"
    assert fallback.held.delete(published.id) is False, "delete_held is for held ones"
    assert fallback.held.delete(held.id) is True
    assert files(fallback) == {f"{published.id}.webp", f"{published.id}.json"}
    assert fallback.held.count() == 0


def test_recovery_finishes_nothing_for_held_images_but_tidies_their_leftovers(unique: Bucket) -> None:
    held = unique.held.hold(webp(1), {**META, "review": VERDICT})
    orphan = unique.held.hold(webp(2), META)
    (unique.directory / ".review" / f"{orphan.id}.webp").unlink()  # its image went, its sidecar stayed
    # An approval cut short after placing the sidecar in the bucket: the image is still held.
    (unique.directory / f"{held.id}.json").write_text(json.dumps(META))
    unique.repair.recover(stale_after=0)
    assert files(unique) == {f".review/{held.id}.webp", f".review/{held.id}.json", f"{held.id}.json"}
    assert unique.index.count() == 0
    unique.held.approve(held.id)  # done again later, it completes
    assert unique.index.ids() == [held.id]
