"""The generator on ComfyUI: what only ComfyUI can do for the owner's money (take queued work back)."""

from __future__ import annotations

from pathlib import Path

import httpx

from avatargen.events import EventHub
from avatargen.generator import Generator
from avatargen.gpu import make_provider
from avatargen.simulator.runner import SimulatedGpu
from avatargen.storage.folders import FileLedger, folder_buckets
from tests.support import fast_settings, wait_for_event, wait_until


async def test_an_abort_takes_our_jobs_off_an_always_on_comfyui_at_once(tmp_path: Path) -> None:
    base = fast_settings(tmp_path, sd__backend="comfyui", generator__concurrency=3,
                         gpu__simulated__step_time="50ms", buckets__fallback__max=60)
    async with SimulatedGpu(base.gpu.simulated, backend="comfyui") as gpu:
        gpu.machine.start()  # the owner's own machine: it stays on after the run
        await gpu.machine.wait_for("ready")
        settings = fast_settings(tmp_path, sd__backend="comfyui", generator__concurrency=3,
                                 gpu__provider="always_on", sd__url=gpu.sd_url, buckets__fallback__max=60)
        ledger = await FileLedger.open(settings.server.data_dir / "ledger.sqlite3")
        engine = Generator(settings, folder_buckets(settings), make_provider(settings), ledger, EventHub())
        await engine.start()
        try:
            with engine.events.subscribe() as subscription:
                engine.refill(["fallback"])
                await wait_until(lambda: gpu.sd.queue_length == 3)  # one sampling (a second), two waiting
                engine.abort()
                await wait_for_event(subscription, "state", lambda data: data["state"] == "idle")
            await wait_until(lambda: gpu.sd.queue_length == 0)
            async with httpx.AsyncClient() as http:
                history = (await http.get(f"{gpu.sd_url}/history")).json()
            # the job sampling was interrupted, the two waiting were deleted: none ran for nobody
            assert [entry["status"]["messages"][-1][0] for entry in history.values()] == ["execution_interrupted"]
            assert gpu.sd.completed == [] and engine.last_run is not None
            assert engine.last_run.outcome == "aborted" and gpu.machine.state == "ready"
        finally:
            await engine.close()
            await ledger.aclose()
