"""Avatars as pixels in the terminal.

textual-image draws real pixels with the Kitty graphics protocol or Sixel where the terminal supports
them and coloured half-cells elsewhere. "auto" asks the terminal (once, before Textual starts: it cannot
be asked later); "halfcell" and "unicode" force a renderer, for terminals that answer wrongly and for
tests, whose output must not depend on the terminal they run in.

Bytes that do not decode (a proxy answering 200 with its own HTML page, a cut-off download) become a
picture without pixels that says why: the owner sees that one card is wrong, and the rest of the panel
goes on.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from PIL import Image as PILImage
from rich.text import Text
from textual.widget import Widget
from textual.widgets import Static
from textual_image.widget import HalfcellImage, UnicodeImage
from textual_image.widget import Image as AutoImage

from avatargen.api import ImageInfo

ImageStyle = Literal["auto", "halfcell", "unicode"]
IMAGE_STYLES: tuple[ImageStyle, ...] = ("auto", "halfcell", "unicode")

# textual-image picks its "auto" class at import time (Sixel or not): a factory is all they share.
_WIDGETS: dict[ImageStyle, Callable[..., Widget]] = {
    "auto": AutoImage, "halfcell": HalfcellImage, "unicode": UnicodeImage,
}
UNDECODABLE = (OSError, ValueError, PILImage.DecompressionBombError)  # UnidentifiedImageError is an OSError


@dataclass(frozen=True)
class Picture:
    """A stored avatar with its pixels, decoded once when it arrives; without them, `problem` says why."""

    info: ImageInfo
    image: PILImage.Image | None
    problem: str | None = None


def _not_an_image(data: bytes) -> str:
    """What came instead of an image, in a few words: its size and how it starts (`<!DOCTYPE html>`)."""
    start = data[:24].decode("utf-8", "replace").split("\n")[0].strip()
    return f"not an image: {len(data)} bytes" + (f" starting {start!r}" if start else "")


def _pixels(data: bytes) -> PILImage.Image:
    image = PILImage.open(io.BytesIO(data))
    image.load()
    return image


def decode(info: ImageInfo, data: bytes) -> Picture:
    try:
        return Picture(info, _pixels(data))
    except PILImage.UnidentifiedImageError:
        return Picture(info, None, _not_an_image(data))
    except UNDECODABLE as exc:
        return Picture(info, None, f"a broken image: {exc}")


def decode_pixels(data: bytes) -> PILImage.Image | None:
    """The pixels of a small picture the server made itself (a live preview); None if they do not decode
    (the panel skips that one: the next comes a second later)."""
    try:
        return _pixels(data)
    except UNDECODABLE:
        return None


def image_widget(style: ImageStyle, picture: Picture, *, classes: str = "") -> Widget:
    """A widget that draws the picture with the chosen renderer, sized by CSS (or says why it cannot)."""
    if picture.image is None:
        return Static(Text(f"cannot show image: {picture.problem}"), classes=f"{classes} -unshowable")
    return pixels_widget(style, picture.image, classes=classes)


def pixels_widget(style: ImageStyle, image: PILImage.Image | None, *, classes: str = "") -> Widget:
    """A widget that draws pixels with the chosen renderer, sized by CSS; give it others by setting its
    `image` (None: nothing drawn)."""
    return _WIDGETS[style](image, classes=classes)
