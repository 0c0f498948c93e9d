"""The imaging process: where generated images are decoded, resized, encoded, checked by the safety gate
and framed.

That is CPU work that would otherwise hold the GIL against the event loop serving visitors, so it runs in
one process of its own (spawned: the server's threads and sockets are not copied into it), started on
first use and replaced when it dies. It never outlives the server, however the server ends
(`avatargen.child_processes`).

With the gate on, a batch takes two calls: the avatars are made first and come back, then they are
checked (and the ones that pass framed). A detector that crashes the process in the second call (a
segfault in onnxruntime) cannot take the images with it: they come back held, with what went wrong.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, TypeVar

from avatargen import review
from avatargen.child_processes import die_with_parent
from avatargen.config import GeneratorSettings, ReviewSettings
from avatargen.generator.errors import RunFailed
from avatargen.imaging import make_avatars, preview_webp
from avatargen.storage.protocols import StoredBucket

T = TypeVar("T")


@dataclass(frozen=True)
class Avatar:
    """One generated image, ready to store: its WebP bytes, the framed copy a unique is sent as (made only
    for an image that passed), and the gate's verdict (None when the gate is off)."""

    webp: bytes
    framed: bytes | None
    verdict: review.Verdict | None = None

    @property
    def held(self) -> bool:
        return self.verdict is not None and self.verdict.held


def review_avatars(avatars: list[bytes], rules: ReviewSettings,
                   prepare: Callable[[bytes], bytes] | None) -> list[tuple[bytes | None, review.Verdict]]:
    """In the imaging process: the gate's verdict on each avatar, and the framed copy of each one that
    passed (when its bucket frames). Framing waits for the verdict: a held image is never framed."""
    checked = []
    for webp in avatars:
        verdict = review.check(webp, rules)
        checked.append((prepare(webp) if prepare is not None and not verdict.held else None, verdict))
    return checked


class ImagingPool:
    def __init__(self, settings: GeneratorSettings, rules: ReviewSettings,
                 buckets: Mapping[str, StoredBucket]) -> None:
        self._settings = settings
        self._rules = rules
        self._buckets = buckets
        self._pool: ProcessPoolExecutor | None = None

    async def _call(self, function: Callable[..., T], *args: Any) -> T:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=die_with_parent, initargs=(os.getpid(),))
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, function, *args)
        except BrokenProcessPool:
            self._pool = None  # the next request starts a fresh one
            raise RunFailed("the imaging process died") from None

    async def gate_problem(self) -> str | None:
        """Why the safety gate cannot run in the imaging process (None: it can, and its detector is loaded)."""
        return await self._call(review.problem)

    async def make_avatars(self, bucket_name: str, images: Sequence[str | bytes]) -> list[Avatar]:
        """The stored avatars of a batch of SD's base64 images, checked by the gate when it is on, with the
        framed copies of the uniques that may be published."""
        size, quality = self._settings.image_size, self._settings.webp_quality
        prepare = self._buckets[bucket_name].prepare
        if not self._rules.enabled:
            return [Avatar(webp, framed) for webp, framed in
                    await self._call(make_avatars, images, size, quality, prepare)]
        made = [webp for webp, _ in await self._call(make_avatars, images, size, quality, None)]
        try:
            checked = await self._call(review_avatars, made, self._rules, prepare)
        except RunFailed as exc:
            verdict = review.failed(f"{exc} while the safety gate checked the images")
            return [Avatar(webp, None, verdict) for webp in made]
        return [Avatar(webp, framed, verdict) for webp, (framed, verdict) in zip(made, checked, strict=True)]

    async def preview(self, data: bytes) -> bytes:
        """A live preview made small (`imaging.preview_webp`)."""
        return await self._call(preview_webp, data)

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
