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


def decode(info: ImageInfo, data: bytes) -> Picture:
    try:
        image = PILImage.open(io.BytesIO(data))
        image.load()
    except PILImage.UnidentifiedImageError:
        return Picture(info, None, _not_an_image(data))
    except UNDECODABLE as exc:
        return Picture(info, None, f"a broken image: {exc}")
    return Picture(info, image)


def image_widget(style: ImageStyle, picture: Picture, *, classes: str = "") -> Widget:
    """A widget that draws the picture with the chosen renderer, sized by CSS (or says why it cannot)."""
    if picture.image is None:
        return Static(Text(f"cannot show image: {picture.problem}"), classes=f"{classes} -unshowable")
    return _WIDGETS[style](picture.image, classes=classes)
