"""The generator with each renting provider's own traps, against the simulated GPU speaking that provider's API,
and `check-config` asking the provider's API about the configured machine."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from avatargen.events import Subscription
from avatargen.generator import Generator, NothingToDo
from avatargen.simulator import SimulatedGpu
from tests.simhelpers import sim_settings
from tests.support import fast_settings, running_generator, wait_for_event, write_config

ROOT = Path(__file__).resolve().parent.parent
KEY_ENV = "AVATARGEN_TEST_GPU_KEY"


async def run_to_end(generator: Generator) -> dict:
    with generator.events.subscribe() as subscription:
        generator.refill(["unique"])
        await until_idle(subscription)
    assert generator.last_run is not None
    return generator.last_run.to_dict()


async def until_idle(subscription: Subscription) -> None:
    await wait_for_event(subscription, "state", lambda data: data["state"] == "idle" and data["last_run"])


async def test_a_pod_resumed_without_its_gpu_is_stopped_before_any_image(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path, gpu__simulated__api="runpod", gpu__simulated__faults=["zero_gpu"],
                             gpu__ready_timeout="10m")
    async with running_generator(settings) as (generator, gpu):
        run = await run_to_end(generator)
        assert run["outcome"] == "failed" and "without its GPU" in run["error"] and "network volume" in run["error"]
        assert run["done"] == 0 and gpu.sd.completed == []  # nothing was generated on a pod without its GPU
        assert run["billed_seconds"] < 5  # stopped at once, not at the 10-minute ready_timeout
        await gpu.machine.wait_for("off")


async def test_a_terminated_pod_pauses_the_generator_at_start_up(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path, gpu__simulated__api="runpod", buckets__unique__min=2)

    async def terminate(gpu: SimulatedGpu) -> None:
        gpu.machine.terminate()

    async with running_generator(settings, before_start=terminate) as (generator, gpu):
        status = generator.status()
        assert "TERMINATED" in (status["paused_reason"] or "") and "gpu.runpod.pod_id" in status["paused_reason"]
        assert generator.auto_check() is None  # not a run that fails again and again
        with pytest.raises(NothingToDo, match="cannot run"):
            generator.refill()
        assert gpu.machine.billed_seconds == 0


async def test_a_pod_terminated_during_a_run_ends_it_and_no_run_starts_again(tmp_path: Path) -> None:
    # Ten requests of two: with two in flight when the pod goes, the second may still be answered (the run
    # would rightly complete were it the last), so enough are left that must fail.
    settings = fast_settings(tmp_path, gpu__simulated__api="runpod", gpu__simulated__faults=["external_terminate"],
                             generator__max_consecutive_failures=2, buckets__unique__max=20)
    async with running_generator(settings) as (generator, gpu):
        first = await run_to_end(generator)
        assert first["outcome"] == "failed" and gpu.machine.state == "terminated"
        second = await run_to_end(generator)  # the owner tries again: the start finds the pod gone for good
        assert second["outcome"] == "failed" and "TERMINATED" in second["error"]
        assert generator.machine.cannot_run is not None and generator.auto_check() is None


@pytest.mark.parametrize(("api", "source"), [("paperspace", "config"), ("runpod", "provider")])
async def test_the_status_shows_the_rate_runs_are_billed_at_and_where_it_comes_from(
        tmp_path: Path, api: str, source: str) -> None:
    settings = fast_settings(tmp_path, gpu__simulated__api=api)
    async with running_generator(settings) as (generator, _gpu):
        run = await run_to_end(generator)
        cost = generator.status()["cost"]
    assert (cost["hourly_rate"], cost["rate_source"]) == (3600.0, source)
    assert run["cost"] == pytest.approx(run["billed_seconds"], abs=0.2)  # 3600 an hour: 1 a second


def check_config(config: Path, key: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "server.cli", "check-config", "--config", str(config)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
                          env={**os.environ, KEY_ENV: key})


async def test_check_config_asks_runpod_about_the_pod_and_warns_about_the_proxy(tmp_path: Path) -> None:
    async with SimulatedGpu(sim_settings(api="runpod")) as sim:
        config = write_config(tmp_path, {
            "gpu.provider": "runpod", "gpu.runpod.api_url": sim.api_url, "gpu.runpod.api_key_env": KEY_ENV,
            "gpu.runpod.pod_id": sim.machine_id, "sd.url": "https://{pod_id}-7860.proxy.runpod.net",
            "sd.steps": 50, "sd.batch_size": 8, "sd.width": 768, "sd.height": 768})
        fine = await asyncio.to_thread(check_config, config, sim.api_key)
        sim.machine.terminate()
        gone = await asyncio.to_thread(check_config, config, sim.api_key)
    assert fine.returncode == 0, fine.stderr
    assert "cuts every request at 100 s" in fine.stderr and "may take about 180 s" in fine.stderr
    assert "50 GB volume while stopped" in fine.stderr
    assert gone.returncode == 2 and "Traceback" not in gone.stderr
    line = next(number for number, text in enumerate(config.read_text().splitlines(), 1) if "pod_id" in text)
    assert f"{config}:{line}: gpu.runpod.pod_id: pod {sim.machine_id} is TERMINATED" in gone.stderr


async def test_check_config_warns_when_the_paperspace_backstop_is_off_or_too_short(tmp_path: Path) -> None:
    async with SimulatedGpu(sim_settings(api="paperspace")) as sim:
        sim.machine.auto_shutdown_hours = None  # switched off in the console
        overrides = {"gpu.provider": "paperspace", "gpu.paperspace.api_url": sim.api_url,
                     "gpu.paperspace.api_key_env": KEY_ENV, "gpu.paperspace.machine_id": sim.machine_id}
        off = await asyncio.to_thread(check_config, write_config(tmp_path, overrides), sim.api_key)
        short = await asyncio.to_thread(check_config, write_config(tmp_path, {
            **overrides, "gpu.paperspace.auto_shutdown": "1h", "generator.max_run_duration": "2h"}), sim.api_key)
        hours = sim.machine.auto_shutdown_hours
    assert off.returncode == 0 and "auto-shutdown is off on machine" in off.stderr
    assert short.returncode == 0 and "shorter than the longest run" in short.stderr
    assert "auto-shutdown is off" not in short.stderr and hours == 1  # the setting turned the backstop on
