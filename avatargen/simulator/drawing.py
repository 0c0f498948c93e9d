"""Avatar-like pictures drawn without a GPU, for the simulated Stable Diffusion web UI.

The demo needs images that look like what the real model makes (a head and shoulders on a
background) and that differ from one prompt and seed to the next, so buckets and the TUI show
variety. Everything is picked from a hash of prompt and seed: the same request draws the same image,
as a fixed seed does on the real web UI. The figure is drawn at a small size and scaled, which keeps
a 512x512 image to a few milliseconds.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import random

from PIL import Image, ImageDraw, ImageFilter, ImageOps

_DRAW_EDGE = 192  # the longer side of the canvas the figure is drawn on before scaling
_SKIN = ((255, 224, 196), (241, 194, 125), (224, 172, 105), (198, 134, 66), (141, 85, 36), (92, 56, 32))
_HAIR = ((20, 20, 20), (70, 45, 25), (140, 90, 40), (220, 190, 110), (180, 60, 30), (150, 150, 155))
_DRAWING_WORDS = ("sketch", "pencil", "charcoal")
Colour = tuple[int, int, int]


def _hsv(rng: random.Random, *, saturation: float, value: float) -> Colour:
    red, green, blue = colorsys.hsv_to_rgb(rng.random(), saturation, value)
    return round(red * 255), round(green * 255), round(blue * 255)


def _background(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    """A vertical two-colour gradient with a few soft discs ("bokeh")."""
    top = Image.new("RGB", size, _hsv(rng, saturation=0.45, value=0.95))
    bottom = Image.new("RGB", size, _hsv(rng, saturation=0.6, value=0.55))
    image = Image.composite(bottom, top, Image.linear_gradient("L").resize(size))
    draw = ImageDraw.Draw(image, "RGBA")
    width, height = size
    for _ in range(rng.randint(3, 8)):
        x, y, r = rng.uniform(0, width), rng.uniform(0, height * 0.7), rng.uniform(4, width / 7)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(255, 255, 255, rng.randint(25, 70)))
    return image


def _figure(draw: ImageDraw.ImageDraw, rng: random.Random, width: int, height: int) -> None:
    """Shoulders, neck, head, hair and face, placed in proportion to the canvas."""
    def box(x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
        return x0 * width, y0 * height, x1 * width, y1 * height

    skin = rng.choice(_SKIN)
    shade = tuple(round(c * 0.85) for c in skin)
    hair = rng.choice(_HAIR)
    style = rng.choice(("short", "long", "bun", "spiky", "bald"))
    head_w, head_h = rng.uniform(0.17, 0.22), rng.uniform(0.23, 0.27)
    head = box(0.5 - head_w, 0.45 - head_h, 0.5 + head_w, 0.45 + head_h)

    if style == "long":
        draw.rounded_rectangle(box(0.5 - head_w - 0.04, 0.2, 0.5 + head_w + 0.04, 0.8), radius=width * 0.12,
                               fill=hair)
    draw.ellipse(box(0.1, 0.8, 0.9, 1.45), fill=_hsv(rng, saturation=0.7, value=0.7))  # shoulders
    draw.rectangle(box(0.44, 0.6, 0.56, 0.84), fill=shade)  # neck
    draw.ellipse(head, fill=skin)
    top = box(0.5 - head_w - 0.01, 0.45 - head_h - 0.03, 0.5 + head_w + 0.01, 0.45 + head_h * 0.4)
    if style == "bun":
        draw.ellipse(box(0.43, 0.1, 0.57, 0.24), fill=hair)
    if style == "spiky":
        base = 0.45 - head_h * 0.6
        spikes = [(x * width, base * height) for x in (0.5 - head_w, 0.5 + head_w)]
        for i in range(6):
            x = 0.5 - head_w + (i + 0.5) * head_w / 3
            spikes.insert(-1, (x * width, (base - rng.uniform(0.08, 0.14)) * height))
        draw.polygon(spikes, fill=hair)
    if style != "bald":
        draw.chord(top, 180, 360, fill=hair)

    eye_y, eye_dx, eye_r = 0.45, head_w * 0.45, 0.028
    iris = _hsv(rng, saturation=0.6, value=0.5)
    for side in (-1, 1):
        x = 0.5 + side * eye_dx
        draw.ellipse(box(x - eye_r * 1.4, eye_y - eye_r, x + eye_r * 1.4, eye_y + eye_r), fill=(250, 250, 250))
        draw.ellipse(box(x - eye_r * 0.7, eye_y - eye_r * 0.8, x + eye_r * 0.7, eye_y + eye_r * 0.8), fill=iris)
        lift = rng.uniform(0.01, 0.03)
        draw.line(box(x - 0.04, eye_y - 0.045 - lift, x + 0.04, eye_y - 0.05), fill=hair,
                  width=max(1, width // 60))
    if rng.random() < 0.25:  # glasses
        for side in (-1, 1):
            x = 0.5 + side * eye_dx
            draw.ellipse(box(x - 0.06, eye_y - 0.05, x + 0.06, eye_y + 0.05), outline=(30, 30, 30),
                         width=max(1, width // 80))
    draw.line(box(0.5, 0.47, 0.49, 0.53), fill=shade, width=max(1, width // 70))  # nose
    mouth_y = 0.45 + head_h * 0.55
    smile = rng.uniform(0.0, 0.04)
    draw.arc(box(0.44, mouth_y - 0.03 - smile, 0.56, mouth_y + 0.01 + smile), 20, 160, fill=(150, 60, 60),
             width=max(1, width // 60))


def draw_avatar(prompt: str, seed: int, width: int, height: int, *, denoised: float = 1.0) -> Image.Image:
    """An RGB image of `width` x `height` for this prompt and seed.

    `denoised` below 1 blurs the picture, as an interrupted job returns a half-finished image. Prompts
    asking for a sketch, pencil or charcoal drawing come out in greys.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    rng = random.Random(hashlib.sha256(f"{prompt}\0{seed}".encode()).digest())
    scale = _DRAW_EDGE / max(width, height)
    canvas = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = _background(rng, canvas)
    _figure(ImageDraw.Draw(image), rng, *canvas)
    if denoised < 1:
        image = image.filter(ImageFilter.GaussianBlur(radius=(1 - max(0.0, denoised)) * _DRAW_EDGE / 20))
    if any(word in prompt.lower() for word in _DRAWING_WORDS):
        image = ImageOps.grayscale(image).convert("RGB")
    return image.resize((width, height), Image.Resampling.BICUBIC)


def draw_preview(prompt: str, seed: int, width: int, height: int, *, denoised: float) -> Image.Image:
    """The live preview of a job `denoised` (0..1) of the way through its steps: the picture it will
    become, still blurred, showing through the starting noise as the steps advance.

    The noise is drawn at the latent's size (an eighth of the image, as SD's latent is) and scaled up
    without smoothing, so it looks like the blocky noise a real preview starts from; it is the same for
    the same seed, as a real sampler's starting latent is.
    """
    denoised = min(1.0, max(0.0, denoised))
    final = draw_avatar(prompt, seed, width, height, denoised=denoised)
    latent = (max(1, width // 8), max(1, height // 8))
    noise = Image.frombytes("RGB", latent, random.Random(seed).randbytes(latent[0] * latent[1] * 3))
    return Image.blend(noise.resize((width, height), Image.Resampling.NEAREST), final, denoised)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def avatar_png(prompt: str, seed: int, width: int, height: int, *, denoised: float = 1.0) -> bytes:
    """`draw_avatar` encoded as PNG, the web UI's default `samples_format` (fast compression: it is a demo)."""
    return _png(draw_avatar(prompt, seed, width, height, denoised=denoised))


def preview_png(prompt: str, seed: int, width: int, height: int, *, denoised: float) -> bytes:
    """`draw_preview` encoded as PNG, as the web UI's progress route sends its `current_image`."""
    return _png(draw_preview(prompt, seed, width, height, denoised=denoised))
