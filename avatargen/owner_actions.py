"""What the owner does to stored images: delete, keep for good, move into the other bucket, approve or
delete what the safety gate held back.

Each action goes through the bucket's storage (`avatargen.storage.protocols.StoredBucket`), which makes
it atomic for every process and replica: renames of a few small files in the folders, one script in
Redis. Then it is told to every connected panel (an event, with the bucket levels after it) and to
whatever in this process keeps images in memory (the visitors' fallback cache, through `forget`), so a
deleted fallback is never sent again from memory. With several workers or replicas these requests are
answered by the process that runs the generator (`server.admin`), so their events reach every panel;
the other processes see the change at their next look at the bucket (`StoredBucket.follow`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from avatargen.api.wire import (
    ImageApproved,
    ImageInfo,
    ImageKept,
    ImageMoved,
    ImageRemoved,
    ServerEvent,
    encode_event,
)
from avatargen.config import Settings
from avatargen.events import EventHub
from avatargen.generator.views import bucket_levels, image_info
from avatargen.storage.errors import ImageNotFound
from avatargen.storage.models import check_id
from avatargen.storage.protocols import StoredBucket

log = logging.getLogger("avatargen.owner")

Forget = Callable[[str, str], None]  # (bucket, image id): an image left that bucket


class Refused(ValueError):
    """An action that cannot apply to this image (keeping a unique, moving into the same bucket)."""


class OwnerActions:
    def __init__(self, settings: Settings, buckets: Mapping[str, StoredBucket], events: EventHub,
                 forget: Forget = lambda bucket, image_id: None) -> None:
        self._settings = settings
        self._buckets = buckets
        self._events = events
        self._forget = forget

    def _tell(self, event: ServerEvent) -> None:
        self._events.publish(*encode_event(event))

    async def images(self, bucket: str, limit: int, *, held: bool = False) -> list[ImageInfo]:
        """The bucket's newest images (or those held back for review), newest first."""
        source = self._buckets[bucket]
        records = await (source.held(limit) if held else source.newest(limit))
        return [image_info(record) for record in records]

    async def read(self, bucket: str, image_id: str) -> bytes:
        """An image's bytes, published or held back (the owner must see what the gate held)."""
        source = self._buckets[bucket]
        try:
            return await source.read(image_id)
        except ImageNotFound:
            return await source.read_held(image_id)

    async def delete(self, bucket: str, image_id: str) -> None:
        """Delete an image for good, published or held back; ImageNotFound if it is neither."""
        source = self._buckets[bucket]
        check_id(image_id)

        if await source.delete(image_id):
            held = False
        elif await source.delete_held(image_id):
            held = True
        else:
            raise ImageNotFound(f"no image {image_id!r} in the {bucket} bucket")
        self._forget(bucket, image_id)
        log.info("the owner deleted %s image %s of the %s bucket", "held" if held else "published", image_id, bucket)
        self._tell(ImageRemoved(bucket, image_id, held, bucket_levels(self._settings, self._buckets)))

    async def keep(self, bucket: str, image_id: str, kept: bool = True) -> ImageInfo:
        """Keep a fallback for good, so retirement never takes it (or undo that)."""
        if bucket != "fallback":
            raise Refused("only fallback images can be kept: a unique is deleted as it is served")
        record = await self._buckets[bucket].keep(image_id, kept)
        image = image_info(record)
        log.info("the owner %s fallback %s", "keeps" if kept else "no longer keeps", image_id)
        self._tell(ImageKept(image, bucket_levels(self._settings, self._buckets)))
        return image

    async def move(self, bucket: str, image_id: str, to: str) -> ImageInfo:
        """Move an image into another bucket, under the same id: a unique into the fallbacks only. A fallback
        has been shown to any number of visitors, so it never becomes a unique (each is served once)."""
        if to not in self._buckets:
            raise Refused(f"unknown bucket {to!r} to move into; buckets are {' and '.join(self._buckets)}")
        if to == bucket:
            raise Refused(f"the image is already in the {bucket} bucket")
        if to == "unique":
            raise Refused(f"a {bucket} image never becomes a unique: many visitors may have seen it already, "
                          "and a unique is one nobody else ever gets")
        record = await self._buckets[bucket].move(image_id, self._buckets[to])
        self._forget(bucket, image_id)
        image = image_info(record)
        log.info("the owner moved image %s from the %s bucket to the %s bucket", image_id, bucket, to)
        self._tell(ImageMoved(image, bucket_levels(self._settings, self._buckets), from_bucket=bucket))
        return image

    async def approve(self, bucket: str, image_id: str) -> ImageInfo:
        """Publish an image the safety gate held back."""
        record = await self._buckets[bucket].approve(image_id)
        image = image_info(record)
        log.info("the owner approved image %s of the %s bucket, held back for: %s", image_id, bucket,
                 "; ".join(image.held_because) or "no reason recorded")
        self._tell(ImageApproved(image, bucket_levels(self._settings, self._buckets)))
        return image
