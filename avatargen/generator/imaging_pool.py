"""The imaging process: where generated images are decoded, resized, encoded and framed.

That is CPU work that would otherwise hold the GIL against the event loop serving visitors, so it runs in
one process of its own (spawned: the server's threads and sockets are not copied into it), started on
first use and replaced when it dies. It never outlives the server, however the server ends (lifeline).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from avatargen.buckets import Bucket
from avatargen.config import GeneratorSettings
from avatargen.generator.errors import RunFailed
from avatargen.imaging import make_avatars
from avatargen.lifeline import helper_process


class ImagingPool:
    def __init__(self, settings: GeneratorSettings, buckets: Mapping[str, Bucket]) -> None:
        self._settings = settings
        self._buckets = buckets
        self._pool: ProcessPoolExecutor | None = None

    async def make_avatars(self, bucket_name: str, images: Sequence[str | bytes]) -> list[tuple[bytes, bytes | None]]:
        """The stored avatars (and framed copies, for uniques) of a batch of SD's images (base64 or bytes)."""
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=helper_process, initargs=(os.getpid(),))
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._pool, make_avatars, images, self._settings.image_size, self._settings.webp_quality,
                self._buckets[bucket_name].prepare)
        except BrokenProcessPool:
            self._pool = None  # the next request starts a fresh one
            raise RunFailed("the imaging process died") from None

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
