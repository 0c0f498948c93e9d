"""How times, counts and prompts read on screen, the same in every panel (money: `avatargen.api.money`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime

from rich.text import Text

# The first part of a prompt as avatargen.prompts.compose writes it: "<prefix> of <subject>[ from the film <film>]".
_OPENING = re.compile(r"^(?P<prefix>.+?) of .+?(?: from the film (?P<film>.+))?$")
_ARTIST = "in the style of "


def clock(moment: datetime) -> str:
    """A server timestamp as the owner's local wall-clock time."""
    return moment.astimezone().strftime("%H:%M:%S")


def timestamp(moment: datetime) -> str:
    """A server timestamp as the owner's local date and time."""
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def targets(counts: Mapping[str, int]) -> str:
    """A run's images per bucket: "unique 18, fallback 35"."""
    return ", ".join(f"{bucket} {count}" for bucket, count in counts.items())


def caption(prompt: str) -> Text:
    """What tells one avatar's prompt from the others, for a caption too short for the whole prompt.

    Every prompt says "… of <subject>" and most "in the style of": the caption leaves those out and keeps
    what varies (prefix, film in italics, artist in bold, then the suffixes). A prompt of another shape
    is shown as it is.
    """
    opening, *rest = prompt.split(", ")
    match = _OPENING.match(opening)
    if match is None:
        return Text(prompt)
    parts = [Text(match["prefix"])]
    if match["film"]:
        parts.append(Text(match["film"], "italic"))
    for part in rest:
        parts.append(Text(part.removeprefix(_ARTIST), "bold") if part.startswith(_ARTIST) else Text(part))
    return Text(" · ").join(parts)
