"""Repairing a bucket folder after a crash, at start-up, and what start-up leaves to the background: every
image checked cheaply (broken ones set aside before a visitor meets them), the missing framed copies made,
framed copies whose image is gone removed.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from avatargen.imaging import ImageError, check_webp
from avatargen.storage.errors import ImageNotFound
from avatargen.storage.files.claims import CLAIM_TIMEOUT, Claims
from avatargen.storage.files.held import HeldImages
from avatargen.storage.files.paths import IMAGE_SUFFIX, META_SUFFIX, header_problem, ids_in, is_stale
from avatargen.storage.models import Recovery

log = logging.getLogger("avatargen.buckets")


class BucketRepair:
    """What a crash can leave behind in one bucket folder, and the check of what is stored."""

    def __init__(self, held: HeldImages, claims: Claims) -> None:
        self.held, self.claims, self.images = held, claims, claims.images
        self.paths, self.index, self.name = self.images.paths, self.images.index, self.images.name
        self.prepare, self.check_prepared = self.images.prepare, claims.check_prepared

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
        released = self.claims.release_stale(stale_after)
        temp_removed = sum(self.paths.tidy(self.paths.tmp / name) for name in os.listdir(self.paths.tmp))
        images, sidecars = self.index.reload()
        # A held image owns its sidecar in the bucket too: an approval cut short, done again later.
        orphans = sidecars - images - ids_in(self.paths.claimed, IMAGE_SUFFIX) - ids_in(self.paths.review, IMAGE_SUFFIX)
        orphans_removed = self._remove_orphans([self.paths.meta_path(image_id) for image_id in orphans], stale_after)
        orphans_removed += self._tidy_owner_files(stale_after)
        self.held.recount()
        return Recovery(released, temp_removed, orphans_removed)

    def _tidy_owner_files(self, stale_after: float) -> int:
        """Remove review sidecars whose held image is gone and keep markers whose image is gone, once
        `stale_after` old (another process may be holding or keeping one right now); how many. Held
        images themselves are never touched: only the owner publishes them."""
        held = ids_in(self.paths.review, IMAGE_SUFFIX)
        leftovers = [self.paths.held_meta_path(image_id) for image_id in ids_in(self.paths.review, META_SUFFIX) - held]
        leftovers += [self.paths.kept_path(name) for name in os.listdir(self.paths.kept)
                      if not self.paths.image_path(name).exists()]
        return sum(self.paths.tidy(path) for path in leftovers if is_stale(path, stale_after))

    def _remove_orphans(self, paths: list[Path], stale_after: float) -> int:
        """Remove sidecars or framed copies whose image is gone, once `stale_after` seconds old. Few: each is
        checked again, as other processes may have moved on since the listing."""
        removed = 0
        for path in paths:
            image_id = path.name.rsplit(".", 1)[0]
            owned = (self.paths.image_path(image_id), self.paths.claimed_path(image_id), self.paths.held_path(image_id))
            if not any(place.exists() for place in owned) and is_stale(path, stale_after):
                removed += self.paths.tidy(path)
        return removed

    def remove_orphan_copies(self, stale_after: float = CLAIM_TIMEOUT) -> int:
        """Remove framed copies whose image is gone (a crash between the two removals), as `recover` does
        sidecars; done in the background, as the framed copies are not needed to serve. How many."""
        if self.prepare is None:
            return 0
        owned = self.index.scan()[0] | ids_in(self.paths.claimed, IMAGE_SUFFIX)
        orphans = ids_in(self.paths.framed, IMAGE_SUFFIX) - owned
        return self._remove_orphans([self.paths.framed_path(image_id) for image_id in orphans], stale_after)

    def inspect(self, image_ids: Iterable[str]) -> list[str]:
        """Check stored images cheaply, by their RIFF header against their size (framed copies too): a broken
        image is set aside, a broken framed copy removed. Returns the ids whose framed copy is to be made."""
        unframed = []
        for image_id in image_ids:
            path = self.paths.image_path(image_id)
            try:
                problem = header_problem(path)
            except FileNotFoundError:  # claimed or deleted meanwhile
                continue
            except OSError as exc:
                log.error("image %s of the %s bucket cannot be read: %s", image_id, self.name, exc)
                continue
            if problem:
                self.images.set_aside(image_id, path, problem)
                continue
            if self.prepare is None:
                continue
            framed = self.paths.framed_path(image_id)
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
                self.paths.tidy(framed)
                unframed.append(image_id)
        return unframed

    def _prepared_problem(self, path: Path) -> str | None:
        """What is wrong with a framed copy (a copy of another kind, made before an upgrade, included); None
        if nothing. A WebP copy is judged by its header alone, anything else read whole."""
        if self.check_prepared is check_webp:
            return header_problem(path)
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
        if self.prepare is None or self.paths.framed_path(image_id).exists():
            return False
        try:
            original = self.images.read(image_id)
            try:
                framed = self.prepare(original)
            except ImageError as exc:  # a whole WebP file whose pixels do not decode
                self.images.set_aside(image_id, self.paths.image_path(image_id), str(exc))
                return False
            self.paths.place(framed, self.paths.framed_path(image_id))
        except (ImageNotFound, FileNotFoundError):
            return False
        return True


async def check_and_frame(repair: BucketRepair, batch: int = 500) -> None:
    """What start-up leaves to the background (the generator's process does it while visitors are served):
    every image checked cheaply, so broken ones are set aside before a visitor meets them, then the framed
    copies found missing made, and framed copies whose image is gone removed. Worker threads, a batch at
    a time; cancelling stops it between two."""
    orphans = await asyncio.to_thread(repair.remove_orphan_copies)
    if orphans:
        log.info("removed %d framed copies without their image from the %s bucket", orphans, repair.name)
    ids = repair.index.ids()
    unframed = []
    for start in range(0, len(ids), batch):
        unframed += await asyncio.to_thread(repair.inspect, ids[start:start + batch])
    if not unframed:
        return
    log.info("framing %d unique(s) found without their framed copy, in the background", len(unframed))
    made = 0
    for image_id in unframed:
        made += await asyncio.to_thread(repair.frame, image_id)
    log.info("framed %d unique(s) in the background", made)
