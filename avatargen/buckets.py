"""Buckets: folders of generated avatars that several processes publish into, serve from and claim from.

Layout (the contract): `<dir>/<id>.webp` is an image and `<dir>/<id>.json` its metadata; only `*.webp`
directly in the folder are images. Work files live in `<dir>/.tmp/`, claimed uniques in `<dir>/.claimed/`,
pre-framed copies (made by a bucket's `prepare` hook) in `<dir>/.framed/`, images the safety gate held
back (with their sidecars) in `<dir>/.review/` until the owner approves or deletes them, images found broken
in `<dir>/.rejected/` (set aside with their sidecars for the owner to look at), and an empty
`<dir>/.kept/<id>` marks an image the owner keeps for good (never retired), all on one filesystem so
that `os.rename` is atomic. The filesystem is the only arbiter between processes: a unique is claimed by
renaming it away, and whoever's rename fails lost the race. Each Bucket keeps an in-memory index of the
ids so that counting and random picks never scan 10,000 files per call; it notices other processes'
changes from the folder's mtime.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import os
import random
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from avatargen.config import Settings
from avatargen.files import PRIVATE_FILE, private_folder, sync_folder, write_atomically
from avatargen.imaging import ImageError, check_webp, check_webp_header, sniff_format
from avatargen.timestamps import utc_iso
from avatargen.variants import check_archive, framed_variants

log = logging.getLogger("avatargen.buckets")

IMAGE_SUFFIX = ".webp"
META_SUFFIX = ".json"
_ID = re.compile(r"[A-Za-z0-9_-]{1,100}")  # used with fullmatch: `$` would also accept a trailing newline
# How much of a rejected id an error message quotes: ids come from URLs, and a 60 kB one must not be echoed.
_QUOTED_ID = 40
# A directory mtime this close to the moment it was read may still change within the same clock tick
# (coarse filesystem timestamps), so the scan that read it is redone at the next check.
_RACY_NS = 1_000_000_000
# A claimed unique is sent within milliseconds; one claimed longer ago than this belongs to a process that
# died before sending it. Fresh claims must be left alone: another worker may be sending them right now.
CLAIM_TIMEOUT = 60.0


class ImageNotFound(LookupError):
    """No image with that id in the bucket (never published, claimed or deleted meanwhile)."""


class BadImage(ImageNotFound):
    """The image's file is not a whole WebP image: it was set aside, so it is no longer in the bucket."""


def check_id(image_id: str) -> str:
    """Return the id if it is safe to use in a file name (no path traversal); else raise ValueError."""
    if not isinstance(image_id, str) or not _ID.fullmatch(image_id):
        quoted = repr(image_id)
        if len(quoted) > _QUOTED_ID:
            quoted = quoted[:_QUOTED_ID] + "..."
        raise ValueError(f"invalid image id {quoted}: expected 1-100 letters, digits, '-' or '_'")
    return image_id


def new_id(now: datetime | None = None) -> str:
    """A fresh image id that sorts by creation time: `20261124T235959-123456-1a2b3c4d` (UTC, µs, random)."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%S-%f}-{secrets.token_hex(4)}"


def stamped(bucket: str, image: bytes, metadata: dict[str, Any],
            image_id: str | None = None) -> tuple[str, dict[str, Any], datetime]:
    """What publishing an image into `bucket` stores, whatever the backend: its id (new unless given), its
    metadata with `created_at` (now, unless given) and that moment. ValueError when the image is not WebP or
    the metadata is not JSON with an ISO 8601 `created_at`."""
    if sniff_format(image) != "WEBP":
        raise ValueError(f"the {bucket} bucket stores WebP images; got data starting {image[:12]!r}")
    now = datetime.now(UTC)
    image_id = check_id(image_id) if image_id is not None else new_id(now)
    metadata = {**metadata, "created_at": metadata.get("created_at") or utc_iso(now)}
    try:
        created_at = datetime.fromisoformat(metadata["created_at"])
        json.dumps(metadata)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"image metadata must be JSON with an ISO 8601 created_at: {exc}") from None
    return image_id, metadata, created_at


@dataclass(frozen=True)
class ImageRecord:
    """One stored image: where it is (None in a bucket that lives in Redis) and what its sidecar says."""

    id: str
    bucket: str
    path: Path | None
    metadata: dict[str, Any]
    created_at: datetime
    kept: bool = False  # the owner keeps it for good: never retired
    held: bool = False  # held back by the safety gate, waiting in the review folder: never served


@dataclass(frozen=True)
class Recovery:
    """What start-up recovery did to a bucket."""

    released: int = 0  # claimed uniques never sent, put back
    temp_removed: int = 0  # work files left in .tmp/
    orphans_removed: int = 0  # sidecars and framed copies whose image is gone

    def summary(self) -> dict[str, int]:
        """The counts, for the log (empty when there was nothing to do)."""
        counts = {"released": self.released, "temp_removed": self.temp_removed, "orphans_removed": self.orphans_removed}
        return {name: count for name, count in counts.items() if count}


@dataclass(frozen=True)
class Claim:
    """A unique taken out of its bucket: `image` is what the visitor gets (framed when the bucket frames)."""

    id: str
    image: bytes
    metadata: dict[str, Any]


class _Index:
    """The ids in a folder: O(1) add, remove, count and random pick (a list plus positions)."""

    def __init__(self, ids: list[str]) -> None:
        self._ids = ids
        self._positions = {image_id: n for n, image_id in enumerate(ids)}

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._positions

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def add(self, image_id: str) -> None:
        if image_id not in self._positions:
            self._positions[image_id] = len(self._ids)
            self._ids.append(image_id)

    def discard(self, image_id: str) -> None:
        position = self._positions.pop(image_id, None)
        if position is None:
            return
        last = self._ids.pop()
        if last != image_id:
            self._ids[position] = last
            self._positions[last] = position

    def choice(self) -> str | None:
        return random.choice(self._ids) if self._ids else None


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def _created_at(metadata: dict[str, Any], path: Path) -> datetime:
    """When an image was made: its sidecar's `created_at`, else its file's mtime."""
    created = metadata.get("created_at")
    return datetime.fromisoformat(created) if isinstance(created, str) else datetime.fromtimestamp(
        path.stat().st_mtime, UTC)


def _names(folder: Path) -> list[str]:
    """The names in a folder (none if it does not exist)."""
    try:
        return os.listdir(folder)
    except FileNotFoundError:
        return []


def _ids_in(folder: Path, suffix: str, names: list[str] | None = None) -> set[str]:
    """The ids of the `<id><suffix>` entries in a folder (or in `names`, a listing of it already taken)."""
    cut = len(suffix)
    return {name[:-cut] for name in (_names(folder) if names is None else names)
            if name.endswith(suffix) and _ID.fullmatch(name, 0, len(name) - cut)}


def _header_problem(path: Path) -> str | None:
    """What is wrong with an image file, judged by its first 12 bytes against its size; None if nothing."""
    with path.open("rb") as image:
        head = image.read(12)
        size = os.fstat(image.fileno()).st_size
    try:
        check_webp_header(head, size)
    except ImageError as exc:
        return str(exc)
    return None


def _move(source: Path, target: Path) -> bool:
    try:
        os.rename(source, target)
    except FileNotFoundError:
        return False
    return True


def _is_stale(path: Path, older_than: float, *, since_rename: bool = False) -> bool:
    """Whether a file was last written (or, since_rename, renamed: that moves its ctime) long enough ago.

    A file that vanished meanwhile is not stale: another process is dealing with it.
    """
    try:
        stat = path.stat()
    except FileNotFoundError:
        return False
    return time.time() - (stat.st_ctime if since_rename else stat.st_mtime) >= older_than


class Bucket:
    """One folder of avatars, safe to share between threads of this process and other processes.

    `prepare` (the unique bucket's framing) maps stored WebP bytes to the bytes a claimer receives; its
    result is written to `.framed/` at publish time so that claiming costs a rename and a read.
    `check_prepared` raises ImageError for a framed copy that is not whole (default: a WebP file; the
    server's unique bucket stores an archive of framed variants, `avatargen.variants`).
    `recheck_every` bounds how often the folder's mtime is looked at to notice other processes.
    """

    def __init__(self, name: str, directory: Path, *, prepare: Callable[[bytes], bytes] | None = None,
                 check_prepared: Callable[[bytes], None] = check_webp, recheck_every: float = 1.0) -> None:
        self.name = name
        self.directory = Path(directory)
        self._image_prefix = os.path.join(self.directory, "")  # `servable`'s paths, built as plain strings
        self.prepare = prepare
        self.check_prepared = check_prepared
        self.recheck_every = recheck_every
        self.scans = 0  # how many times the folder was listed: lets tests and the admin see it stays cheap
        self._tmp = self.directory / ".tmp"
        self._claimed = self.directory / ".claimed"
        self._framed = self.directory / ".framed"
        self._review = self.directory / ".review"
        self._kept = self.directory / ".kept"
        self._rejected = self.directory / ".rejected"
        for folder in self.folders:
            private_folder(folder)
        self._lock = threading.Lock()
        self._index = _Index([])
        self._stamp: int | None = None
        self._racy = True
        self._checked_at = float("-inf")
        self._unlisted: str | None = None  # why the last look at the folder failed (logged once)
        self._held: int | None = None  # images in .review/ (see recount_held)
        self._held_stamp: int | None = None

    def __repr__(self) -> str:
        return f"Bucket({self.name!r}, {str(self.directory)!r})"

    @property
    def folders(self) -> tuple[Path, ...]:
        """Every folder the bucket writes to (start-up proves each one writable before the server listens)."""
        return (self.directory, self._tmp, self._claimed, self._review, self._kept, self._rejected,
                *([self._framed] if self.prepare else []))

    # --- the in-memory index -------------------------------------------------------------------------

    def _image_path(self, image_id: str) -> Path:
        return self.directory / f"{image_id}{IMAGE_SUFFIX}"

    def _meta_path(self, image_id: str) -> Path:
        return self.directory / f"{image_id}{META_SUFFIX}"

    def _framed_path(self, image_id: str) -> Path:
        return self._framed / f"{image_id}{IMAGE_SUFFIX}"

    def _claimed_path(self, image_id: str) -> Path:
        return self._claimed / f"{image_id}{IMAGE_SUFFIX}"

    def _held_path(self, image_id: str) -> Path:
        return self._review / f"{image_id}{IMAGE_SUFFIX}"

    def _held_meta_path(self, image_id: str) -> Path:
        return self._review / f"{image_id}{META_SUFFIX}"

    def _kept_path(self, image_id: str) -> Path:
        return self._kept / image_id

    def _scan(self) -> tuple[set[str], set[str]]:
        """One listing of the folder: the ids of its images and of its sidecars."""
        self.scans += 1
        names = os.listdir(self.directory)
        return _ids_in(self.directory, IMAGE_SUFFIX, names), _ids_in(self.directory, META_SUFFIX, names)

    def _install(self, ids: list[str], stamp: int | None) -> None:
        """Replace the index with a listing taken when the folder's mtime was `stamp` (lock held)."""
        self._index = _Index(ids)
        self._stamp = stamp
        self._racy = stamp is None or time.time_ns() - stamp < _RACY_NS
        self._checked_at = time.monotonic()

    def _refresh(self) -> None:
        """Rescan only if the folder changed since the last scan; look at most once per `recheck_every`.

        Called with the lock held. Our own publish/claim/delete update the index directly; the mtime
        check is for other processes, and a scan taken in the same clock tick as a change is redone.
        """
        now = time.monotonic()
        if now - self._checked_at < self.recheck_every:
            return
        self._checked_at = now
        try:
            stamp = os.stat(self.directory).st_mtime_ns
            if stamp == self._stamp and not self._racy:
                return
            images = self._scan()[0]
        except OSError as exc:  # gone or unreadable: nothing in it can be served, and its level is unknown
            if not self._unlisted:
                log.error("the %s bucket's folder cannot be listed: nothing is served from it, and no run fills "
                          "it, until it can: %s", self.name, exc)
            self._unlisted = f"the {self.name} bucket's folder cannot be listed: {exc}"
            self._install([], None)
            return
        self._unlisted = None
        self._install(list(images), stamp)

    def count(self) -> int:
        """How many images are in the bucket (claimed ones excluded), without listing the folder each time."""
        with self._lock:
            self._refresh()
            return len(self._index)

    def ids(self) -> list[str]:
        """All image ids, in no particular order."""
        with self._lock:
            self._refresh()
            return list(self._index)

    def random_id(self) -> str | None:
        """A random image id from the index, or None when the bucket is empty."""
        with self._lock:
            self._refresh()
            return self._index.choice()

    def forget(self, image_id: str) -> None:
        """Drop an id found gone (another process took it) from the index until the next rescan."""
        with self._lock:
            self._index.discard(image_id)

    def servable(self, image_id: str) -> bool:
        """Whether the image is in the bucket right now, in every process's eyes: one stat of its file, which
        the owner's delete, a retirement, a move or a claim (all renames) take away at once."""
        # A plain string path: this runs for every fallback answer from memory, where building a Path cost
        # more than the stat itself (a profile under wrk).
        return os.path.exists(f"{self._image_prefix}{check_id(image_id)}{IMAGE_SUFFIX}")

    def unknown(self) -> str | None:
        """Why `count` cannot be trusted now (the folder could not be listed at the last look); None if it can."""
        return self._unlisted

    # --- reading -------------------------------------------------------------------------------------

    def read(self, image_id: str) -> bytes:
        """The stored WebP bytes of an image; ImageNotFound if it is not (or no longer) in the bucket.

        Bytes that are not a whole WebP file are never returned: the image is set aside (BadImage).
        """
        path = self._image_path(check_id(image_id))
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ImageNotFound(f"no image {image_id!r} in the {self.name} bucket") from None
        return self._whole(image_id, path, data)

    def _whole(self, image_id: str, path: Path, data: bytes) -> bytes:
        """`data`, read from `path`, if it is a whole WebP file; else the image is set aside (BadImage)."""
        try:
            check_webp(data)
        except ImageError as exc:
            self.set_aside(image_id, path, str(exc))
            raise BadImage(f"image {image_id!r} of the {self.name} bucket was set aside: {exc}") from None
        return data

    def set_aside(self, image_id: str, path: Path, reason: str) -> None:
        """Move a broken image (found at `path`: in the bucket or claimed) and its sidecar to `.rejected/`.

        Out of the bucket for good, but kept for the owner to look at; its framed copy is only derived
        from it, so that goes. Never raises: a file another process moved first is fine, and a folder
        that refuses the move (read-only) leaves the image where it is, forgotten until the next rescan.
        """
        self.forget(image_id)
        try:
            moved = _move(path, self._rejected / f"{image_id}{IMAGE_SUFFIX}")
            _move(self._meta_path(image_id), self._rejected / f"{image_id}{META_SUFFIX}")
            _unlink(self._framed_path(image_id))
        except OSError as exc:
            log.error("image %s of the %s bucket is broken (%s) and cannot be set aside: %s",
                      image_id, self.name, reason, exc)
            return
        if moved:
            log.warning("image %s of the %s bucket set aside in %s: %s", image_id, self.name, self._rejected, reason)

    def rejected(self) -> int:
        """How many images were set aside as broken (in `.rejected/`, by any process, until the owner clears it)."""
        try:
            with os.scandir(self._rejected) as entries:
                return sum(entry.name.endswith(IMAGE_SUFFIX) for entry in entries)
        except FileNotFoundError:
            return 0

    def metadata(self, image_id: str) -> dict[str, Any]:
        """The sidecar of an image (also while it is claimed); ImageNotFound if there is none, ValueError if it
        is not a JSON object."""
        try:
            metadata = json.loads(self._meta_path(check_id(image_id)).read_bytes())
        except FileNotFoundError:
            raise ImageNotFound(f"no metadata for image {image_id!r} in the {self.name} bucket") from None
        if not isinstance(metadata, dict):
            raise ValueError(f"the sidecar of image {image_id!r} in the {self.name} bucket is not a JSON object")
        return metadata

    def newest(self, n: int) -> list[ImageRecord]:
        """The `n` newest images, newest first (ids sort by creation time); ones gone meanwhile are skipped."""
        kept = set(os.listdir(self._kept))
        records = []
        for image_id in heapq.nlargest(max(0, n), self.ids()):
            path = self._image_path(image_id)
            try:
                metadata = self.metadata(image_id)  # ValueError for one that is not a JSON object: skipped
                created_at = _created_at(metadata, path)
            except (ImageNotFound, FileNotFoundError, ValueError):
                continue
            records.append(ImageRecord(image_id, self.name, path, metadata, created_at, kept=image_id in kept))
        return records

    # --- writing -------------------------------------------------------------------------------------

    def publish(self, image: bytes, metadata: dict[str, Any], *, prepared: bytes | None = None,
                image_id: str | None = None) -> ImageRecord:
        """Store a WebP image with its metadata, atomically: it is visible complete, with its sidecar, or not at all.

        Each file (sidecar, framed copy if the bucket frames, image) is written under `.tmp/`, fsynced
        and renamed into place, in that order: a visible image always has its metadata, and a claimer
        always finds its framed copy. `created_at` (ISO 8601 UTC) is added when missing. `prepared` is
        the framed copy when the caller already made it (the generator does, off the server's process).
        `image_id` keeps the id an image already has (one moved from another bucket, or migrated).
        """
        image_id, metadata, created_at, sidecar = self._prepare_files(image, metadata, image_id)
        files = [(sidecar, self._meta_path(image_id))]
        if self.prepare is not None:
            files.append((self.prepare(image) if prepared is None else prepared, self._framed_path(image_id)))
        files.append((image, self._image_path(image_id)))
        self._place_all(files)
        if self.prepare is not None:
            sync_folder(self._framed)
        sync_folder(self.directory)
        with self._lock:
            self._index.add(image_id)
        return ImageRecord(image_id, self.name, self._image_path(image_id), metadata, created_at)

    def hold(self, image: bytes, metadata: dict[str, Any], *, image_id: str | None = None) -> ImageRecord:
        """Store an image the safety gate held back in the review folder, as `publish` stores one in the
        bucket (sidecar first, then the image): out of the bucket, so no visitor and no recovery ever serves
        it, until the owner approves it. `metadata` says why (`review`); `image_id` keeps a migrated one's."""
        image_id, metadata, created_at, sidecar = self._prepare_files(image, metadata, image_id)
        fresh = not self._held_path(image_id).exists()
        self._place_all([(sidecar, self._held_meta_path(image_id)), (image, self._held_path(image_id))])
        sync_folder(self._review)
        self._held_changed(fresh)
        return ImageRecord(image_id, self.name, self._held_path(image_id), metadata, created_at, held=True)

    def _prepare_files(self, image: bytes, metadata: dict[str, Any],
                       image_id: str | None) -> tuple[str, dict[str, Any], datetime, bytes]:
        """The id, metadata (with `created_at`), creation time and sidecar bytes of an image to store."""
        image_id, metadata, created_at = stamped(self.name, image, metadata, image_id)
        return image_id, metadata, created_at, json.dumps(metadata, ensure_ascii=False, indent=1).encode()

    def _place_all(self, files: list[tuple[bytes, Path]]) -> None:
        """Place files in order; if one fails, the ones already placed are removed again."""
        placed: list[Path] = []
        try:
            for data, final in files:
                self._place(data, final)
                placed.append(final)
        except BaseException:
            for path in placed:
                _unlink(path)
            raise

    def _place(self, data: bytes, final: Path) -> None:
        """Write a file by way of `.tmp/`: it appears whole or not at all (the caller fsyncs the folder)."""
        write_atomically(final, data, work_dir=self._tmp, sync=False)

    def framed(self, image_id: str) -> bytes | None:
        """The framed copy of an image, None when it has none (yet)."""
        try:
            return self._framed_path(check_id(image_id)).read_bytes()
        except FileNotFoundError:
            return None

    def _remove(self, image: Path, companions: tuple[Path, ...]) -> bool:
        """Remove an image and the files that go with it, as one step for everyone else: the image is first
        renamed into `.tmp/` (gone at once for visitors, claimers and listings, in every process; a crash
        right after leaves only work files and a sidecar without its image, which recovery removes), then
        the rest is deleted. False, and nothing touched, when the image was not there."""
        doomed = self._tmp / f"{secrets.token_hex(4)}-removed-{image.name}"
        try:
            os.rename(image, doomed)
        except FileNotFoundError:
            return False
        for path in companions:
            _unlink(path)
        _unlink(doomed)
        return True

    def delete(self, image_id: str) -> bool:
        """Remove an image with its sidecar, framed copy and keep marker; False if it was not in the bucket."""
        removed = self._remove(self._image_path(check_id(image_id)), (
            self._meta_path(image_id), self._framed_path(image_id), self._kept_path(image_id)))
        self.forget(image_id)
        return removed

    def retire(self, image_id: str) -> bool:
        """Delete a served fallback to make room for new ones, unless the owner keeps it; whether it went."""
        return not self.is_kept(image_id) and self.delete(image_id)

    # --- the owner's word ----------------------------------------------------------------------------

    def is_kept(self, image_id: str) -> bool:
        """Whether the owner keeps this image for good (its marker is on disk: every process sees it)."""
        return self._kept_path(check_id(image_id)).exists()

    def keep(self, image_id: str, kept: bool = True) -> ImageRecord:
        """Keep an image for good (never retired), or undo that; ImageNotFound if it is not in the bucket."""
        marker = self._kept_path(check_id(image_id))
        if kept:
            marker.touch(mode=PRIVATE_FILE)
            sync_folder(self._kept)
        else:
            _unlink(marker)
        try:
            return self._record(image_id)
        except ImageNotFound:
            _unlink(marker)  # deleted or claimed meanwhile: no marker without its image
            raise

    def _record(self, image_id: str) -> ImageRecord:
        """The record of an image in the bucket; ImageNotFound if it is not there."""
        path = self._image_path(image_id)
        try:
            metadata = self.metadata(image_id)
            created_at = _created_at(metadata if isinstance(metadata, dict) else {}, path)
        except (ImageNotFound, FileNotFoundError, ValueError):
            if not path.exists():
                raise ImageNotFound(f"no image {image_id!r} in the {self.name} bucket") from None
            metadata, created_at = {}, datetime.fromtimestamp(path.stat().st_mtime, UTC)
        return ImageRecord(image_id, self.name, path, metadata, created_at,
                           kept=self._kept_path(image_id).exists())

    def move(self, image_id: str, target: Bucket) -> ImageRecord:
        """Move an image into another bucket under the same id; ImageNotFound if it is not in this one.

        It is claimed first (the rename into `.claimed/` that visitors race for), so a visitor gets it or
        the move does, never both; then published in the target as any new image is (framed there if the
        target frames), and only then removed here with its framed copy and keep marker. Works across
        filesystems. A failure puts it back.
        """
        claimed = self._claimed_path(check_id(image_id))
        try:
            os.rename(self._image_path(image_id), claimed)
        except FileNotFoundError:
            raise ImageNotFound(f"no image {image_id!r} in the {self.name} bucket") from None
        self.forget(image_id)
        try:
            metadata = {**self._claimed_metadata(image_id), "moved_from": self.name}
            record = target.publish(claimed.read_bytes(), metadata, image_id=image_id)
        except BaseException:
            self.release_claim(image_id)
            raise
        self.finish_claim(image_id)
        _unlink(self._kept_path(image_id))
        return record

    # --- held back by the safety gate ----------------------------------------------------------------

    def held_count(self) -> int:
        """How many images wait in the review folder, as of the last count: no listing here, as the status
        and the level events ask on the event loop, and `.review/` may hold 200,000 images (a listing of
        those stalled visitors for 229 ms). Counted here only when nothing counted it before."""
        if self._held is None:
            self.recount_held()
        return self._held or 0

    def recount_held(self) -> bool:
        """Count the images in `.review/` again if it changed since the last count (its mtime, redone when
        read in the tick of a change); whether it counted. Blocks on the listing: start-up recovery and the
        server's upkeep (`FolderBucket.follow`) call it from a worker thread. This process's own holds,
        approvals and deletions of held images adjust the count at once."""
        try:
            stamp: int | None = os.stat(self._review).st_mtime_ns
        except FileNotFoundError:
            stamp = None
        if stamp is not None and stamp == self._held_stamp and self._held is not None:
            return False
        count = len(_ids_in(self._review, IMAGE_SUFFIX))
        with self._lock:
            self._held = count
            self._held_stamp = None if stamp is None or time.time_ns() - stamp < _RACY_NS else stamp
        return True

    def _held_changed(self, by: int) -> None:
        with self._lock:
            if self._held is not None:
                self._held = max(0, self._held + by)

    def held(self, n: int) -> list[ImageRecord]:
        """The `n` newest images held back for review, newest first."""
        records = []
        for image_id in heapq.nlargest(max(0, n), _ids_in(self._review, IMAGE_SUFFIX)):
            path = self._held_path(image_id)
            metadata = self._held_metadata(image_id)
            try:
                records.append(ImageRecord(image_id, self.name, path, metadata, _created_at(metadata, path),
                                           held=True))
            except (FileNotFoundError, ValueError):
                continue  # approved or deleted meanwhile, or a sidecar with a created_at that is not a time
        return records

    def _held_metadata(self, image_id: str) -> dict[str, Any]:
        """The sidecar of a held image; empty when it is missing or not a JSON object (the image is what counts)."""
        try:
            metadata = json.loads(self._held_meta_path(image_id).read_bytes())
        except (FileNotFoundError, ValueError):
            return {}
        return metadata if isinstance(metadata, dict) else {}

    def read_held(self, image_id: str) -> bytes:
        """The bytes of an image held back for review (for the owner's eyes only)."""
        try:
            return self._held_path(check_id(image_id)).read_bytes()
        except FileNotFoundError:
            raise ImageNotFound(f"no image {image_id!r} held back in the {self.name} bucket") from None

    def delete_held(self, image_id: str) -> bool:
        """Delete an image held back for review, with its sidecar; False if none is held with that id."""
        # An approval cut short by a crash may have placed the sidecar in the bucket already: it goes too.
        unfinished = () if self._image_path(check_id(image_id)).exists() else (self._meta_path(image_id),)
        removed = self._remove(self._held_path(image_id), (self._held_meta_path(image_id), *unfinished))
        self._held_changed(-removed)
        return removed

    def approve(self, image_id: str) -> ImageRecord:
        """Publish an image the owner approved after the gate held it back, as any new image is published:
        its sidecar (noting the approval) and framed copy first, then the image, renamed in from the review
        folder. ImageNotFound when none is held with that id."""
        held = self._held_path(check_id(image_id))
        try:
            image = held.read_bytes()
        except FileNotFoundError:
            raise ImageNotFound(f"no image {image_id!r} held back in the {self.name} bucket") from None
        metadata = self._held_metadata(image_id)
        review = metadata.get("review")
        metadata["review"] = {**(review if isinstance(review, dict) else {}), "approved_at": utc_iso(datetime.now(UTC))}
        image_id, metadata, created_at, sidecar = self._prepare_files(image, metadata, image_id)
        files = [(sidecar, self._meta_path(image_id))]
        if self.prepare is not None:
            files.append((self.prepare(image), self._framed_path(image_id)))
        self._place_all(files)
        try:
            os.rename(held, self._image_path(image_id))
        except FileNotFoundError:  # approved or deleted by someone else meanwhile
            if not self._image_path(image_id).exists():
                for _, path in files:
                    _unlink(path)
                raise ImageNotFound(f"no image {image_id!r} held back in the {self.name} bucket") from None
        _unlink(self._held_meta_path(image_id))
        sync_folder(self.directory)
        self._held_changed(-1)
        with self._lock:
            self._index.add(image_id)
        return ImageRecord(image_id, self.name, self._image_path(image_id), metadata, created_at)

    # --- claiming uniques ----------------------------------------------------------------------------

    def claim(self) -> Claim | None:
        """Take one image out of the bucket for exactly one visitor; None when the bucket is empty.

        The claim is the rename into `.claimed/`: across threads and processes exactly one rename of a
        file succeeds, and a loser (FileNotFoundError) forgets that id and tries another one.
        """
        while (image_id := self.random_id()) is not None:
            try:
                os.rename(self._image_path(image_id), self._claimed_path(image_id))
            except FileNotFoundError:
                self.forget(image_id)
                continue
            self.forget(image_id)
            try:
                return Claim(image_id, self._claimed_image(image_id), self._claimed_metadata(image_id))
            except BadImage:
                continue  # set aside: out of the bucket; try another one
            except BaseException:
                self.release_claim(image_id)
                raise
        return None

    def _claimed_image(self, image_id: str) -> bytes:
        """What the claimer sends: the framed copy made at publish time, or the image prepared now.

        Only whole WebP files are sent: a broken framed copy is made again, a broken image set aside
        (BadImage).
        """
        claimed = self._claimed_path(image_id)
        if self.prepare is None:
            return self._whole(image_id, claimed, claimed.read_bytes())
        framed = self._framed_path(image_id)
        try:
            data = framed.read_bytes()
            self.check_prepared(data)
            return data
        except FileNotFoundError:
            pass
        except ImageError as exc:
            log.warning("the framed copy of unique %s is broken (%s): framing it again", image_id, exc)
            _unlink(framed)
        original = self._whole(image_id, claimed, claimed.read_bytes())
        try:
            return self.prepare(original)
        except ImageError as exc:  # whole, and still not an image
            self.set_aside(image_id, claimed, str(exc))
            raise BadImage(f"image {image_id!r} of the {self.name} bucket was set aside: {exc}") from None

    def _claimed_metadata(self, image_id: str) -> dict[str, Any]:
        try:
            return self.metadata(image_id)
        except (ImageNotFound, ValueError):
            return {}

    def finish_claim(self, image_id: str) -> None:
        """The claimed image was sent: delete it, its sidecar and its framed copy for good."""
        _unlink(self._claimed_path(check_id(image_id)))
        _unlink(self._meta_path(image_id))
        _unlink(self._framed_path(image_id))

    def release_claim(self, image_id: str) -> None:
        """The claimed image was not sent after all: put it back in the bucket."""
        os.rename(self._claimed_path(check_id(image_id)), self._image_path(image_id))
        with self._lock:
            self._index.add(image_id)

    # --- start-up ------------------------------------------------------------------------------------

    def release_stale_claims(self, older_than: float = CLAIM_TIMEOUT) -> int:
        """Put back uniques claimed more than `older_than` seconds ago and never sent (a crash); how many.

        Age is taken from the ctime, which the claiming rename sets.
        """
        released = 0
        for image_id in _ids_in(self._claimed, IMAGE_SUFFIX):
            if _is_stale(self._claimed_path(image_id), older_than, since_rename=True):
                try:
                    self.release_claim(image_id)
                except FileNotFoundError:  # another process put it back first
                    continue
                except OSError as exc:
                    log.error("cannot put claimed unique %s back into the %s bucket: %s", image_id, self.name, exc)
                    continue
                released += 1
        return released

    def recover(self, *, stale_after: float = CLAIM_TIMEOUT) -> Recovery:
        """Repair what a crash can leave behind, at start-up, from one listing of each folder.

        Claimed-but-unsent images go back into the bucket and sidecars or framed copies without an
        image are removed, once `stale_after` seconds old: other worker processes may be in the middle
        of a claim or a publish right now (a sidecar is placed before its image). Work files in `.tmp/`
        are removed whatever their age: they are never visible, and the worst this does to a publish
        running in another process is make it fail and be retried. Nothing is read or framed here, and
        orphan framed copies are left: that would keep the server from listening for minutes with
        thousands of images, so `check_and_frame` does it in the background (and a claim frames a unique
        it finds unframed). A file that cannot be removed (a read-only folder) is logged and left: never
        fatal.
        """
        released = self.release_stale_claims(stale_after)
        temp_removed = sum(self._tidy(self._tmp / name) for name in os.listdir(self._tmp))
        with self._lock:
            stamp = os.stat(self.directory).st_mtime_ns
            images, sidecars = self._scan()
            self._install(list(images), stamp)
        # A held image owns its sidecar in the bucket too: an approval cut short, done again later.
        orphans = sidecars - images - _ids_in(self._claimed, IMAGE_SUFFIX) - _ids_in(self._review, IMAGE_SUFFIX)
        orphans_removed = self._remove_orphans([self._meta_path(image_id) for image_id in orphans], stale_after)
        orphans_removed += self._tidy_owner_files(stale_after)
        self.recount_held()
        return Recovery(released, temp_removed, orphans_removed)

    def _tidy_owner_files(self, stale_after: float) -> int:
        """Remove review sidecars whose held image is gone and keep markers whose image is gone, once
        `stale_after` old (another process may be holding or keeping one right now); how many. Held
        images themselves are never touched: only the owner publishes them."""
        held = _ids_in(self._review, IMAGE_SUFFIX)
        leftovers = [self._held_meta_path(image_id) for image_id in _ids_in(self._review, META_SUFFIX) - held]
        leftovers += [self._kept_path(name) for name in os.listdir(self._kept)
                      if not self._image_path(name).exists()]
        return sum(self._tidy(path) for path in leftovers if _is_stale(path, stale_after))

    def _remove_orphans(self, paths: list[Path], stale_after: float) -> int:
        """Remove sidecars or framed copies whose image is gone, once `stale_after` seconds old. Few: each is
        checked again, as other processes may have moved on since the listing."""
        removed = 0
        for path in paths:
            image_id = path.name.rsplit(".", 1)[0]
            owned = (self._image_path(image_id), self._claimed_path(image_id), self._held_path(image_id))
            if not any(place.exists() for place in owned) and _is_stale(path, stale_after):
                removed += self._tidy(path)
        return removed

    def remove_orphan_copies(self, stale_after: float = CLAIM_TIMEOUT) -> int:
        """Remove framed copies whose image is gone (a crash between the two removals), as `recover` does
        sidecars; done in the background, as the framed copies are not needed to serve. How many."""
        if self.prepare is None:
            return 0
        owned = self._scan()[0] | _ids_in(self._claimed, IMAGE_SUFFIX)
        orphans = _ids_in(self._framed, IMAGE_SUFFIX) - owned
        return self._remove_orphans([self._framed_path(image_id) for image_id in orphans], stale_after)

    def _tidy(self, path: Path) -> bool:
        """Remove a leftover file; False if it was gone or cannot be removed (logged)."""
        try:
            return _unlink(path)
        except OSError as exc:
            log.warning("cannot remove leftover %s from the %s bucket: %s", path, self.name, exc)
            return False

    def inspect(self, image_ids: Iterable[str]) -> list[str]:
        """Check stored images cheaply, by their RIFF header against their size (framed copies too): a broken
        image is set aside, a broken framed copy removed. Returns the ids whose framed copy is to be made."""
        unframed = []
        for image_id in image_ids:
            path = self._image_path(image_id)
            try:
                problem = _header_problem(path)
            except FileNotFoundError:  # claimed or deleted meanwhile
                continue
            except OSError as exc:
                log.error("image %s of the %s bucket cannot be read: %s", image_id, self.name, exc)
                continue
            if problem:
                self.set_aside(image_id, path, problem)
                continue
            if self.prepare is None:
                continue
            framed = self._framed_path(image_id)
            try:
                problem = self._prepared_problem(framed)
            except FileNotFoundError:
                unframed.append(image_id)
                continue
            except OSError as exc:
                log.error("the framed copy of unique %s cannot be read: %s", image_id, exc)
                continue
            if problem:
                log.warning("the framed copy of unique %s is broken (%s): framing it again", image_id, problem)
                self._tidy(framed)
                unframed.append(image_id)
        return unframed

    def _prepared_problem(self, path: Path) -> str | None:
        """What is wrong with a framed copy (a copy of another kind, made before an upgrade, included); None
        if nothing. A WebP copy is judged by its header alone, anything else read whole."""
        if self.check_prepared is check_webp:
            return _header_problem(path)
        try:
            self.check_prepared(path.read_bytes())
        except ImageError as exc:
            return str(exc)
        return None

    def frame(self, image_id: str) -> bool:
        """Make the framed copy of a stored unique if it is still missing; True when one was made.

        False when there is nothing to do: the bucket does not frame, the copy exists (another process
        made it), the image is gone (claimed) or broken (then it is set aside).
        """
        if self.prepare is None or self._framed_path(image_id).exists():
            return False
        try:
            original = self.read(image_id)
            try:
                framed = self.prepare(original)
            except ImageError as exc:  # a whole WebP file whose pixels do not decode
                self.set_aside(image_id, self._image_path(image_id), str(exc))
                return False
            self._place(framed, self._framed_path(image_id))
        except (ImageNotFound, FileNotFoundError):
            return False
        return True


async def check_and_frame(bucket: Bucket, batch: int = 500) -> None:
    """What start-up leaves to the background (the generator's process does it while visitors are served):
    every image checked cheaply, so broken ones are set aside before a visitor meets them, then the framed
    copies found missing made, and framed copies whose image is gone removed. Worker threads, a batch at
    a time; cancelling stops it between two."""
    orphans = await asyncio.to_thread(bucket.remove_orphan_copies)
    if orphans:
        log.info("removed %d framed copies without their image from the %s bucket", orphans, bucket.name)
    ids = bucket.ids()
    unframed = []
    for start in range(0, len(ids), batch):
        unframed += await asyncio.to_thread(bucket.inspect, ids[start:start + batch])
    if not unframed:
        return
    log.info("framing %d unique(s) found without their framed copy, in the background", len(unframed))
    made = 0
    for image_id in unframed:
        made += await asyncio.to_thread(bucket.frame, image_id)
    log.info("framed %d unique(s) in the background", made)


def open_buckets(settings: Settings) -> dict[str, Bucket]:
    """The two buckets of the configuration; the unique one pre-frames what visitors will get.

    Nothing is repaired here: call `recover()` on each at start-up (the app's lifespan does).
    """
    unique = Bucket("unique", settings.buckets.unique.dir, prepare=unique_copy(settings),
                    check_prepared=check_archive)
    return {"unique": unique, "fallback": Bucket("fallback", settings.buckets.fallback.dir)}


def unique_copy(settings: Settings) -> Callable[[bytes], bytes]:
    """What a unique's claimer receives, made from its stored WebP at publish time, whichever the backend:
    every variant of it, framed (`avatargen.variants.framed_variants`)."""
    return partial(framed_variants, quality=settings.generator.webp_quality, sizes=settings.sizes)
