"""Buckets on real folders: publishing, counting, claiming across threads and processes, recovery."""

from __future__ import annotations

import asyncio
import io
import json
import multiprocessing
import os
import threading
import time
from datetime import datetime
from functools import partial
from pathlib import Path

import pytest
from PIL import Image

from avatargen.imaging import frame_unique
from avatargen.storage.errors import ImageNotFound
from avatargen.storage.files.bucket import Bucket
from avatargen.storage.files.repair import check_and_frame
from avatargen.storage.models import Recovery, check_id, new_id

META = {"prompt": "A painting of cjs", "seed": 7, "sampler": "DPM++ 2M", "steps": 20, "size": 256,
        "backend": "simulated", "generation_seconds": 1.5}


def webp(shade: int, size: int = 32) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), (shade % 256, 80, 160)).save(out, format="WEBP", quality=60)
    return out.getvalue()


def names(folder: Path) -> set[str]:
    return {path.name for path in folder.iterdir() if path.is_file()}


def test_publish_writes_image_and_sidecar_and_nothing_else(tmp_path: Path) -> None:
    bucket = Bucket("fallback", tmp_path / "fallback")
    record = bucket.images.publish(webp(1), META)
    assert check_id(record.id) == record.id
    assert names(bucket.directory) == {f"{record.id}.webp", f"{record.id}.json"}
    assert names(bucket.directory / ".tmp") == set()
    sidecar = json.loads((bucket.directory / f"{record.id}.json").read_text())
    assert sidecar == {**META, "created_at": record.metadata["created_at"]}
    assert sidecar["created_at"].endswith("Z")
    assert record.created_at == datetime.fromisoformat(sidecar["created_at"])
    assert bucket.images.read(record.id) == webp(1)
    assert bucket.images.metadata(record.id) == sidecar
    assert record.path == bucket.directory / f"{record.id}.webp"


def test_publish_keeps_a_given_created_at(tmp_path: Path) -> None:
    bucket = Bucket("fallback", tmp_path)
    record = bucket.images.publish(webp(1), {**META, "created_at": "2024-01-02T03:04:05Z"})
    assert bucket.images.metadata(record.id)["created_at"] == "2024-01-02T03:04:05Z"


def test_publish_refuses_bad_input(tmp_path: Path) -> None:
    bucket = Bucket("fallback", tmp_path)
    with pytest.raises(ValueError, match="stores WebP images"):
        bucket.images.publish(b"\x89PNG\r\n\x1a\n....", META)
    with pytest.raises(ValueError, match="JSON"):
        bucket.images.publish(webp(1), {"when": object()})
    with pytest.raises(ValueError, match="created_at"):
        bucket.images.publish(webp(1), {"created_at": "yesterday"})
    assert bucket.index.count() == 0
    assert names(tmp_path) == set() and names(tmp_path / ".tmp") == set()


def test_count_newest_random_delete(tmp_path: Path) -> None:
    bucket = Bucket("fallback", tmp_path)
    ids = [bucket.images.publish(webp(n), {**META, "seed": n}).id for n in range(5)]
    assert ids == sorted(ids), "ids sort by creation time"
    assert bucket.index.count() == 5
    assert [record.id for record in bucket.images.newest(3)] == ids[::-1][:3]
    assert [record.metadata["seed"] for record in bucket.images.newest(10)] == [4, 3, 2, 1, 0]
    assert {bucket.index.random_id() for _ in range(50)} <= set(ids)
    assert bucket.images.delete(ids[0]) is True
    assert bucket.images.delete(ids[0]) is False
    assert not (tmp_path / f"{ids[0]}.json").exists()
    assert bucket.index.count() == 4
    with pytest.raises(ImageNotFound, match="no image"):
        bucket.images.read(ids[0])
    # another instance (another process) sees the same folder
    assert sorted(Bucket("fallback", tmp_path).index.ids()) == ids[1:]


def test_ids_from_outside_are_validated(tmp_path: Path) -> None:
    bucket = Bucket("unique", tmp_path / "unique")
    (tmp_path / "secret.webp").write_bytes(webp(1))
    for bad in ("../secret", "a/b", "", ".hidden", "x" * 101, "a.b", "abc\n"):
        with pytest.raises(ValueError, match="invalid image id"):
            bucket.images.read(bad)
        with pytest.raises(ValueError, match="invalid image id"):
            bucket.images.delete(bad)
        with pytest.raises(ValueError, match="invalid image id"):
            check_id(bad)
    with pytest.raises(ValueError) as refused:
        check_id("x" * 60_000)
    assert len(str(refused.value)) < 200, "an id from a URL is not echoed back whole"
    with pytest.raises(ValueError, match="invalid image id"):
        bucket.claims.finish("../../secret")
    assert (tmp_path / "secret.webp").exists()


def test_new_ids_are_time_sortable_and_distinct() -> None:
    ids = [new_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    times = [image_id[:22] for image_id in ids]  # 20261124T235959-123456: UTC time to the microsecond
    assert times == sorted(times)


def test_work_files_and_claimed_images_are_never_counted(tmp_path: Path) -> None:
    bucket = Bucket("unique", tmp_path)
    published = {bucket.images.publish(webp(n), META).id for n in range(2)}
    (tmp_path / ".tmp" / "half-written.webp").write_bytes(webp(3)[:10])
    (tmp_path / "notes.txt").write_text("not an image")
    claim = bucket.claims.claim()
    assert claim is not None
    fresh = Bucket("unique", tmp_path)
    assert fresh.index.ids() == bucket.index.ids() == list(published - {claim.id})


def test_claim_finish_and_release(tmp_path: Path) -> None:
    bucket = Bucket("unique", tmp_path)
    record = bucket.images.publish(webp(9), META)
    claim = bucket.claims.claim()
    assert claim is not None
    assert (claim.id, claim.image, claim.metadata["prompt"]) == (record.id, webp(9), META["prompt"])
    assert bucket.index.count() == 0
    assert bucket.claims.claim() is None
    bucket.claims.release(claim.id)
    assert bucket.index.count() == 1
    again = bucket.claims.claim()
    assert again is not None and again.id == record.id
    bucket.claims.finish(again.id)
    assert names(tmp_path) == set() and names(tmp_path / ".claimed") == set()
    assert bucket.claims.claim() is None


def test_claim_returns_the_framed_copy_made_at_publish(tmp_path: Path) -> None:
    frame = partial(frame_unique, quality=60)
    bucket = Bucket("unique", tmp_path, prepare=frame)
    stored = webp(5, size=128)
    record = bucket.images.publish(stored, META)
    framed_copy = tmp_path / ".framed" / f"{record.id}.webp"
    assert framed_copy.read_bytes() == frame(stored)
    assert bucket.images.read(record.id) == stored, "the bucket keeps the plain image"
    claim = bucket.claims.claim()
    assert claim is not None and claim.image == frame(stored)
    bucket.claims.finish(claim.id)
    assert not framed_copy.exists()


def test_claim_frames_on_the_fly_when_the_copy_is_missing(tmp_path: Path) -> None:
    frame = partial(frame_unique, quality=60)
    Bucket("unique", tmp_path).images.publish(webp(5, size=128), META)  # published by a bucket that does not frame
    claim = Bucket("unique", tmp_path, prepare=frame).claims.claim()
    assert claim is not None and claim.image == frame(webp(5, size=128))


def test_count_does_not_rescan_an_unchanged_folder(tmp_path: Path) -> None:
    writer = Bucket("fallback", tmp_path)
    for n in range(20):
        writer.images.publish(webp(n), META)
    long_ago = time.time_ns() - 60 * 10**9
    os.utime(tmp_path, ns=(long_ago, long_ago))
    reader = Bucket("fallback", tmp_path, recheck_every=0)
    assert [reader.index.count() for _ in range(200)] == [20] * 200
    assert reader.index.random_id() is not None
    assert reader.index.scans == 1
    writer.images.publish(webp(99), META)  # another process's change moves the folder's mtime
    assert reader.index.count() == 21
    assert reader.index.scans == 2


def test_own_changes_show_without_waiting_for_a_rescan(tmp_path: Path) -> None:
    bucket = Bucket("fallback", tmp_path, recheck_every=3600)
    assert bucket.index.count() == 0
    record = bucket.images.publish(webp(1), META)
    assert bucket.index.count() == 1
    bucket.images.delete(record.id)
    assert bucket.index.count() == 0
    assert bucket.index.scans == 1


def test_recover_repairs_what_a_crash_left(tmp_path: Path) -> None:
    frame = partial(frame_unique, quality=60)
    bucket = Bucket("unique", tmp_path, prepare=frame)
    unsent = bucket.images.publish(webp(1), META)
    kept = bucket.images.publish(webp(2), META)
    while (claim := bucket.claims.claim()) is not None and claim.id != unsent.id:
        bucket.claims.release(claim.id)
    (tmp_path / ".framed" / f"{kept.id}.webp").unlink()
    (tmp_path / ".tmp" / "0000-leftover.webp").write_bytes(b"half")
    (tmp_path / "20200101T000000-000000-deadbeef.json").write_text("{}")
    (tmp_path / ".framed" / "20200101T000000-000000-deadbeef.webp").write_bytes(b"old")

    assert Bucket("unique", tmp_path, prepare=frame).repair.recover() == Recovery(temp_removed=1), \
        "fresh claims and sidecars may belong to a claim or publish running in another process"

    restarted = Bucket("unique", tmp_path, prepare=frame, recheck_every=3600)
    assert restarted.repair.recover(stale_after=0) == Recovery(released=1, orphans_removed=1)
    assert restarted.index.scans == 1, "the listing recovery took is the index: no second scan"
    assert sorted(restarted.index.ids()) == sorted([unsent.id, kept.id])
    assert restarted.index.scans == 1
    assert restarted.repair.inspect(restarted.index.ids()) == [kept.id]
    assert restarted.repair.remove_orphan_copies(stale_after=0) == 1, "the framed copy without its image"
    asyncio.run(check_and_frame(restarted.repair))
    assert names(tmp_path) == {f"{i}.{ext}" for i in (unsent.id, kept.id) for ext in ("webp", "json")}
    assert names(tmp_path / ".framed") == {f"{unsent.id}.webp", f"{kept.id}.webp"}
    assert names(tmp_path / ".tmp") == names(tmp_path / ".claimed") == set()
    assert (tmp_path / ".framed" / f"{kept.id}.webp").read_bytes() == frame(webp(2))


def _claimer_process(directory: Path, gate: multiprocessing.synchronize.Barrier,
                     results: multiprocessing.Queue) -> None:
    """One process: 8 threads claim until the bucket is empty; reports the ids this process won."""
    bucket = Bucket("unique", directory)
    bucket.index.count()
    won: list[str] = []
    ready = threading.Barrier(8)
    gate.wait()

    def claimer() -> None:
        ready.wait()
        while (claim := bucket.claims.claim()) is not None:
            won.append(claim.id)
            bucket.claims.finish(claim.id)

    workers = [threading.Thread(target=claimer) for _ in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    results.put(won)


def test_two_processes_of_eight_threads_claim_each_image_exactly_once(tmp_path: Path) -> None:
    bucket = Bucket("unique", tmp_path)
    published = {bucket.images.publish(webp(n), {**META, "seed": n}).id for n in range(500)}
    context = multiprocessing.get_context("spawn")
    gate, results = context.Barrier(2), context.Queue()
    processes = [context.Process(target=_claimer_process, args=(tmp_path, gate, results)) for _ in range(2)]
    for process in processes:
        process.start()
    won = [results.get(timeout=30) for _ in processes]
    for process in processes:
        process.join(timeout=10)
        assert process.exitcode == 0
    claimed = won[0] + won[1]
    assert len(claimed) == len(set(claimed)), "an image was claimed twice"
    assert set(claimed) == published, "an image was lost"
    assert all(won), "both processes took part"
    assert names(tmp_path) == set() and names(tmp_path / ".claimed") == set()


def cut_short(path: Path) -> None:
    """Truncate a file to half its size, as a full disk or an interrupted copy leaves it."""
    os.truncate(path, path.stat().st_size // 2)


def test_recover_sets_a_broken_image_aside_instead_of_failing(tmp_path: Path) -> None:
    frame = partial(frame_unique, quality=60)
    bucket = Bucket("unique", tmp_path, prepare=frame)
    broken, good = (bucket.images.publish(webp(n, size=64), META).id for n in range(2))
    cut_short(tmp_path / f"{broken}.webp")
    (tmp_path / ".framed" / f"{broken}.webp").unlink()
    restarted = Bucket("unique", tmp_path, prepare=frame)
    restarted.repair.recover()
    asyncio.run(check_and_frame(restarted.repair))
    assert restarted.index.ids() == [good]
    assert names(tmp_path / ".rejected") == {f"{broken}.webp", f"{broken}.json"}
    assert restarted.images.rejected() == 1
    assert Bucket("unique", tmp_path).images.rejected() == 1, "counted by any process"


def test_a_sidecar_that_is_not_an_object_is_skipped(tmp_path: Path) -> None:
    bucket = Bucket("fallback", tmp_path)
    odd, fine = (bucket.images.publish(webp(n), META).id for n in range(2))
    (tmp_path / f"{odd}.json").write_text("[]")
    assert [record.id for record in bucket.images.newest(10)] == [fine]
    with pytest.raises(ValueError, match="not a JSON object"):
        bucket.images.metadata(odd)
