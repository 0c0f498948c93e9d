"""The images in a bucket folder: reading them (only whole WebP files ever leave), publishing, deleting,
retiring and keeping them; broken ones set aside in `.rejected/` for the owner to look at.

Each file of a publish (sidecar, framed copy if the bucket frames, image) is placed whole by way of
`.tmp/`, in that order: a visible image always has its metadata, and a claimer always finds its framed copy.
"""

from __future__ import annotations

import heapq
import json
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from avatargen.files import PRIVATE_FILE, sync_folder
from avatargen.imaging import ImageError, check_webp
from avatargen.storage.errors import BadImage, ImageNotFound
from avatargen.storage.files.index import FolderIndex
from avatargen.storage.files.paths import (
    IMAGE_SUFFIX,
    META_SUFFIX,
    BucketPaths,
    creation_time,
    move,
    prepare_files,
    unlink,
)
from avatargen.storage.models import ImageRecord, check_id

log = logging.getLogger("avatargen.buckets")


class BucketImages:
    """The images in one bucket folder. `prepare` (the unique bucket's framing) makes the framed copy each
    image gets at publish time; None for a bucket that sends its images as they are."""

    def __init__(self, paths: BucketPaths, index: FolderIndex, *,
                 prepare: Callable[[bytes], bytes] | None = None) -> None:
        self.paths = paths
        self.index = index
        self.name = paths.name
        self.prepare = prepare

    def servable(self, image_id: str) -> bool:
        """Whether the image is in the bucket right now, in every process's eyes: one stat of its file, which
        the owner's delete, a retirement, a move or a claim (all renames) take away at once."""
        # A plain string path: this runs for every fallback answer from memory, where building a Path cost
        # more than the stat itself (a profile under wrk).
        return os.path.exists(f"{self.paths.image_prefix}{check_id(image_id)}{IMAGE_SUFFIX}")

    def read(self, image_id: str) -> bytes:
        """The stored WebP bytes of an image; ImageNotFound if it is not (or no longer) in the bucket.

        Bytes that are not a whole WebP file are never returned: the image is set aside (BadImage).
        """
        path = self.paths.image_path(check_id(image_id))
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ImageNotFound(f"no image {image_id!r} in the {self.name} bucket") from None
        return self.whole(image_id, path, data)

    def whole(self, image_id: str, path: Path, data: bytes) -> bytes:
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
        self.index.forget(image_id)
        try:
            moved = move(path, self.paths.rejected / f"{image_id}{IMAGE_SUFFIX}")
            move(self.paths.meta_path(image_id), self.paths.rejected / f"{image_id}{META_SUFFIX}")
            unlink(self.paths.framed_path(image_id))
        except OSError as exc:
            log.error("image %s of the %s bucket is broken (%s) and cannot be set aside: %s",
                      image_id, self.name, reason, exc)
            return
        if moved:
            log.warning("image %s of the %s bucket set aside in %s: %s", image_id, self.name, self.paths.rejected,
                        reason)

    def rejected(self) -> int:
        """How many images were set aside as broken (in `.rejected/`, by any process, until the owner clears it)."""
        try:
            with os.scandir(self.paths.rejected) as entries:
                return sum(entry.name.endswith(IMAGE_SUFFIX) for entry in entries)
        except FileNotFoundError:
            return 0

    def metadata(self, image_id: str) -> dict[str, Any]:
        """The sidecar of an image (also while it is claimed); ImageNotFound if there is none, ValueError if it
        is not a JSON object."""
        try:
            metadata = json.loads(self.paths.meta_path(check_id(image_id)).read_bytes())
        except FileNotFoundError:
            raise ImageNotFound(f"no metadata for image {image_id!r} in the {self.name} bucket") from None
        if not isinstance(metadata, dict):
            raise ValueError(f"the sidecar of image {image_id!r} in the {self.name} bucket is not a JSON object")
        return metadata

    def newest(self, n: int) -> list[ImageRecord]:
        """The `n` newest images, newest first (ids sort by creation time); ones gone meanwhile are skipped."""
        kept = set(os.listdir(self.paths.kept))
        records = []
        for image_id in heapq.nlargest(max(0, n), self.index.ids()):
            path = self.paths.image_path(image_id)
            try:
                metadata = self.metadata(image_id)  # ValueError for one that is not a JSON object: skipped
                created_at = creation_time(metadata, path)
            except (ImageNotFound, FileNotFoundError, ValueError):
                continue
            records.append(ImageRecord(image_id, self.name, path, metadata, created_at, kept=image_id in kept))
        return records

    def publish(self, image: bytes, metadata: dict[str, Any], *, prepared: bytes | None = None,
                image_id: str | None = None) -> ImageRecord:
        """Store a WebP image with its metadata, atomically: it is visible complete, with its sidecar, or not at all.

        Each file (sidecar, framed copy if the bucket frames, image) is written under `.tmp/`, fsynced
        and renamed into place, in that order: a visible image always has its metadata, and a claimer
        always finds its framed copy. `created_at` (ISO 8601 UTC) is added when missing. `prepared` is
        the framed copy when the caller already made it (the generator does, off the server's process).
        `image_id` keeps the id an image already has (one moved from another bucket, or migrated).
        """
        image_id, metadata, created_at, sidecar = prepare_files(self.name, image, metadata, image_id)
        files = [(sidecar, self.paths.meta_path(image_id))]
        if self.prepare is not None:
            files.append((self.prepare(image) if prepared is None else prepared, self.paths.framed_path(image_id)))
        files.append((image, self.paths.image_path(image_id)))
        self.paths.place_all(files)
        if self.prepare is not None:
            sync_folder(self.paths.framed)
        sync_folder(self.paths.directory)
        self.index.add(image_id)
        return ImageRecord(image_id, self.name, self.paths.image_path(image_id), metadata, created_at)

    def framed(self, image_id: str) -> bytes | None:
        """The framed copy of an image, None when it has none (yet)."""
        try:
            return self.paths.framed_path(check_id(image_id)).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, image_id: str) -> bool:
        """Remove an image with its sidecar, framed copy and keep marker; False if it was not in the bucket."""
        removed = self.paths.remove(self.paths.image_path(check_id(image_id)), (
            self.paths.meta_path(image_id), self.paths.framed_path(image_id), self.paths.kept_path(image_id)))
        self.index.forget(image_id)
        return removed

    def retire(self, image_id: str) -> bool:
        """Delete a served fallback to make room for new ones, unless the owner keeps it; whether it went."""
        return not self.is_kept(image_id) and self.delete(image_id)

    def is_kept(self, image_id: str) -> bool:
        """Whether the owner keeps this image for good (its marker is on disk: every process sees it)."""
        return self.paths.kept_path(check_id(image_id)).exists()

    def keep(self, image_id: str, kept: bool = True) -> ImageRecord:
        """Keep an image for good (never retired), or undo that; ImageNotFound if it is not in the bucket."""
        marker = self.paths.kept_path(check_id(image_id))
        if kept:
            marker.touch(mode=PRIVATE_FILE)
            sync_folder(self.paths.kept)
        else:
            unlink(marker)
        try:
            return self._record(image_id)
        except ImageNotFound:
            unlink(marker)  # deleted or claimed meanwhile: no marker without its image
            raise

    def _record(self, image_id: str) -> ImageRecord:
        """The record of an image in the bucket; ImageNotFound if it is not there."""
        path = self.paths.image_path(image_id)
        try:
            metadata = self.metadata(image_id)
            created_at = creation_time(metadata if isinstance(metadata, dict) else {}, path)
        except (ImageNotFound, FileNotFoundError, ValueError):
            if not path.exists():
                raise ImageNotFound(f"no image {image_id!r} in the {self.name} bucket") from None
            metadata, created_at = {}, datetime.fromtimestamp(path.stat().st_mtime, UTC)
        return ImageRecord(image_id, self.name, path, metadata, created_at,
                           kept=self.paths.kept_path(image_id).exists())
