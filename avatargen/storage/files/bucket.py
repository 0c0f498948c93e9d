"""Buckets: folders of generated avatars that several processes publish into, serve from and claim from.

Layout (the contract): `<dir>/<id>.webp` is an image and `<dir>/<id>.json` its metadata; only `*.webp`
directly in the folder are images. Work files live in `<dir>/.tmp/`, claimed uniques in `<dir>/.claimed/`,
pre-framed copies (made by a bucket's `prepare` hook) in `<dir>/.framed/`, images the safety gate held
back (with their sidecars) in `<dir>/.review/` until the owner approves or deletes them, images found broken
in `<dir>/.rejected/` (set aside with their sidecars for the owner to look at), and an empty
`<dir>/.kept/<id>` marks an image the owner keeps for good (never retired), all on one filesystem so
that `os.rename` is atomic. The filesystem is the only arbiter between processes: a unique is claimed by
renaming it away, and whoever's rename fails lost the race.

A `Bucket` is made of one part per idea, each in its own module, sharing the folder's paths:
`paths` (where each file lives, and placing or removing one whole), `index` (the ids in memory, so that
counting and random picks never scan 10,000 files per call; other processes' changes are noticed from the
folder's mtime), `images` (reading, publishing, deleting, keeping), `held` (what the safety gate held
back), `claims` (uniques taken out for one visitor) and `repair` (start-up recovery and the background
check). Moving an image between buckets spans two of them, so it is the bucket's own.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from avatargen.config import Settings
from avatargen.imaging import check_webp
from avatargen.storage.errors import ImageNotFound
from avatargen.storage.files.claims import Claims
from avatargen.storage.files.held import HeldImages
from avatargen.storage.files.images import BucketImages
from avatargen.storage.files.index import FolderIndex
from avatargen.storage.files.paths import BucketPaths, unlink
from avatargen.storage.files.repair import BucketRepair
from avatargen.storage.framing import unique_copy
from avatargen.storage.models import ImageRecord, check_id
from avatargen.variants import check_archive


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
        self.paths = BucketPaths(name, directory, frames=prepare is not None)
        self.directory = self.paths.directory
        self.prepare = prepare
        self.index = FolderIndex(self.paths, recheck_every=recheck_every)
        self.images = BucketImages(self.paths, self.index, prepare=prepare)
        self.held = HeldImages(self.images)
        self.claims = Claims(self.images, check_prepared=check_prepared)
        self.repair = BucketRepair(self.held, self.claims)

    def __repr__(self) -> str:
        return f"Bucket({self.name!r}, {str(self.directory)!r})"

    @property
    def folders(self) -> tuple[Path, ...]:
        """Every folder the bucket writes to (start-up proves each one writable before the server listens)."""
        return self.paths.folders

    def move(self, image_id: str, target: Bucket) -> ImageRecord:
        """Move an image into another bucket under the same id; ImageNotFound if it is not in this one.

        It is claimed first (the rename into `.claimed/` that visitors race for), so a visitor gets it or
        the move does, never both; then published in the target as any new image is (framed there if the
        target frames), and only then removed here with its framed copy and keep marker. Works across
        filesystems. A failure puts it back.
        """
        claimed = self.paths.claimed_path(check_id(image_id))
        try:
            os.rename(self.paths.image_path(image_id), claimed)
        except FileNotFoundError:
            raise ImageNotFound(f"no image {image_id!r} in the {self.name} bucket") from None
        self.index.forget(image_id)
        try:
            metadata = {**self.claims.claimed_metadata(image_id), "moved_from": self.name}
            record = target.images.publish(claimed.read_bytes(), metadata, image_id=image_id)
        except BaseException:
            self.claims.release(image_id)
            raise
        self.claims.finish(image_id)
        unlink(self.paths.kept_path(image_id))
        return record


def open_buckets(settings: Settings) -> dict[str, Bucket]:
    """The two buckets of the configuration; the unique one pre-frames what visitors will get.

    Nothing is repaired here: call `repair.recover()` on each at start-up (the app's lifespan does).
    """
    unique = Bucket("unique", settings.buckets.unique.dir, prepare=unique_copy(settings),
                    check_prepared=check_archive)
    return {"unique": unique, "fallback": Bucket("fallback", settings.buckets.fallback.dir)}
