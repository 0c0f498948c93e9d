"""A real browser on the demo page: the avatar renders, and the browser's cache keeps the visitor's unique.

Chromium (Debian's, at /usr/bin/chromium) runs headless with a fresh profile against the real app under
uvicorn. The per-visitor window is off here, so only the browser's own caching stands between a reload
and a second unique being claimed.
"""

from __future__ import annotations

from pathlib import Path

from playwright.async_api import Page, async_playwright

from tests.support import fast_settings, serving
from tests.test_visitor import stock, stored

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]


async def rendered_avatar(page: Page) -> dict[str, object]:
    """Wait until the avatar image has loaded; its decoded size and the URL it was loaded from."""
    avatar = page.locator("#avatar")
    await avatar.wait_for()
    await page.wait_for_function("document.getElementById('avatar').complete")
    return await avatar.evaluate("img => ({width: img.naturalWidth, height: img.naturalHeight, src: img.src})")


async def test_demo_page_renders_and_reloads_keep_the_cached_unique(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path, serving__unique_per_visitor=0, serving__unique_every=0,
                             serving__unique_burst=10)
    ids = stock(settings, unique=5, fallback=3)
    avatar_requests: list[str] = []
    async with serving(settings) as (url, _), async_playwright() as playwright:
        browser = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = await browser.new_page()
            page.on("response", lambda response: avatar_requests.append(response.headers.get("x-avatar-kind", "-"))
                    if response.url.endswith("/avatar") and response.request.method == "GET" else None)
            await page.goto(url + "/")
            size = settings.generator.image_size
            assert await rendered_avatar(page) == {"width": size, "height": size, "src": url + "/avatar"}
            assert len(stored(settings, "unique")) == 4

            await page.reload()
            assert (await rendered_avatar(page))["width"] == size
            await page.goto(url + "/healthz")
            await page.go_back()
            assert (await rendered_avatar(page))["width"] == size
            await page.goto(url + "/")
            assert (await rendered_avatar(page))["width"] == size
        finally:
            await browser.close()
    assert len(stored(settings, "unique")) == 4, "the browser reused its cached unique"
    assert stored(settings, "unique") < set(ids["unique"])
    assert avatar_requests.count("unique") == 1
