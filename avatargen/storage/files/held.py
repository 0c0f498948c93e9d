"""The images the safety gate held back, in a bucket folder's `.review/` until the owner approves or
deletes them: out of the bucket, so no visitor and no recovery ever serves one.

Counting them must not list the folder on the event loop (it may hold 200,000 images): the count is
kept, adjusted by this process's own holds, approvals and deletions, and recounted from a worker thread
when the folder's mtime says another process changed it.
"""

from __future__ import annotations

import heapq
import json
import os
import threading
import time
from datetime import UTC, datetime
from typing import Any

from avatargen.files import sync_folder
from avatargen.storage.errors import ImageNotFound
from avatargen.storage.files.images import BucketImages
from avatargen.storage.files.index import RACY_NS
from avatargen.storage.files.paths import IMAGE_SUFFIX, creation_time, ids_in, prepare_files, unlink
from avatargen.storage.models import ImageRecord, check_id
from avatargen.timestamps import utc_iso


class HeldImages:
    """The held-back images of one bucket folder (its `.review/`); `approve` publishes one into the bucket
    that `images` holds, framed when that bucket frames."""

    def __init__(self, images: BucketImages) -> None:
        self.paths, self.index, self.name, self.prepare = images.paths, images.index, images.name, images.prepare
        self._lock = threading.Lock()
        self._count: int | None = None  # images in .review/ (see recount)
        self._stamp: int | None = None

    def hold(self, image: bytes, metadata: dict[str, Any], *, image_id: str | None = None) -> ImageRecord:
        """Store an image the safety gate held back in the review folder, as `publish` stores one in the
        bucket (sidecar first, then the image): out of the bucket, so no visitor and no recovery ever serves
        it, until the owner approves it. `metadata` says why (`review`); `image_id` keeps a migrated one's."""
        image_id, metadata, created_at, sidecar = prepare_files(self.name, image, metadata, image_id)
        fresh = not self.paths.held_path(image_id).exists()
        self.paths.place_all([(sidecar, self.paths.held_meta_path(image_id)), (image, self.paths.held_path(image_id))])
        sync_folder(self.paths.review)
        self._changed(fresh)
        return ImageRecord(image_id, self.name, self.paths.held_path(image_id), metadata, created_at, held=True)

    def count(self) -> int:
        """How many images wait in the review folder, as of the last count: no listing here, as the status
        and the level events ask on the event loop, and `.review/` may hold 200,000 images (a listing of
        those stalled visitors for 229 ms). Counted here only when nothing counted it before."""
        if self._count is None:
            self.recount()
        return self._count or 0

    def recount(self) -> bool:
        """Count the images in `.review/` again if it changed since the last count (its mtime, redone when
        read in the tick of a change); whether it counted. Blocks on the listing: start-up recovery and the
        server's upkeep (`FolderBucket.follow`) call it from a worker thread. This process's own holds,
        approvals and deletions of held images adjust the count at once."""
        try:
            stamp: int | None = os.stat(self.paths.review).st_mtime_ns
        except FileNotFoundError:
            stamp = None
        if stamp is not None and stamp == self._stamp and self._count is not None:
            return False
        count = len(ids_in(self.paths.review, IMAGE_SUFFIX))
        with self._lock:
            self._count = count
            self._stamp = None if stamp is None or time.time_ns() - stamp < RACY_NS else stamp
        return True

    def _changed(self, by: int) -> None:
        with self._lock:
            if self._count is not None:
                self._count = max(0, self._count + by)

    def newest(self, n: int) -> list[ImageRecord]:
        """The `n` newest images held back for review, newest first."""
        records = []
        for image_id in heapq.nlargest(max(0, n), ids_in(self.paths.review, IMAGE_SUFFIX)):
            path = self.paths.held_path(image_id)
            metadata = self.metadata(image_id)
            try:
                records.append(ImageRecord(image_id, self.name, path, metadata, creation_time(metadata, path),
                                           held=True))
            except (FileNotFoundError, ValueError):
                continue  # approved or deleted meanwhile, or a sidecar with a created_at that is not a time
        return records

    def metadata(self, image_id: str) -> dict[str, Any]:
        """The sidecar of a held image; empty when it is missing or not a JSON object (the image is what counts)."""
        try:
            metadata = json.loads(self.paths.held_meta_path(image_id).read_bytes())
        except (FileNotFoundError, ValueError):
            return {}
        return metadata if isinstance(metadata, dict) else {}

    def read(self, image_id: str) -> bytes:
        """The bytes of an image held back for review (for the owner's eyes only)."""
        try:
            return self.paths.held_path(check_id(image_id)).read_bytes()
        except FileNotFoundError:
            raise ImageNotFound(f"no image {image_id!r} held back in the {self.name} bucket") from None

    def delete(self, image_id: str) -> bool:
        """Delete an image held back for review, with its sidecar; False if none is held with that id."""
        # An approval cut short by a crash may have placed the sidecar in the bucket already: it goes too.
        unfinished = () if self.paths.image_path(check_id(image_id)).exists() else (self.paths.meta_path(image_id),)
        removed = self.paths.remove(self.paths.held_path(image_id), (self.paths.held_meta_path(image_id), *unfinished))
        self._changed(-removed)
        return removed

    def approve(self, image_id: str) -> ImageRecord:
        """Publish an image the owner approved after the gate held it back, as any new image is published:
        its sidecar (noting the approval) and framed copy first, then the image, renamed in from the review
        folder. ImageNotFound when none is held with that id."""
        held = self.paths.held_path(check_id(image_id))
        try:
            image = held.read_bytes()
        except FileNotFoundError:
            raise ImageNotFound(f"no image {image_id!r} held back in the {self.name} bucket") from None
        metadata = self.metadata(image_id)
        review = metadata.get("review")
        metadata["review"] = {**(review if isinstance(review, dict) else {}), "approved_at": utc_iso(datetime.now(UTC))}
        image_id, metadata, created_at, sidecar = prepare_files(self.name, image, metadata, image_id)
        files = [(sidecar, self.paths.meta_path(image_id))]
        if self.prepare is not None:
            files.append((self.prepare(image), self.paths.framed_path(image_id)))
        self.paths.place_all(files)
        try:
            os.rename(held, self.paths.image_path(image_id))
        except FileNotFoundError:  # approved or deleted by someone else meanwhile
            if not self.paths.image_path(image_id).exists():
                for _, path in files:
                    unlink(path)
                raise ImageNotFound(f"no image {image_id!r} held back in the {self.name} bucket") from None
        unlink(self.paths.held_meta_path(image_id))
        sync_folder(self.paths.directory)
        self._changed(-1)
        self.index.add(image_id)
        return ImageRecord(image_id, self.name, self.paths.image_path(image_id), metadata, created_at)
