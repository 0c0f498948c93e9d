"""Claiming uniques: a unique is taken out of its bucket folder for exactly one visitor by renaming it into
`.claimed/`. Across threads and processes exactly one rename of a file succeeds, so the filesystem is the
only arbiter; whoever's rename fails lost the race and tries another one.

A claimed unique is deleted once sent, or put back when it was not; one a dead process claimed and never
sent goes back after `CLAIM_TIMEOUT`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from avatargen.imaging import ImageError
from avatargen.storage.errors import BadImage, ImageNotFound
from avatargen.storage.files.images import BucketImages
from avatargen.storage.files.paths import IMAGE_SUFFIX, ids_in, is_stale, unlink
from avatargen.storage.models import Claim, check_id

log = logging.getLogger("avatargen.buckets")

# A claimed unique is sent within milliseconds; one claimed longer ago than this belongs to a process that
# died before sending it. Fresh claims must be left alone: another worker may be sending them right now.
CLAIM_TIMEOUT = 60.0


class Claims:
    """The claims on one bucket folder's images. `check_prepared` raises ImageError for a framed copy that
    is not whole (see `avatargen.storage.files.bucket.Bucket`)."""

    def __init__(self, images: BucketImages, *, check_prepared: Callable[[bytes], None]) -> None:
        self.images = images
        self.paths, self.index, self.name, self.prepare = images.paths, images.index, images.name, images.prepare
        self.check_prepared = check_prepared

    def claim(self) -> Claim | None:
        """Take one image out of the bucket for exactly one visitor; None when the bucket is empty.

        The claim is the rename into `.claimed/`: across threads and processes exactly one rename of a
        file succeeds, and a loser (FileNotFoundError) forgets that id and tries another one.
        """
        while (image_id := self.index.random_id()) is not None:
            try:
                os.rename(self.paths.image_path(image_id), self.paths.claimed_path(image_id))
            except FileNotFoundError:
                self.index.forget(image_id)
                continue
            self.index.forget(image_id)
            try:
                return Claim(image_id, self._claimed_image(image_id), self.claimed_metadata(image_id))
            except BadImage:
                continue  # set aside: out of the bucket; try another one
            except BaseException:
                self.release(image_id)
                raise
        return None

    def _claimed_image(self, image_id: str) -> bytes:
        """What the claimer sends: the framed copy made at publish time, or the image prepared now.

        Only whole WebP files are sent: a broken framed copy is made again, a broken image set aside
        (BadImage).
        """
        claimed = self.paths.claimed_path(image_id)
        if self.prepare is None:
            return self.images.whole(image_id, claimed, claimed.read_bytes())
        framed = self.paths.framed_path(image_id)
        try:
            data = framed.read_bytes()
            self.check_prepared(data)
            return data
        except FileNotFoundError:
            pass
        except ImageError as exc:
            log.warning("the framed copy of unique %s is broken (%s): framing it again", image_id, exc)
            unlink(framed)
        original = self.images.whole(image_id, claimed, claimed.read_bytes())
        try:
            return self.prepare(original)
        except ImageError as exc:  # whole, and still not an image
            self.images.set_aside(image_id, claimed, str(exc))
            raise BadImage(f"image {image_id!r} of the {self.name} bucket was set aside: {exc}") from None

    def claimed_metadata(self, image_id: str) -> dict[str, Any]:
        try:
            return self.images.metadata(image_id)
        except (ImageNotFound, ValueError):
            return {}

    def finish(self, image_id: str) -> None:
        """The claimed image was sent: delete it, its sidecar and its framed copy for good."""
        unlink(self.paths.claimed_path(check_id(image_id)))
        unlink(self.paths.meta_path(image_id))
        unlink(self.paths.framed_path(image_id))

    def release(self, image_id: str) -> None:
        """The claimed image was not sent after all: put it back in the bucket."""
        os.rename(self.paths.claimed_path(check_id(image_id)), self.paths.image_path(image_id))
        self.index.add(image_id)

    def release_stale(self, older_than: float = CLAIM_TIMEOUT) -> int:
        """Put back uniques claimed more than `older_than` seconds ago and never sent (a crash); how many.

        Age is taken from the ctime, which the claiming rename sets.
        """
        released = 0
        for image_id in ids_in(self.paths.claimed, IMAGE_SUFFIX):
            if is_stale(self.paths.claimed_path(image_id), older_than, since_rename=True):
                try:
                    self.release(image_id)
                except FileNotFoundError:  # another process put it back first
                    continue
                except OSError as exc:
                    log.error("cannot put claimed unique %s back into the %s bucket: %s", image_id, self.name, exc)
                    continue
                released += 1
        return released
