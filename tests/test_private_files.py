"""The owner's data is the owner's alone: every data folder 0700 and every data file 0600 (visitors' addresses,
the cost ledger, images, held ones included), under a permissive umask, and data left 0644/0755 by an older
version tightened at start-up. A real `avatargen serve` process and real files."""

from __future__ import annotations

import asyncio
import itertools
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from avatargen.config import load_settings
from avatargen.imaging import to_avatar_webp
from avatargen.storage.files.bucket import open_buckets
from tests.test_workers import server

HELD = {"review": {"held": True, "reasons": []}}


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """umask 000 for this process and the server it starts: whatever is not set explicitly comes out 0666/0777."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def webp(shade: int) -> bytes:
    return to_avatar_webp(Image.new("RGB", (64, 64), (shade, 90, 150)), 64, 60)


async def test_data_is_the_owners_alone(tmp_path: Path, permissive_umask: None) -> None:
    data = tmp_path / "data"
    (data / "unique" / ".review").mkdir(parents=True)  # as an older version left them: 0777 under this umask
    with sqlite3.connect(data / "ledger.sqlite3") as old_ledger:  # made by SQLite itself: 0644
        old_ledger.execute("create table left_by_an_older_version (x)")
    old_ledger.close()
    assert (mode(data), mode(data / "unique" / ".review"), mode(data / "ledger.sqlite3")) == (0o777, 0o777, 0o644)

    service = server(tmp_path)
    settings = load_settings(tmp_path / "config.toml")
    with service:
        buckets = open_buckets(settings)
        buckets["unique"].images.publish(webp(1), {"prompt": "served"})
        async with httpx.AsyncClient(base_url=service.url, timeout=60) as visitors, asyncio.timeout(60):
            for n in itertools.count():  # until the server has seen the unique and a visitor got it (recorded)
                answer = await visitors.get("/avatar", headers={"X-Forwarded-For": f"10.0.{n // 250}.{n % 250}"})
                if answer.headers["x-avatar-kind"] == "unique":
                    break
                await asyncio.sleep(0.1)
        published = buckets["unique"].images.publish(webp(1), {"prompt": "a"})
        held = buckets["fallback"].held.hold(webp(2), {"prompt": "b", **HELD})

        folders = [data, *(path for path in data.rglob("*") if path.is_dir())]
        assert {path.relative_to(tmp_path).as_posix(): mode(path) for path in folders if mode(path) != 0o700} == {}
        assert {".review", ".claimed", ".tmp", ".kept", ".rejected", ".framed"} <= {path.name for path in folders}
        files = [data / "ledger.sqlite3", data / "visitors.sqlite3"]
        files += [path for path in data.glob("*.sqlite3-*")]  # -wal and -shm, while a connection is open
        files += [path for path in data.rglob("*") if path.suffix in (".webp", ".json")]
        assert {published.id, held.id} <= {path.stem for path in files}
        assert {path.relative_to(tmp_path).as_posix(): oct(mode(path)) for path in files
                if mode(path) != 0o600} == {}
