"""An avatar's variants: the sizes (`serving.sizes`) and formats (AVIF, WebP, JPEG) sites ask for.

A stored image is one `image_size` WebP. What a visitor gets is that image scaled down to the size asked
for and encoded in the best format their client shows. Uniques are made into every variant at publish time,
in the imaging process (framed at each size: `imaging.framed_image`), and stored as one archive beside the
image, its "framed copy": a claim then costs a read and an unzip, and the archive goes wherever the image
goes (claimed, deleted, set aside). Fallbacks, served over and over, are made into the variant asked for on
first use and kept in the serving process's memory with the image (`server.visitor`).

The archive is an uncompressed zip (the images are compressed already) whose members are named
`<size>.<extension>` (`64.avif`); its dates are fixed, so the same image gives the same bytes.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from PIL import AvifImagePlugin, Image, JpegImagePlugin  # noqa: F401  (registered up front, like WebP)

from avatargen.imaging import ImageError, encode_webp, framed_image, open_webp


@dataclass(frozen=True)
class Format:
    """One format a visitor may get: its media type, URL suffix and how Pillow writes it."""

    name: str  # also the archive members' extension
    media_type: str
    encode: Callable[[Image.Image, int], bytes]  # (RGB image, the configured WebP quality) -> bytes


def _save(image: Image.Image, pillow_format: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=pillow_format, **options)
    return out.getvalue()


# AVIF at quality 50 looks like WebP at 60 and is about a third smaller; speed 8 encodes in about a seventh
# of the default's time for a file within 2% of its size. JPEG at 75 is what e-mail clients get.
AVIF_QUALITY, AVIF_SPEED, JPEG_QUALITY = 50, 8, 75
AVIF = Format("avif", "image/avif", lambda image, _: _save(image, "AVIF", quality=AVIF_QUALITY, speed=AVIF_SPEED))
WEBP = Format("webp", "image/webp", lambda image, quality: encode_webp(image, quality))
JPEG = Format("jpg", "image/jpeg", lambda image, _: _save(image, "JPEG", quality=JPEG_QUALITY, optimize=True))
FORMATS = (AVIF, WEBP, JPEG)  # best first
BY_NAME = {form.name: form for form in FORMATS}


def member(size: int, form: Format) -> str:
    """The archive member (and ETag part) of one variant: `64.avif`."""
    return f"{size}.{form.name}"


def scaled(image: Image.Image, size: int) -> Image.Image:
    """The image at `size` px a side (LANCZOS), or itself when it is that size already."""
    return image if image.size == (size, size) else image.resize((size, size), Image.Resampling.LANCZOS)


def variant(webp: bytes, size: int, form: Format, quality: int) -> bytes:
    """One variant of a stored (unframed) image, made now: a fallback's, on first use."""
    return form.encode(scaled(open_webp(webp, "make a variant").convert("RGB"), size), quality)


def pack(files: Iterable[tuple[str, bytes]]) -> bytes:
    """An uncompressed zip of the given (name, bytes), with fixed dates: the same input, the same bytes."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in files:
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return out.getvalue()


def framed_variants(webp: bytes, quality: int, sizes: Iterable[int]) -> bytes:
    """Every variant of a unique, framed at each size (the frame is drawn at the size shown, not shrunk
    with the picture, so its label stays legible), as one archive. The stored size's WebP is byte for byte
    `imaging.frame_unique`'s."""
    return _all_variants(webp, quality, sizes, framed_image)


def scaled_variants(webp: bytes, quality: int, sizes: Iterable[int]) -> bytes:
    """Every variant of an image as it is (a unique framed before variants existed: its frame is scaled
    with it), as one archive."""
    return _all_variants(webp, quality, sizes, lambda image: image)


def _all_variants(webp: bytes, quality: int, sizes: Iterable[int],
                  finish: Callable[[Image.Image], Image.Image]) -> bytes:
    original = open_webp(webp, "make variants").convert("RGB")
    files = []
    for size in sizes:
        image = finish(scaled(original, size))
        files += [(member(size, form), form.encode(image, quality)) for form in FORMATS]
    return pack(files)


def is_archive(data: bytes) -> bool:
    """Whether `data` looks like a variants archive (a zip) rather than a single image."""
    return data[:4] == b"PK\x03\x04"


def unpack(archive: bytes, name: str) -> bytes:
    """One member of a variants archive; ImageError when the archive is broken, KeyError when it lacks it."""
    try:
        with zipfile.ZipFile(io.BytesIO(archive)) as files:
            return files.read(name)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:  # KeyError (no such member) passes through
        raise ImageError(f"not a whole variants archive: {exc}") from None


def webp_members(archive: bytes) -> list[bytes]:
    """Every WebP variant in an archive (the sizes it was made for); ImageError when it is broken."""
    try:
        with zipfile.ZipFile(io.BytesIO(archive)) as files:
            return [files.read(name) for name in files.namelist() if name.endswith(f".{WEBP.name}")]
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ImageError(f"not a whole variants archive: {exc}") from None


def check_archive(data: bytes) -> None:
    """Raise ImageError unless `data` is a whole variants archive (every member's checksum matches)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as files:
            bad = files.testzip()
            names = files.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ImageError(f"not a whole variants archive: {exc}") from None
    if bad is not None or not names:
        raise ImageError(f"not a whole variants archive: {'member ' + bad + ' is broken' if bad else 'empty'}")
