"""`avatargen serve` with `[storage] backend = "redis"` and Redis unreachable at start-up: a real server
process starts all the same, answers visitors with the placeholder, and starts the generator once a real
redis-server answers on that port; `check-config` warns that Redis does not answer, within a short bound."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import httpx

from avatargen.api import AdminClient, StateChange
from avatargen.api.client import AdminError
from avatargen.testing import RedisServer, avatargen_server
from tests.support import write_config

TOKEN = "redis-down-test-token"


async def test_serve_starts_without_redis_and_takes_the_generator_once_it_answers(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis")  # its port chosen, nothing listening there yet
    config = write_config(tmp_path, {"storage.backend": "redis", "storage.url": redis.url,
                                     "buckets.fallback.max": 4})
    with avatargen_server(config, tmp_path / "server.log", token=TOKEN) as server:
        try:
            async with httpx.AsyncClient(timeout=30) as client:
                answer = await client.get(f"{server.url}/avatar")
                assert answer.status_code == 200 and answer.headers["x-avatar-kind"] == "placeholder"
                # The refill cannot be forwarded to a generator: the 503 says why, as this process learned it.
                answer = await client.post(f"{server.url}/admin/api/refill", json={},
                                           headers={"Authorization": f"Bearer {TOKEN}"})
                assert answer.status_code == 503
                assert "cannot pass the request to the generator's replica" in answer.json()["error"]
                await asyncio.to_thread(redis.start)
                async with AdminClient(server.url, TOKEN, timeout=30) as admin, asyncio.timeout(120):
                    while True:  # until then the status answers 503: the generator is not running anywhere
                        try:
                            status = await admin.status()
                            break
                        except AdminError:
                            await asyncio.sleep(0.5)
                    assert status.state == "idle"
                    async with admin.subscribe() as events:
                        run = await admin.refill(["fallback"])
                        async for _, event in events:
                            if isinstance(event, StateChange) and event.state == "idle" and event.last_run \
                                    and event.last_run.run.id == run.id:
                                break
                    assert isinstance(event, StateChange) and event.last_run is not None
                    assert event.last_run.outcome == "completed" and event.last_run.run.done == 4
                answer = await client.get(f"{server.url}/avatar")
                assert answer.headers["x-avatar-kind"] == "fallback"
        finally:
            redis.stop()
    log = server.log_text()
    assert "Traceback" not in log
    assert "holds the generator lease" in log


def test_check_config_warns_that_redis_does_not_answer(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis")
    config = write_config(tmp_path, {"storage.backend": "redis", "storage.url": redis.url})
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "server.cli", "check-config", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < 30  # the server's own Redis timeout bounds the try (0.5 s here)
    assert done.returncode == 0, done.stderr  # serve would start: a warning, as for a cloud API that does not answer
    assert f"warning: Redis at {redis.url} cannot answer a ping" in done.stderr
    assert "starts the generator once Redis answers" in done.stderr
