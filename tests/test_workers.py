"""`server.workers = 2`: one `avatargen serve` with two uvicorn worker processes on one port, as a real
process: claims exactly once under concurrent load, the admin API the same from either worker (status,
refill, the event stream and its ids), the generator taken over when its worker is killed."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import httpx
import psutil
from PIL import Image

from avatargen.api import AdminClient, NewImage, Status
from avatargen.config import load_settings
from avatargen.imaging import to_avatar_webp
from avatargen.storage.files.bucket import open_buckets
from avatargen.testing import Service, Simulator, avatargen_server
from tests.support import write_config

TOKEN = "workers-test-token"


def server(tmp_path: Path, simulator: Simulator | None = None, **overrides: object) -> Service:
    layer: dict[str, object] = {"server.workers": 2, "serving.unique_every": "0s", "serving.unique_burst": 1000,
                                **overrides}
    env = {}
    if simulator is not None:
        layer.update({"gpu.provider": "paperspace", "gpu.paperspace.api_url": simulator.info["api_url"],
                      "gpu.paperspace.api_key_env": "AVATARGEN_TEST_SIM_PAPERSPACE_KEY",
                      "gpu.paperspace.machine_id": simulator.info["machine_id"], "sd.url": simulator.info["sd_url"]})
        env = simulator.env()
    config = write_config(tmp_path, layer)
    return avatargen_server(config, tmp_path / "server.log", token=TOKEN, env=env)


def stock_uniques(tmp_path: Path, count: int) -> set[str]:
    settings = load_settings(tmp_path / "config.toml")
    unique = open_buckets(settings)["unique"]
    return {unique.images.publish(to_avatar_webp(Image.new("RGB", (64, 64), (n, 90, 150)), 64, 60),
                                  {"prompt": str(n)}).id
            for n in range(count)}


async def status(url: str) -> Status:
    async with AdminClient(url, TOKEN) as admin:
        return await admin.status()


async def first_image(url: str) -> NewImage:
    async with AdminClient(url, TOKEN) as admin:
        event = await admin.first_event(lambda event: isinstance(event, NewImage), since="0")
    assert isinstance(event, NewImage)
    return event


async def test_claims_once_and_the_same_admin_api_from_either_worker(tmp_path: Path) -> None:
    service = server(tmp_path)
    stocked = stock_uniques(tmp_path, 30)
    with service:
        async with httpx.AsyncClient(base_url=service.url, timeout=30,
                                     limits=httpx.Limits(max_connections=100)) as client:
            answers = await asyncio.gather(*(client.get("/avatar", headers={"X-Forwarded-For": f"10.0.0.{n}"})
                                             for n in range(200)))
            assert Counter(answer.status_code for answer in answers) == {200: 200}
            served = [answer.headers["x-avatar-id"] for answer in answers
                      if answer.headers["x-avatar-kind"] == "unique"]
            assert len(served) == len(set(served)) == len(stocked) and set(served) == stocked
            # Each of these connections lands on either worker: they all see the one generator.
            statuses = await asyncio.gather(*(status(service.url) for _ in range(10)))
            assert len({status.next_check_at for status in statuses}) == 1
            assert all(each.paused_reason is None for each in statuses)
            async with AdminClient(service.url, TOKEN) as admin, asyncio.timeout(60):
                run = await admin.refill(["fallback"])
                images = [await first_image(service.url) for _ in range(4)]
            assert len({image.image.id for image in images}) == 1  # one history, whichever worker answers
            assert run.targets == {"fallback": 6}
    assert not list(Path(load_settings(tmp_path / "config.toml").buckets.unique.dir).glob("*.webp"))


async def test_the_generator_worker_killed_mid_run_is_taken_over(tmp_path: Path) -> None:
    with Simulator(tmp_path / "simulator.log", boot_delay="300ms", stop_delay="200ms", sd_boot_delay="100ms",
                   step_time="20ms") as simulator, \
            server(tmp_path, simulator, **{"buckets.fallback.max": 400}) as service:
        async with AdminClient(service.url, TOKEN) as admin, asyncio.timeout(60):
            await admin.refill(["fallback"])
            await admin.first_event(lambda event: isinstance(event, NewImage), since="0")
        holder = int(service.log_text().split("the generator runs in another process (pid ")[1].split(")")[0])
        psutil.Process(holder).kill()  # mid-run, the machine on
        async with AdminClient(service.url, TOKEN, timeout=30) as admin, asyncio.timeout(120):
            while (status := await admin.status()).state != "idle" or status.paused_reason is not None \
                    or simulator.machine()["state"] != "off":
                await asyncio.sleep(0.2)  # uvicorn notices the dead worker on its own schedule
        assert "stopping it" in service.log_text()
