"""`avatargen backup` of a real running server, and `avatargen restore` into a new installation that a real
server then starts from: the same images, held images, keep marks, spend and visitor allowances."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import httpx
from PIL import Image

from avatargen.api import AdminClient, Status
from avatargen.config import load_settings
from avatargen.imaging import to_avatar_webp
from avatargen.storage.files.bucket import open_buckets
from avatargen.testing import avatargen_server
from tests.support import write_config

TOKEN = "backup-test-token"
VISITOR = {"X-Forwarded-For": "198.51.100.7"}


def avatargen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "server.cli", *args], capture_output=True, text=True, timeout=120)


def installation(folder: Path) -> Path:
    folder.mkdir()
    return write_config(folder, {"serving.unique_burst": 6, "serving.unique_every": "0s"})


async def idle(admin: AdminClient) -> Status:
    while (status := await admin.status()).state != "idle" or status.run is not None:
        await asyncio.sleep(0.1)
    return status


async def test_a_backup_of_a_running_server_restores_into_a_new_installation(tmp_path: Path) -> None:
    first = installation(tmp_path / "first")
    buckets = open_buckets(load_settings(first))
    for n in range(3):
        buckets["unique"].images.publish(to_avatar_webp(Image.new("RGB", (64, 64), (n, 90, 150)), 64, 60),
                                         {"prompt": str(n)})
    buckets["fallback"].held.hold(to_avatar_webp(Image.new("RGB", (64, 64), (200, 9, 9)), 64, 60), {"prompt": "held"})
    backup = tmp_path / "backup"
    with avatargen_server(first, tmp_path / "first.log", token=TOKEN) as service:
        async with AdminClient(service.url, TOKEN, timeout=30) as admin, asyncio.timeout(120):
            await admin.refill(["fallback"])
            await idle(admin)
            kept = (await admin.images("fallback", 10))[0]
            await admin.keep_image("fallback", kept.id)
            async with httpx.AsyncClient(base_url=service.url) as visitor:
                assert (await visitor.get("/avatar", headers=VISITOR)).headers["x-avatar-kind"] == "unique"
            before = await admin.status()
            answer = avatargen("backup", str(backup), "--config", str(first))  # the server keeps running
            assert answer.returncode == 0, answer.stderr
    assert (backup / "config.toml").read_text() == first.read_text()
    assert before.cost.today > 0 and before.buckets["fallback"].held == 1

    second = installation(tmp_path / "second")
    answer = avatargen("restore", str(backup), "--config", str(second))
    assert answer.returncode == 0, answer.stderr
    with avatargen_server(second, tmp_path / "second.log", token=TOKEN) as service:
        async with AdminClient(service.url, TOKEN, timeout=30) as admin, asyncio.timeout(60):
            after = await admin.status()
            images = {image.id: image for image in await admin.images("fallback", 100)}
        async with httpx.AsyncClient(base_url=service.url) as visitor:
            # The visitor had their unique: the restored allowance gives them a fallback.
            assert (await visitor.get("/avatar", headers=VISITOR)).headers["x-avatar-kind"] == "fallback"
        for name in ("unique", "fallback"):
            assert (after.buckets[name].count, after.buckets[name].held) == \
                (before.buckets[name].count, before.buckets[name].held)
        assert after.cost.today == before.cost.today
        assert images[kept.id].kept
        refused = avatargen("restore", str(backup), "--config", str(second))
        assert refused.returncode == 1 and "stop every avatargen serve" in refused.stderr
    refused = avatargen("restore", str(backup), "--config", str(second))
    assert refused.returncode == 1 and "--replace" in refused.stderr
    assert avatargen("restore", str(backup), "--replace", "--config", str(second)).returncode == 0


def test_backup_refuses_a_used_folder_and_redis(tmp_path: Path) -> None:
    config = installation(tmp_path / "site")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "something").touch()
    answer = avatargen("backup", str(tmp_path / "used"), "--config", str(config))
    assert answer.returncode == 1 and "not an empty folder" in answer.stderr
    (tmp_path / "redis").mkdir()
    redis = write_config(tmp_path / "redis", {"storage.backend": "redis", "storage.url": "redis://127.0.0.1:1/0"})
    answer = avatargen("backup", str(tmp_path / "out"), "--config", str(redis))
    assert answer.returncode == 1 and "AOF" in answer.stderr
    assert not (tmp_path / "out").exists()
    answer = avatargen("restore", str(tmp_path / "site"), "--config", str(config))
    assert answer.returncode == 1 and "no manifest.json" in answer.stderr
