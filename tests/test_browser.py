"""A real browser on the demo page: the avatar renders, and the browser's cache keeps the visitor's unique.

Chromium (Debian's, at /usr/bin/chromium) runs headless with a fresh profile against the real app under
uvicorn. The per-visitor window is off here, so only the browser's own caching stands between a reload
and a second unique being claimed.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Page, Response, async_playwright

from tests.support import fast_settings, serving
from tests.test_visitor import stock, stored

# About 35 s alone (Chromium starting, two page loads): the slowest test outside the benchmarks.
pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]


# The decoded size of the avatar and the colour of its corner pixel, read back through a canvas.
INSPECT = """img => {
    const canvas = document.createElement("canvas");
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    const context = canvas.getContext("2d");
    context.drawImage(img, 0, 0);
    return {width: img.naturalWidth, corner: Array.from(context.getImageData(1, 1, 1, 1).data.slice(0, 3))};
}"""


async def shows_the_unique(page: Page, size: int) -> bool:
    """Wait until the avatar has loaded; whether it rendered at full size with the unique's gold frame."""
    await page.wait_for_function("document.getElementById('avatar')?.complete")
    seen = await page.locator("#avatar").evaluate(INSPECT)
    red, green, blue = seen["corner"]
    return seen["width"] == size and red > 150 and green > 120 and blue < 110


@contextlib.asynccontextmanager
async def chromium(tmp_path: Path) -> AsyncIterator[Page]:
    """A page in headless Chromium with a fresh profile, closed at the end."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield await browser.new_page()
        finally:
            await browser.close()


async def test_demo_page_renders_and_reloads_keep_the_cached_unique(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path, serving__unique_per_visitor=0, serving__unique_every=0,
                             serving__unique_burst=10)
    ids = stock(settings, unique=5, fallback=3)
    size = settings.generator.image_size
    async with serving(settings) as (url, _), chromium(tmp_path) as page:
        await page.goto(url + "/")
        assert await shows_the_unique(page, size)
        assert len(stored(settings, "unique")) == 4

        await page.reload()
        assert await shows_the_unique(page, size)
        await page.goto(url + "/healthz")
        await page.go_back()
        assert await shows_the_unique(page, size)
        await page.goto(url + "/")
        assert await shows_the_unique(page, size)
    assert stored(settings, "unique") < set(ids["unique"])
    assert len(stored(settings, "unique")) == 4, "the browser reused its cached unique: no second claim"


# Each image of the demo page's variants table: the size it asked for, what it decoded to, and its URL.
VARIANTS = """images => images.map(img => ({asked: Number(img.dataset.size), width: img.naturalWidth,
                                      src: img.currentSrc}))"""


async def test_demo_page_shows_one_face_in_every_size_and_format(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path, generator__image_size=128, serving__unique_every=0, serving__unique_burst=10)
    stock(settings, unique=3, fallback=3)
    edge = settings.generator.image_size
    async with serving(settings) as (url, _), chromium(tmp_path) as page:
        answers: list[Response] = []
        page.on("response", lambda response: answers.append(response) if "/avatar" in response.url else None)
        await page.goto(url + "/")
        await page.wait_for_function("document.images.length == 14 && "
                                     "Array.from(document.images).every(img => img.complete)")
        # The <picture> chose AVIF, which Chromium shows, and the unique came framed.
        assert (await page.locator("#avatar").evaluate("img => img.currentSrc")).endswith("/avatar.avif")
        assert await shows_the_unique(page, edge)
        shown = await page.locator("img.variant").evaluate_all(VARIANTS)
        assert len(shown) == 13
        assert all(image["width"] == min(image["asked"], edge) for image in shown), shown
        headers = [await answer.all_headers() for answer in answers]
        assert len(answers) == 14 and len({found.get("x-avatar-id") for found in headers}) == 1, \
            "one face on the whole page, a unique claimed once"
        assert {found.get("x-avatar-kind") for found in headers} == {"unique"}
        assert {found.get("content-type") for found in headers} == {"image/avif", "image/webp", "image/jpeg"}
    assert len(stored(settings, "unique")) == 2
