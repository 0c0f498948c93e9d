"""Decoding what the SD web UI sends, making stored avatars, framing uniques, the placeholder."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import pytest
from PIL import Image

from avatargen.imaging import (
    PREVIEW_BYTES,
    PREVIEW_EDGE,
    ImageError,
    decode_image,
    frame_unique,
    placeholder_webp,
    preview_webp,
    sniff_format,
    to_avatar_webp,
)
from avatargen.simulator.drawing import preview_png


def encoded(image: Image.Image, kind: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=kind, **options)
    return out.getvalue()


def stripes(width: int, height: int) -> Image.Image:
    """Red left third, green middle, blue right third: shows which part a crop kept."""
    image = Image.new("RGB", (width, height), (0, 200, 0))
    image.paste((220, 0, 0), (0, 0, width // 3, height))
    image.paste((0, 0, 220), (width - width // 3, 0, width, height))
    return image


def noisy(size: int) -> Image.Image:
    return Image.frombytes("RGB", (size, size), bytes((n * 7919) % 251 for n in range(size * size * 3)))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a size in its header but carries no pixels: what a decompression bomb starts with."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@pytest.mark.parametrize("kind", ["PNG", "JPEG", "WEBP"])
def test_each_format_is_sniffed_and_decoded(kind: str) -> None:
    data = encoded(stripes(60, 40), kind)
    assert sniff_format(data) == kind
    image = decode_image(data)
    assert image.format == kind
    assert image.size == (60, 40)


def test_base64_with_and_without_data_url_prefix() -> None:
    data = encoded(stripes(30, 30), "PNG")
    text = base64.b64encode(data).decode()
    for variant in (text, f"data:image/png;base64,{text}", text.encode(), f"  {text[:20]}\n{text[20:]}\n"):
        assert decode_image(variant).size == (30, 30)


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        (b"hello, not an image", "not a PNG, JPEG or WebP"),
        (encoded(Image.new("RGB", (8, 8)), "GIF"), "not a PNG, JPEG or WebP"),
        ("this is not base64!", "invalid base64"),
        ("data:image/png,rawpixels", "must be base64"),
        (b"\xff\xfe\x00binary junk", "nor base64"),
        (base64.b64encode(b"plain text, validly encoded").decode(), "not a PNG, JPEG or WebP"),
    ],
)
def test_garbage_is_rejected_with_a_clear_error(data: str | bytes, complaint: str) -> None:
    with pytest.raises(ImageError, match=complaint):
        decode_image(data)


def test_truncated_image_is_rejected() -> None:
    data = encoded(noisy(64), "PNG")
    with pytest.raises(ImageError, match="invalid or truncated PNG"):
        decode_image(data[: len(data) // 2])


def test_too_large_image_is_refused_before_decoding() -> None:
    bomb = encoded(Image.new("1", (5000, 300)), "PNG")
    assert len(bomb) < 10_000
    with pytest.raises(ImageError, match="5000x300 is too large"):
        decode_image(bomb)
    with pytest.raises(ImageError, match="3000x3000 is too large"):
        decode_image(png_header_only(3000, 3000))


def test_pillow_decompression_bomb_becomes_image_error() -> None:
    with pytest.raises(ImageError, match="too large"):
        decode_image(png_header_only(20_000, 20_000))


def rgb(image: Image.Image, xy: tuple[int, int]) -> tuple[int, int, int]:
    """One pixel of an RGB image as its three channels."""
    pixel = image.getpixel(xy)
    assert isinstance(pixel, tuple) and len(pixel) == 3, pixel
    return pixel[0], pixel[1], pixel[2]


def test_avatar_is_a_centre_cropped_square_webp() -> None:
    avatar = to_avatar_webp(stripes(300, 100), 64, 80)
    image = Image.open(io.BytesIO(avatar))
    assert (image.format, image.size, image.mode) == ("WEBP", (64, 64), "RGB")
    red, green, blue = rgb(image, (32, 32))
    assert green > 150 and red < 60 and blue < 60
    # the side stripes were cropped away entirely
    assert rgb(image, (1, 32))[0] < 60 and rgb(image, (62, 32))[2] < 60


def test_avatar_quality_controls_the_encoding() -> None:
    source = noisy(128)
    low, high = to_avatar_webp(source, 128, 10), to_avatar_webp(source, 128, 95)
    assert len(low) < len(high) / 2


def test_avatar_accepts_any_mode() -> None:
    rgba = Image.new("RGBA", (40, 50), (10, 20, 30, 128))
    assert Image.open(io.BytesIO(to_avatar_webp(rgba, 32, 60))).size == (32, 32)


def test_frame_keeps_the_size_and_draws_border_and_label() -> None:
    plain = encoded(Image.new("RGB", (256, 256), (40, 90, 200)), "WEBP", quality=90)
    framed = frame_unique(plain, 90)
    image = Image.open(io.BytesIO(framed)).convert("RGB")
    assert image.size == (256, 256)
    for corner in ((0, 0), (255, 0), (0, 255), (255, 255), (128, 2)):
        red, green, blue = rgb(image, corner)
        assert red > 150 and green > 120 and blue < 110, f"border pixel {corner} is {(red, green, blue)}"
    red, green, blue = rgb(image, (128, 100))
    assert blue > 150 and red < 80, "the avatar itself is untouched"
    band = [rgb(image, (x, y)) for x in range(20, 236) for y in range(224, 246)]
    assert sum(pixel[2] for pixel in band) / len(band) < 120, "the label band darkens the bottom"
    assert any(pixel[0] > 150 and pixel[2] < 100 for pixel in band), "the label text is drawn"


def test_frame_is_deterministic_and_keeps_small_sizes() -> None:
    plain = to_avatar_webp(noisy(96), 96, 60)
    assert frame_unique(plain, 60) == frame_unique(plain, 60)
    assert Image.open(io.BytesIO(frame_unique(plain, 60))).size == (96, 96)


def test_frame_rejects_non_webp() -> None:
    with pytest.raises(ImageError, match="not a valid WebP"):
        frame_unique(encoded(Image.new("RGB", (10, 10)), "PNG"), 60)


def test_placeholder_is_a_cached_webp_of_the_size() -> None:
    data = placeholder_webp(256)
    image = Image.open(io.BytesIO(data))
    assert (image.format, image.size) == ("WEBP", (256, 256))
    assert placeholder_webp(256) is data
    centre, corner = image.convert("RGB").getpixel((128, 100)), image.convert("RGB").getpixel((5, 5))
    assert centre != corner, "a silhouette, not a blank square"


@pytest.mark.parametrize("denoised", [0.0, 0.2, 0.6, 1.0])
def test_a_live_preview_is_made_small_whatever_the_noise(denoised: float) -> None:
    full_size = preview_png("A painting of cjs, bokeh", 5, 512, 512, denoised=denoised)
    small = preview_webp(full_size)
    assert len(small) <= PREVIEW_BYTES
    image = Image.open(io.BytesIO(small))
    assert image.format == "WEBP" and max(image.size) <= PREVIEW_EDGE
    if denoised >= 0.6:
        assert image.size == (PREVIEW_EDGE, PREVIEW_EDGE)  # nearly done: the full preview size fits


def test_a_preview_of_a_whole_batch_keeps_its_aspect() -> None:
    grid = encoded(Image.new("RGB", (1024, 512), (90, 120, 200)), "PNG")
    assert Image.open(io.BytesIO(preview_webp(grid))).size == (96, 48)
    with pytest.raises(ImageError):
        preview_webp(b"<html>not an image</html>")
