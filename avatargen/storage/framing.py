"""What a unique's claimer receives, whichever the backend: the unique bucket frames every image it stores
at publish time, so that a claim costs a read and never an encode."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from avatargen.config import Settings
from avatargen.variants import framed_variants


def unique_copy(settings: Settings) -> Callable[[bytes], bytes]:
    """What a unique's claimer receives, made from its stored WebP at publish time, whichever the backend:
    every variant of it, framed (`avatargen.variants.framed_variants`)."""
    return partial(framed_variants, quality=settings.generator.webp_quality, sizes=settings.sizes)
