"""A bucket folder's ids in memory, so that counting and random picks never list 10,000 files per call.

This process's own publishes, claims and deletions change the index directly; other processes' changes are
noticed from the folder's mtime, looked at no more often than every `recheck_every` seconds.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from avatargen.storage.files.paths import IMAGE_SUFFIX, META_SUFFIX, BucketPaths, ids_in
from avatargen.storage.index import IdIndex

log = logging.getLogger("avatargen.buckets")

# A directory mtime this close to the moment it was read may still change within the same clock tick
# (coarse filesystem timestamps), so the scan that read it is redone at the next check.
RACY_NS = 1_000_000_000


class FolderIndex:
    """The ids of the images in a bucket folder, safe to share between threads."""

    def __init__(self, paths: BucketPaths, *, recheck_every: float = 1.0) -> None:
        self.paths = paths
        self.name = paths.name
        self.recheck_every = recheck_every
        self.scans = 0  # how many times the folder was listed: lets tests and the admin see it stays cheap
        self._lock = threading.Lock()
        self._index = IdIndex([])
        self._stamp: int | None = None
        self._racy = True
        self._checked_at = float("-inf")
        self._unlisted: str | None = None  # why the last look at the folder failed (logged once)

    def scan(self) -> tuple[set[str], set[str]]:
        """One listing of the folder: the ids of its images and of its sidecars."""
        self.scans += 1
        names = os.listdir(self.paths.directory)
        return ids_in(self.paths.directory, IMAGE_SUFFIX, names), ids_in(self.paths.directory, META_SUFFIX, names)

    def reload(self) -> tuple[set[str], set[str]]:
        """List the folder now, whatever its mtime says, and install what it holds (start-up recovery): the
        ids of its images and of its sidecars."""
        with self._lock:
            stamp = os.stat(self.paths.directory).st_mtime_ns
            images, sidecars = self.scan()
            self._install(list(images), stamp)
        return images, sidecars

    def _install(self, ids: list[str], stamp: int | None) -> None:
        """Replace the index with a listing taken when the folder's mtime was `stamp` (lock held)."""
        self._index = IdIndex(ids)
        self._stamp = stamp
        self._racy = stamp is None or time.time_ns() - stamp < RACY_NS
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
            stamp = os.stat(self.paths.directory).st_mtime_ns
            if stamp == self._stamp and not self._racy:
                return
            images = self.scan()[0]
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

    def add(self, image_id: str) -> None:
        """An image this process placed in the folder (published, approved, put back)."""
        with self._lock:
            self._index.add(image_id)

    def unknown(self) -> str | None:
        """Why `count` cannot be trusted now (the folder could not be listed at the last look); None if it can."""
        return self._unlisted
