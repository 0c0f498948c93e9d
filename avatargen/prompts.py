"""Randomly composed prompts, the seed's recipe.

"<prefix> of <subject>", then a film reference only, an artist reference only, both, or neither (with
the configured weights: prompts with neither tend to give poor images, so the seed keeps that share
small), then between suffix_min and suffix_max distinct suffixes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from avatargen.config import PromptSettings

Reference = Literal["film_only", "artist_only", "both", "neither"]


@dataclass(frozen=True)
class Prompt:
    text: str
    reference: Reference
    prefix: str
    film: str | None
    artist: str | None
    suffixes: tuple[str, ...]


def choose_reference(settings: PromptSettings, rng: random.Random) -> Reference:
    """Pick the reference kind by its weight; the rest of the probability mass is "neither"."""
    roll = rng.random()
    for kind in ("film_only", "artist_only", "both"):
        weight = getattr(settings, kind)
        if roll < weight:
            return kind
        roll -= weight
    return "neither"


def compose(settings: PromptSettings, rng: random.Random) -> Prompt:
    """One prompt; the same rng state always gives the same prompt."""
    prefix = rng.choice(settings.prefixes)
    reference = choose_reference(settings, rng)
    film = rng.choice(settings.films) if reference in ("film_only", "both") else None
    artist = rng.choice(settings.artists) if reference in ("artist_only", "both") else None
    count = rng.randint(settings.suffix_min, settings.suffix_max)
    suffixes = tuple(rng.sample(settings.suffixes, count))
    parts = [f"{prefix} of {settings.subject}" + (f" from the film {film}" if film else "")]
    if artist:
        parts.append(f"in the style of {artist}")
    parts.extend(suffixes)
    return Prompt(", ".join(parts), reference, prefix, film, artist, suffixes)


def sample(settings: PromptSettings, n: int, seed: int | None = None) -> list[Prompt]:
    """n prompts; deterministic for a given seed."""
    rng = random.Random(seed)
    return [compose(settings, rng) for _ in range(n)]
