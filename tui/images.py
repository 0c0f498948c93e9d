"""Avatars as pixels in the terminal.

textual-image draws real pixels with the Kitty graphics protocol or Sixel where the terminal supports
them and coloured half-cells elsewhere. "auto" asks the terminal (once, before Textual starts: it cannot
be asked later); "halfcell" and "unicode" force a renderer, for terminals that answer wrongly and for
tests, whose output must not depend on the terminal they run in.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Literal

from PIL import Image as PILImage
from textual.widget import Widget
from textual_image.widget import HalfcellImage, UnicodeImage
from textual_image.widget import Image as AutoImage

from avatargen.api import ImageInfo

ImageStyle = Literal["auto", "halfcell", "unicode"]
IMAGE_STYLES: tuple[ImageStyle, ...] = ("auto", "halfcell", "unicode")

_WIDGETS: dict[ImageStyle, type[Widget]] = {"auto": AutoImage, "halfcell": HalfcellImage, "unicode": UnicodeImage}


@dataclass(frozen=True)
class Picture:
    """A stored avatar with its pixels, decoded once when it arrives."""

    info: ImageInfo
    image: PILImage.Image


def decode(info: ImageInfo, data: bytes) -> Picture:
    image = PILImage.open(io.BytesIO(data))
    image.load()
    return Picture(info, image)


def image_widget(style: ImageStyle, picture: Picture, *, classes: str = "") -> Widget:
    """A widget that draws the picture with the chosen renderer, sized by CSS."""
    return _WIDGETS[style](picture.image, classes=classes)
