"""The generator on ComfyUI: what only ComfyUI can do for the owner's money (take queued work back)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from avatargen.events import EventHub
from avatargen.generator import AvatarGenerator
from avatargen.gpu import make_provider
from avatargen.simulator.runner import SimulatedGpu
from avatargen.storage.files.folder_bucket import folder_buckets
from avatargen.storage.files.ledger import FileLedger
from tests.support import fast_settings, running_generator, wait_for_event, wait_until
from tests.test_generator_runs import run_to_end

LORA_UPSCALE = json.loads((Path(__file__).parent / "workflows" / "lora_upscale_api.json").read_text())


async def test_an_abort_takes_our_jobs_off_an_always_on_comfyui_at_once(tmp_path: Path) -> None:
    base = fast_settings(tmp_path, sd__backend="comfyui", generator__concurrency=3,
                         gpu__simulated__step_time="50ms", buckets__fallback__max=60)
    async with SimulatedGpu(base.gpu.simulated, backend="comfyui") as gpu:
        gpu.machine.start()  # the owner's own machine: it stays on after the run
        await gpu.machine.wait_for("ready")
        settings = fast_settings(tmp_path, sd__backend="comfyui", generator__concurrency=3,
                                 gpu__provider="always_on", sd__url=gpu.sd_url, buckets__fallback__max=60)
        ledger = await FileLedger.open(settings.server.data_dir / "ledger.sqlite3")
        generator = AvatarGenerator(settings, folder_buckets(settings), make_provider(settings), ledger, EventHub())
        await generator.start()
        try:
            with generator.events.subscribe() as subscription:
                generator.refill(["fallback"])
                await wait_until(lambda: gpu.sd.queue_length == 3)  # one sampling (a second), two waiting
                generator.abort()
                await wait_for_event(subscription, "state", lambda data: data["state"] == "idle")
            await wait_until(lambda: gpu.sd.queue_length == 0)
            async with httpx.AsyncClient() as http:
                history = (await http.get(f"{gpu.sd_url}/history")).json()
            # the job sampling was interrupted, the two waiting were deleted: none ran for nobody
            assert [entry["status"]["messages"][-1][0] for entry in history.values()] == ["execution_interrupted"]
            assert gpu.sd.completed == [] and generator.last_run is not None
            assert generator.last_run.outcome == "aborted" and gpu.machine.state == "ready"
        finally:
            await generator.close()
            await ledger.aclose()


def lora_workflow(tmp_path: Path, lora: str) -> str:
    """The LoRA and upscaler graph with `lora` as its first LoRA, in a file beside the config."""
    nodes = json.loads(json.dumps(LORA_UPSCALE))
    nodes["11"]["inputs"]["lora_name"] = lora
    (tmp_path / "lora_api.json").write_text(json.dumps(nodes))
    return "lora_api.json"


async def test_a_lora_comfyui_lacks_fails_the_run_before_the_first_image(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path, sd__backend="comfyui",
                             sd__comfyui__workflow=lora_workflow(tmp_path, "cjs-face-v2.safetensors"))
    async with running_generator(settings) as (generator, gpu):
        run, _ = await run_to_end(generator, ["unique"])
        assert run["outcome"] == "failed" and gpu.machine.state == "off"
        assert run["error"].startswith("the workflow's node 11 (LoraLoader) input 'lora_name' names "
                                       "'cjs-face-v2.safetensors', which is not on ComfyUI (available: "
                                       "'cjs-face.safetensors', 'film-grain.safetensors')")
        assert (run["done"], run["failed"]) == (0, 0)
        assert gpu.sd.completed == [] and gpu.sd.queue_length == 0, "no job was ever queued"


async def test_a_refused_workflow_is_not_asked_again(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path, sd__backend="comfyui", gpu__simulated__faults=["comfyui_validation"],
                             generator__max_consecutive_failures=5, generator__image_retries=4)
    async with running_generator(settings) as (generator, gpu):
        run, _ = await run_to_end(generator, ["unique"])
        assert run["outcome"] == "failed" and gpu.machine.state == "off"
        assert "Value not in list" in run["error"] and "not asked again" in run["error"]
        assert "in a row" not in run["error"]
        # One refusal per request already on its way (concurrency 2), none asked again: 2 images per request
        # refused, of which those whose answer was read before the run stopped count as failed.
        assert gpu.faults.hits("comfyui_validation") <= 2
        assert 0 < run["failed"] <= 2 * gpu.faults.hits("comfyui_validation")


async def test_the_loras_of_the_workflow_are_in_each_images_metadata(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path, sd__backend="comfyui", sd__steps=2,
                             sd__comfyui__workflow=lora_workflow(tmp_path, "cjs-face.safetensors"))
    async with running_generator(settings) as (generator, _gpu):
        run, _ = await run_to_end(generator, ["unique"])
        assert run["outcome"] == "completed", run["error"]
        image_id = generator.buckets["unique"].ids()[0]
        metadata = await generator.buckets["unique"].metadata(image_id)
        assert metadata["loras"] == ["cjs-face.safetensors", "film-grain.safetensors"]
