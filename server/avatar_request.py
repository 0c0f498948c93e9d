"""What a visitor's `GET /avatar` asks for: a size, a format, and what to answer when nothing can be served.

The conventions are Gravatar's and the image CDNs': `?s=64` or `?size=64` (snapped to the next of
`serving.sizes` up, the largest beyond it; anything unparsable ignored), the format from `Accept` (AVIF,
else WebP, else JPEG) unless a suffix forces one (`/avatar.jpg`), and `?d=404` / `?d=blank`. No query string
ever makes an error page: what cannot be understood is ignored.
"""

from __future__ import annotations

import bisect
import functools
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

from avatargen.variants import AVIF, JPEG, WEBP, Format, member

# What `?d=` may ask for when neither bucket has an image; anything else gets the placeholder.
DEFAULTS = ("404", "blank")
_TAG = re.compile(r'(?:W/)?"([A-Za-z0-9_-]{1,100})\.(\d{1,5})\.([a-z]{3,4})"')


@dataclass(frozen=True)
class Wanted:
    """One request's choice: the edge in px, the format, and `?d=` (None: the placeholder)."""

    size: int
    form: Format
    default: str | None = None

    @property
    def member(self) -> str:
        return member(self.size, self.form)

    def etag(self, image_id: str) -> bytes:
        """The strong ETag of this variant of an image: the id, the size and the format name it is for."""
        return f'"{image_id}.{self.member}"'.encode()

    def matches(self, if_none_match: str) -> bool:
        """Whether `If-None-Match` names a variant of this size and format that this server made (any image:
        the visitor's copy stays good, as with If-Modified-Since, and no bucket is looked at)."""
        return any(size == str(self.size) and name == self.form.name and image_id != "placeholder"
                   for image_id, size, name in _TAG.findall(if_none_match))


@functools.lru_cache(maxsize=256)
def negotiate(accept: str) -> Format:
    """The best format a client lists in `Accept` (one listed with q=0 is refused): AVIF, WebP, else JPEG.
    Cached: a few browsers' headers make up nearly all requests."""
    listed = set()
    for item in accept.lower().split(","):
        media_type, *parameters = item.split(";")
        refused = any(name.strip() == "q" and value.strip() in ("0", "0.", "0.0", "0.00", "0.000")
                      for name, _, value in (parameter.partition("=") for parameter in parameters))
        if not refused:
            listed.add(media_type.strip())
    return AVIF if AVIF.media_type in listed else WEBP if WEBP.media_type in listed else JPEG


class AvatarRequests:
    """Reads what a request wants, for the configured sizes (smallest first)."""

    def __init__(self, sizes: tuple[int, ...]) -> None:
        self.sizes = sizes
        self.largest = sizes[-1]

    def snap(self, text: str) -> int | None:
        """The configured size for `?s=`: the next one up from the number asked, the largest beyond it; None
        when it is not a number."""
        try:
            asked = int(text.strip(), 10)
        except ValueError:
            return None
        return self.sizes[min(bisect.bisect_left(self.sizes, asked), len(self.sizes) - 1)]

    def wanted(self, query: bytes, accept: str | None, forced: Format | None = None) -> Wanted:
        """What the query string (raw) and Accept header (or a suffix's `forced` format) ask for."""
        form = forced or negotiate(accept or "")
        if not query:
            return Wanted(self.largest, form)
        size, default = self.largest, None
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if name in ("s", "size"):
                size = self.snap(value) or size
            elif name == "d" and value in DEFAULTS:
                default = value
        return Wanted(size, form, default)
