"""The placeholder (both buckets empty) carries Last-Modified like every /avatar answer, without a
revalidation ever keeping it for a day."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support import fast_settings, serving


async def test_the_placeholder_has_last_modified_and_its_revalidation_gets_an_image_not_304(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path, serving__cache_max_age="24h")
    async with serving(settings) as (url, _app), httpx.AsyncClient(base_url=url) as client:
        first = await client.get("/avatar")
        assert first.status_code == 200 and first.headers["x-avatar-kind"] == "placeholder"
        assert first.headers["cache-control"] == "private, max-age=60"
        last_modified = first.headers["last-modified"]
        assert last_modified.endswith(" GMT")
        again = await client.get("/avatar", headers={"If-Modified-Since": last_modified})
        assert again.status_code == 200 and again.content == first.content
