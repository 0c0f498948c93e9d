"""`avatargen migrate --to redis` and back, against real folders and a real Redis: every image moved once
under its own id, framed copies and metadata with it, a migration stopped half-way finished by running it
again, and no migration while a server uses either side."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from avatargen.config import Settings, StorageSettings
from avatargen.imaging import placeholder_webp
from avatargen.storage.backend import VISITORS_FILE
from avatargen.storage.files.allowance import Allowance
from avatargen.storage.files.bucket import open_buckets
from avatargen.storage.files.ledger import CostLedger
from avatargen.storage.files.lock import GeneratorLock
from avatargen.storage.framing import unique_copy
from avatargen.storage.redis.allowance import RedisAllowance
from avatargen.storage.redis.buckets import RedisBucket
from avatargen.storage.redis.connection import RedisStorage
from avatargen.storage.redis.lease import RedisLease
from avatargen.storage.redis.ledger import RedisLedger
from avatargen.storage.spend import Entry
from avatargen.testing import RedisServer, avatargen_server, free_port, serve_command
from tests.support import fast_settings, write_config


def migrate(config: Path, to: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "server.cli", "migrate", "--to", to, "--config", str(config)],
                          capture_output=True, text=True, timeout=120)


def folders_content(settings: Settings) -> dict[str, dict[str, tuple[bytes, bytes | None, str]]]:
    """Per bucket: id -> (image, framed copy, prompt), read from the folders."""
    buckets = open_buckets(settings)
    return {name: {image_id: (bucket.images.read(image_id), bucket.images.framed(image_id),
                              bucket.images.metadata(image_id)["prompt"])
                   for image_id in bucket.index.ids()} for name, bucket in buckets.items()}


async def redis_content(url: str) -> dict[str, dict[str, tuple[bytes, bytes | None, str]]]:
    storage = RedisStorage.connect(StorageSettings(backend="redis", url=url, timeout=10.0))
    try:
        content = {}
        for name in ("unique", "fallback"):
            bucket = RedisBucket(storage, name)
            await bucket.refresh()
            content[name] = {image_id: (await bucket.read(image_id), await bucket.framed(image_id),
                                        (await bucket.metadata(image_id))["prompt"]) for image_id in bucket.ids()}
        return content
    finally:
        await storage.aclose()


def stock_folders(settings: Settings) -> None:
    buckets = open_buckets(settings)
    for n in range(5):
        buckets["unique"].images.publish(placeholder_webp(32 + n), {"prompt": f"unique {n}"})
    for n in range(3):
        buckets["fallback"].images.publish(placeholder_webp(40 + n), {"prompt": f"fallback {n}"})
    buckets["fallback"].images.keep(min(buckets["fallback"].index.ids()))  # the owner keeps one for good
    buckets["unique"].held.hold(placeholder_webp(50), {"prompt": "held", "review": {"held": True, "reasons": []}})
    ledger = CostLedger(settings.server.data_dir / "ledger.sqlite3")
    ledger.record([Entry("run-1", 1_000.0, 1_060.0, 0.76)])
    ledger.close_db()


async def test_there_and_back_again(tmp_path: Path, redis_server: RedisServer) -> None:
    config = write_config(tmp_path, {"storage.url": redis_server.url})
    settings = fast_settings(tmp_path, storage__url=redis_server.url)
    stock_folders(settings)
    before = folders_content(settings)
    assert all(framed is not None for _, framed, _ in before["unique"].values())

    folders = open_buckets(settings)
    kept = min(before["fallback"])
    [held] = folders["unique"].held.newest(5)

    done = migrate(config, "redis")
    assert done.returncode == 0, done.stderr
    assert "unique: 5 image(s) moved to Redis, with 1 held for review" in done.stdout
    assert "cost ledger: 1 run(s) copied" in done.stdout
    assert await redis_content(redis_server.url) == before  # same ids, bytes, framed copies, metadata
    assert folders_content(settings) == {"unique": {}, "fallback": {}}
    assert folders["unique"].held.count() == 0 and not folders["fallback"].images.is_kept(kept)
    storage = RedisStorage.connect(StorageSettings(backend="redis", url=redis_server.url, timeout=10.0))
    try:
        assert [entry.run_id for entry in await RedisLedger(storage).entries(0)] == ["run-1"]
        fallback, unique = RedisBucket(storage, "fallback"), RedisBucket(storage, "unique")
        await fallback.refresh()
        await unique.refresh()
        assert fallback.is_kept(kept) and unique.held_count() == 1
        assert await unique.read_held(held.id) == placeholder_webp(50)
    finally:
        await storage.aclose()

    back = migrate(config, "files")
    assert back.returncode == 0, back.stderr
    assert folders_content(settings) == before
    assert await redis_content(redis_server.url) == {"unique": {}, "fallback": {}}
    assert folders["fallback"].images.is_kept(kept)
    assert [record.id for record in folders["unique"].held.newest(5)] == [held.id]
    assert folders["unique"].held.read(held.id) == placeholder_webp(50)


async def test_a_migration_stopped_half_way_is_finished_by_running_it_again(tmp_path: Path,
                                                                            redis_server: RedisServer) -> None:
    config = write_config(tmp_path, {"storage.url": redis_server.url})
    settings = fast_settings(tmp_path, storage__url=redis_server.url)
    stock_folders(settings)
    before = folders_content(settings)
    # Stopped after copying one unique and before removing it from its folder: it is in both places.
    caught = next(iter(before["unique"]))
    storage = RedisStorage.connect(StorageSettings(backend="redis", url=redis_server.url, timeout=10.0))
    try:
        folder = open_buckets(settings)["unique"]
        await RedisBucket(storage, "unique").publish(folder.images.read(caught), folder.images.metadata(caught),
                                                     prepared=folder.images.framed(caught), image_id=caught)
    finally:
        await storage.aclose()
    assert migrate(config, "redis").returncode == 0
    assert await redis_content(redis_server.url) == before  # once each
    assert folders_content(settings) == {"unique": {}, "fallback": {}}


async def test_refused_while_a_server_uses_either_side(tmp_path: Path, redis_server: RedisServer) -> None:
    config = write_config(tmp_path, {"storage.url": redis_server.url})
    settings = fast_settings(tmp_path, storage__url=redis_server.url)
    stock_folders(settings)
    # A server on the folders that does not run the generator (another one holds its lock) still counts.
    lock = GeneratorLock(settings.server.data_dir)
    assert lock.acquire()
    try:
        with avatargen_server(config, tmp_path / "server.log", token="t"):
            refused = migrate(config, "redis")
    finally:
        lock.release()
    assert refused.returncode == 1 and "stop every avatargen serve first" in refused.stderr
    storage = RedisStorage.connect(StorageSettings(backend="redis", url=redis_server.url, timeout=10.0))
    try:
        lease = RedisLease(storage, ttl=60)
        assert await lease.acquire()
        refused = migrate(config, "redis")
        await lease.release()
    finally:
        await storage.aclose()
    assert refused.returncode == 1 and "uses the Redis" in refused.stderr
    assert sum(map(len, folders_content(settings).values())) == 8  # nothing moved


def test_no_server_starts_while_a_migration_runs(tmp_path: Path, redis_server: RedisServer) -> None:
    config = write_config(tmp_path, {"storage.url": redis_server.url})
    settings = fast_settings(tmp_path, storage__url=redis_server.url)
    stock_folders(settings)
    assert redis_server.process is not None
    in_use = settings.server.data_dir / "in-use.lock"
    redis_server.process.send_signal(signal.SIGSTOP)  # the migration waits for Redis once it holds the folder
    running = subprocess.Popen([sys.executable, "-m", "server.cli", "migrate", "--to", "redis", "--config",
                                str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (in_use.exists() and in_use.read_text().strip() == str(running.pid)):  # its pid: it holds it
            assert running.poll() is None and time.monotonic() < deadline, running.communicate()
            time.sleep(0.02)
        os.kill(running.pid, signal.SIGSTOP)  # caught in the middle, for as long as the server takes to start
        redis_server.process.send_signal(signal.SIGCONT)
        serve = subprocess.run(serve_command(config, free_port()), capture_output=True, text=True, timeout=120)
    finally:
        redis_server.process.send_signal(signal.SIGCONT)
        os.kill(running.pid, signal.SIGCONT)
        _, errors = running.communicate(timeout=120)
    assert serve.returncode == 1, serve.stderr
    assert f"a migration (avatargen migrate, pid {running.pid}) is moving the buckets" in serve.stderr
    # Stopped for longer than its patience with Redis, the migration may have given up cleanly: run it again.
    assert running.returncode == 0 or "nothing was lost" in errors, errors
    assert migrate(config, "redis").returncode == 0
    assert redis_count(redis_server.url) == 8 and folders_content(settings) == {"unique": {}, "fallback": {}}


def redis_count(url: str) -> int:
    content = asyncio.run(redis_content(url))
    return sum(map(len, content.values()))


async def test_the_unique_allowance_is_carried_both_ways(tmp_path: Path, redis_server: RedisServer) -> None:
    config = write_config(tmp_path, {"storage.url": redis_server.url})
    settings = fast_settings(tmp_path, storage__url=redis_server.url)
    stock_folders(settings)
    allowance = Allowance(settings.server.data_dir / VISITORS_FILE, settings.serving)
    try:
        assert allowance.grant("10.0.0.1")  # today's unique for this visitor: one token spent
        before = allowance.state()
    finally:
        allowance.close()
    assert migrate(config, "redis").returncode == 0
    storage = RedisStorage.connect(StorageSettings(backend="redis", url=redis_server.url, timeout=10.0))
    try:
        shared = RedisAllowance(storage, settings.serving, RedisBucket(storage, "unique"))
        there = await shared.state()
        assert there is not None and set(there.visitors) == {"10.0.0.1"}
        assert there.tokens == before.tokens == settings.serving.unique_burst - 1
        assert 0 < await storage.client.pttl(storage.key("visitor", "10.0.0.1")) <= \
            settings.serving.unique_per_visitor * 1000  # it goes when the visitor's window ends
        back = migrate(config, "files")
        assert back.returncode == 0, back.stderr
        left = [key async for key in storage.client.scan_iter(match=f"{storage.prefix}:*")]
        assert not [key for key in left if key.split(b":")[1] in (b"visitor", b"allowance", b"ledger")], left
    finally:
        await storage.aclose()
    allowance = Allowance(settings.server.data_dir / VISITORS_FILE, settings.serving)
    try:
        assert not allowance.grant("10.0.0.1")  # still inside the window, after both switches
        assert allowance.state().tokens == pytest.approx(before.tokens, abs=0.01)
    finally:
        allowance.close()


async def test_a_visitor_who_got_a_unique_gets_no_second_one_after_the_switch(tmp_path: Path,
                                                                              redis_server: RedisServer) -> None:
    config = write_config(tmp_path, {"storage.url": redis_server.url})
    stock_folders(fast_settings(tmp_path, storage__url=redis_server.url))

    def kind(url: str, visitor: str) -> str:
        return httpx.get(f"{url}/avatar", headers={"X-Forwarded-For": visitor}).headers["x-avatar-kind"]

    with avatargen_server(config, tmp_path / "files.log", token="t") as server:
        assert kind(server.url, "10.0.0.7") == "unique"
    assert migrate(config, "redis").returncode == 0
    switched = write_config(tmp_path, {"storage.url": redis_server.url, "storage.backend": "redis"})
    with avatargen_server(switched, tmp_path / "redis.log", token="t") as server:
        assert kind(server.url, "10.0.0.7") == "fallback"  # today's unique was had, on the folders
        assert kind(server.url, "10.0.0.8") == "unique"


def test_no_redis_named(tmp_path: Path) -> None:
    refused = migrate(write_config(tmp_path), "redis")
    assert refused.returncode == 1 and "[storage] url must name the Redis" in refused.stderr


def test_framed_copies_are_the_visitors_framing(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path)
    stock_folders(settings)
    unique = open_buckets(settings)["unique"]
    image_id = unique.index.ids()[0]
    assert unique.images.framed(image_id) == unique_copy(settings)(unique.images.read(image_id))
