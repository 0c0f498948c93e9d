"""Turning what the SD web UI sends back into stored avatars, and framing the ones served as unique.

Everything here is pure (bytes in, bytes out) so it runs the same in the generator, in a worker thread
and at start-up recovery; `frame_unique` in particular must give byte-identical output for the same
input, because a pre-framed copy is made at publish time and must match what framing on the fly gives.
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
from collections.abc import Callable, Sequence

from PIL import Image, ImageDraw, ImageFont, ImageOps, WebPImagePlugin  # noqa: F401

# WebPImagePlugin is imported for its side effect: registered up front, WebP never makes Pillow import
# its ~40 other format plugins (Image.init(), a few hundred ms on the first image a process handles).

# An avatar source bigger than this is refused before its pixels are decoded: SD returns 512-2048 px
# images, and a small compressed file can expand to gigabytes (a decompression bomb).
MAX_EDGE = 4096
MAX_PIXELS = 4096 * 2048

UNIQUE_LABEL = "UNIQUE LIMITED EDITION"
_GOLD = (212, 175, 55, 255)
_DARK = (20, 16, 8, 255)
_BAND = (0, 0, 0, 185)

_SIGNATURES = (
    ("PNG", lambda head: head.startswith(b"\x89PNG\r\n\x1a\n")),
    ("JPEG", lambda head: head.startswith(b"\xff\xd8\xff")),
    ("WEBP", lambda head: head[:4] == b"RIFF" and head[8:12] == b"WEBP"),
)


class ImageError(ValueError):
    """Image data we cannot or will not use; the message says what was wrong with it."""


def sniff_format(data: bytes) -> str | None:
    """The Pillow format name ("PNG", "JPEG", "WEBP") from the magic bytes, or None for anything else.

    The SD web UI sends whatever its `samples_format` setting says: never assume PNG.
    """
    return next((name for name, matches in _SIGNATURES if matches(data[:12])), None)


def check_webp_header(head: bytes, size: int) -> None:
    """Raise ImageError unless `head`, the first 12 bytes of a file of `size` bytes, is a WebP RIFF header
    that gives that size: a file cut short or grown is found without reading the rest of it."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        raise ImageError(f"not a WebP file (it starts with {head[:12]!r})")
    declared = int.from_bytes(head[4:8], "little") + 8
    if declared != size:
        raise ImageError(f"not a whole WebP file: its header says {declared} bytes, the file has {size}")


def check_webp(data: bytes) -> None:
    """Raise ImageError unless `data` is a whole WebP file, judged by its RIFF structure alone.

    Cheap enough for every file read before it is sent (no pixel is decoded): the RIFF header's size
    must match the length, and the chunks must fill the file exactly. A file cut short (a full disk, a
    copy interrupted, `truncate`) or with bytes appended fails; a flipped bit inside the pixel data
    does not, and needs a decode to find.
    """
    check_webp_header(data[:12], len(data))
    if len(data) < 20:
        raise ImageError(f"not a whole WebP file: {len(data)} bytes hold no image")
    offset = 12
    while offset + 8 <= len(data):
        size = int.from_bytes(data[offset + 4:offset + 8], "little")
        offset += 8 + size + (size & 1)  # chunks are padded to an even length
    if offset != len(data):
        raise ImageError(f"not a whole WebP file: its chunks end at byte {offset}, the file has {len(data)}")


def _base64_payload(text: str) -> bytes:
    """Decode base64 text, with or without a `data:image/...;base64,` prefix."""
    text = text.strip()
    if text.startswith("data:"):
        header, comma, text = text.partition(",")
        if not comma or not header.endswith(";base64"):
            raise ImageError(f"a data: URL must be base64 encoded, got {header[:40]!r}")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(f"invalid base64 image data: {exc}") from None


def _image_bytes(data: str | bytes) -> bytes:
    """Raw image bytes from either raw bytes or base64 (as text or as ASCII bytes)."""
    if isinstance(data, str):
        return _base64_payload(data)
    if sniff_format(data):
        return data
    try:
        return _base64_payload(data.decode("ascii"))
    except (UnicodeDecodeError, ImageError):
        raise ImageError(f"not a PNG, JPEG or WebP image (starts with {data[:8]!r}), nor base64 text") from None


def decode_image(data: str | bytes) -> Image.Image:
    """Decode a PNG, JPEG or WebP image given as raw bytes or base64 (the SD web UI sends base64 PNG).

    The format is checked from the magic bytes and the size from the header before any pixel is
    decoded, so garbage and decompression bombs fail fast with an ImageError instead of eating memory.
    """
    raw = _image_bytes(data)
    kind = sniff_format(raw)
    if kind is None:
        raise ImageError(f"not a PNG, JPEG or WebP image (starts with {raw[:8]!r})")
    try:
        image = Image.open(io.BytesIO(raw), formats=[kind])
        width, height = image.size
        if width > MAX_EDGE or height > MAX_EDGE or width * height > MAX_PIXELS:
            raise ImageError(
                f"{kind} image of {width}x{height} is too large "
                f"(at most {MAX_EDGE} px a side and {MAX_PIXELS / 1e6:g} Mpx)"
            )
        image.load()
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{kind} image is too large: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"invalid or truncated {kind} image: {exc}") from None
    return image


def encode_webp(image: Image.Image, quality: int) -> bytes:
    """WebP bytes of an image at the given quality (0-100)."""
    if not 0 <= quality <= 100:
        raise ValueError(f"WebP quality must be 0-100, got {quality}")
    out = io.BytesIO()
    image.save(out, format="WEBP", quality=quality)
    return out.getvalue()


def to_avatar_webp(image: Image.Image, size: int, quality: int) -> bytes:
    """The stored avatar: centre-cropped to a square, resized to `size` px with LANCZOS, RGB WebP."""
    if size < 1:
        raise ValueError(f"avatar size must be a positive number of pixels, got {size}")
    square = ImageOps.fit(image.convert("RGB"), (size, size), method=Image.Resampling.LANCZOS)
    return encode_webp(square, quality)


UNIQUE_SHORT_LABEL = "UNIQUE"
# Below these edges the full label, then the short one, no longer fits in letters a visitor can read.
FULL_LABEL_FROM = 128
SHORT_LABEL_FROM = 48


def unique_label(edge: int) -> str | None:
    """What the band of a unique `edge` px wide says: the full label, the short one, or None (too small for
    letters: the frame and a gold diamond mark it instead)."""
    if edge >= FULL_LABEL_FROM:
        return UNIQUE_LABEL
    return UNIQUE_SHORT_LABEL if edge >= SHORT_LABEL_FROM else None


@functools.lru_cache(maxsize=16)
def _label_layout(width: int, height: int, label: str) -> tuple[int, int, ImageFont.FreeTypeFont | ImageFont.ImageFont,
                                                                tuple[float, float]]:
    """Border width, band height, font and text position for one image size (computed once per size)."""
    border = max(2, round(min(width, height) * 0.03))
    band = max(10, round(height * 0.11))
    room = width - 2 * border - 2 * max(2, border // 2)
    font_size = max(6, round(band * 0.6))
    font = ImageFont.load_default(size=font_size)
    while font_size > 6 and font.getlength(label) > room:
        font_size -= 1
        font = ImageFont.load_default(size=font_size)
    left, top, right, bottom = font.getbbox(label)
    band_top = height - border - band
    x = (width - (right - left)) / 2 - left
    y = band_top + (band - (bottom - top)) / 2 - top
    return border, band, font, (x, y)


def framed_image(image: Image.Image) -> Image.Image:
    """The unique as the visitor sees it (RGB, same size): a gold border and a band with its label, or at
    the smallest sizes, where no letters can be read, the border and a gold diamond in the corner."""
    image = image.convert("RGBA")
    width, height = image.size
    label = unique_label(min(width, height))
    overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    if label is not None:
        border, band, font, position = _label_layout(width, height, label)
        draw.rectangle((0, height - border - band, width, height), fill=_BAND)
        draw.text(position, label, font=font, fill=_GOLD)
    else:
        border = 2
        reach = max(4, round(min(width, height) * 0.22))  # the diamond's half-diagonal
        cx, cy = width - border - reach - 1, height - border - reach - 1
        draw.polygon([(cx, cy - reach), (cx + reach, cy), (cx, cy + reach), (cx - reach, cy)], fill=_GOLD,
                     outline=_DARK)
    framed = Image.alpha_composite(image, overlay)
    draw = ImageDraw.Draw(framed)
    draw.rectangle((0, 0, width - 1, height - 1), outline=_GOLD, width=border)
    draw.rectangle((border, border, width - 1 - border, height - 1 - border), outline=_DARK, width=1)
    return framed.convert("RGB")


def open_webp(webp: bytes, what: str) -> Image.Image:
    """Decode stored WebP bytes; ImageError (saying `what` could not be done) when they are not a WebP image."""
    try:
        with Image.open(io.BytesIO(webp), formats=["WEBP"]) as source:
            source.load()
            return source.copy()
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"cannot {what}: not a valid WebP image: {exc}") from None


def frame_unique(webp: bytes, quality: int) -> bytes:
    """The unique avatar as the visitor sees it, at its stored size, as WebP (`framed_image`).

    Deterministic: the pre-framed copy made at publish time is byte-identical to framing on the fly, so
    moving this off the request path changes nothing visible.
    """
    return encode_webp(framed_image(open_webp(webp, "frame")), quality)


@functools.lru_cache(maxsize=8)
def placeholder_webp(size: int) -> bytes:
    """A neutral head-and-shoulders silhouette, served when both buckets are empty (never an error page)."""
    if size < 8:
        raise ValueError(f"placeholder size must be at least 8 px, got {size}")
    scale = 4  # drawn large and scaled down: cheap anti-aliasing for the curves
    edge = size * scale
    image = Image.new("RGB", (edge, edge), (214, 218, 224))
    draw = ImageDraw.Draw(image)
    figure = (158, 165, 176)
    head = edge * 0.19
    cx, cy = edge / 2, edge * 0.40
    draw.ellipse((cx - head, cy - head, cx + head, cy + head), fill=figure)
    draw.ellipse((edge * 0.16, edge * 0.66, edge * 0.84, edge * 1.30), fill=figure)
    small = image.resize((size, size), Image.Resampling.LANCZOS)
    return encode_webp(small, 80)


PREVIEW_EDGE = 96  # the longest side of a live preview sent to the owner: enough for a panel
PREVIEW_BYTES = 2700  # a preview's WebP at most: with base64 and its fields, an event stays under 4 kB
PREVIEW_QUALITIES = (50, 35, 20)  # tried in turn: an early, noisy step needs a lower one to fit


def preview_webp(data: bytes, edge: int = PREVIEW_EDGE, limit: int = PREVIEW_BYTES) -> bytes:
    """A live preview made small for the owner's event stream: at most `edge` px a side, aspect kept
    (a web UI may send the grid of a whole batch), WebP of at most `limit` bytes where lowering the
    quality can get it there, else half the size. SD's previews are hundreds of kB at full size; this is
    a few kB, so a panel on a slow link keeps up at one a second."""
    image = decode_image(data).convert("RGB")
    image.thumbnail((edge, edge), Image.Resampling.LANCZOS)
    for quality in PREVIEW_QUALITIES:
        small = encode_webp(image, quality)
        if len(small) <= limit:
            return small
    image.thumbnail((edge // 2, edge // 2), Image.Resampling.LANCZOS)
    return encode_webp(image, PREVIEW_QUALITIES[-1])


def make_avatars(images: Sequence[str | bytes], size: int, quality: int,
                 prepare: Callable[[bytes], bytes] | None) -> list[tuple[bytes, bytes | None]]:
    """The stored avatars for a batch of SD's base64 images, each with its prepared (framed) copy when the
    bucket wants one. All the CPU work of a generated image, in one call: the generator runs it in a
    process of its own, so the visitors' event loop never waits behind it for the GIL."""
    avatars = []
    for data in images:
        webp = to_avatar_webp(decode_image(data), size, quality)
        avatars.append((webp, prepare(webp) if prepare is not None else None))
    return avatars
