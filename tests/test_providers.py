"""Providers as the generator drives them, against the simulated machine over loopback, speaking Paperspace's
API and RunPod's (every test that is not about one vendor runs for both)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpx
import pytest

from avatargen.config import ConfigError, GpuSettings, PaperspaceSettings, RunPodSettings, Secret, Settings
from avatargen.gpu import (
    AlwaysOnProvider,
    MachineError,
    MachineTimeout,
    MachineUnusable,
    PaperspaceProvider,
    Provider,
    RunPodProvider,
    api_provider,
    make_provider,
)
from avatargen.simulator import SimulatedGpu
from tests.simhelpers import sim_settings

APIS = ("paperspace", "runpod")
GPU = GpuSettings(poll_every=0.02, stop_timeout=5.0, hourly_cost=0.76)
# The states each API lets a client see (a busy machine's polling may miss a short one): RunPod has no
# serviceready, and a stop it accepted reads EXITED at once.
BOOT = {"paperspace": ["starting", "serviceready", "ready"], "runpod": ["starting", "ready"]}
HALT = {"paperspace": ["stopping", "off"], "runpod": ["off"]}
ADDRESS = {"paperspace": "http://{public_ip}:%s", "runpod": "http://{public_ip}:{port:7860}"}


@pytest.fixture(params=APIS)
async def sim(request: pytest.FixtureRequest) -> AsyncIterator[SimulatedGpu]:
    async with SimulatedGpu(sim_settings(api=request.param)) as gpu:
        yield gpu


def provider_for(sim: SimulatedGpu, *, stop_timeout: float = 5.0, sd_url: str | None = None,
                 max_retries: int = 6, poll_every: float = GPU.poll_every) -> Provider:
    return sim.provider(replace(GPU, stop_timeout=stop_timeout, poll_every=poll_every), sd_url=sd_url,
                        max_retries=max_retries, backoff=0.01)


def label(sim: SimulatedGpu) -> str:
    return f"{'pod' if sim.api == 'runpod' else 'machine'} {sim.machine_id}"


def settings_with(provider: str, **machine: Any) -> Settings:
    gpu = GpuSettings(provider=provider, poll_every=0.02)
    if provider == "runpod":
        gpu = replace(gpu, runpod=RunPodSettings(**machine))
    elif machine:
        gpu = replace(gpu, paperspace=PaperspaceSettings(**machine))
    return replace(Settings(), gpu=gpu)


async def test_a_full_cycle_waits_for_ready_and_confirms_off(sim: SimulatedGpu) -> None:
    provider = provider_for(sim)
    states: list[str] = []
    try:
        assert await provider.machine_state() == "off"
        await provider.start()
        await provider.wait_ready(5, states.append)
        assert sim.machine.state == "ready" if sim.api == "paperspace" else sim.machine.on  # a pod: once it runs
        assert states[0] == "starting" and states[-1] == "ready" and set(states) <= set(BOOT[sim.api])
        states.clear()
        await provider.stop(states.append)
    finally:
        await provider.aclose()
    await sim.machine.wait_for("off")
    assert states == HALT[sim.api]
    assert 0.3 <= sim.machine.billed_seconds < 1.0  # the boot, and the stop (at once for a pod)


async def test_a_start_that_fails_ends_the_wait_at_once_with_the_reason(sim: SimulatedGpu) -> None:
    sim.set_faults(["start_error"])
    provider = provider_for(sim)
    started = time.monotonic()
    async with asyncio.timeout(5):
        with pytest.raises(MachineError) as failure:
            await provider.start()  # RunPod refuses at once; Paperspace accepts, then its event fails
            await provider.wait_ready(30, lambda state: None)
    await provider.aclose()
    assert not isinstance(failure.value, MachineTimeout | MachineUnusable)
    assert ("capacity" if sim.api == "paperspace" else "not enough free GPUs") in str(failure.value)
    assert time.monotonic() - started < 5  # far from the 30 s timeout
    assert sim.machine.state == "off"


async def test_a_machine_that_never_gets_ready_times_out_and_still_stops(sim: SimulatedGpu) -> None:
    sim.set_faults(["never_ready"])
    provider = provider_for(sim)
    started = time.monotonic()
    await provider.start()
    with pytest.raises(MachineTimeout, match=r"not ready after 0s \(still starting\)"):
        await provider.wait_ready(0.4, lambda state: None)
    assert 0.4 <= time.monotonic() - started < 1.0
    await provider.stop(lambda state: None)
    await provider.aclose()
    await sim.machine.wait_for("off")


async def test_a_machine_stopped_by_someone_else_while_booting_ends_the_wait(sim: SimulatedGpu) -> None:
    provider = provider_for(sim)
    await provider.start()
    sim.machine.stop()
    with pytest.raises(MachineError, match="someone stopped it"):
        await provider.wait_ready(5, lambda state: None)
    await provider.aclose()


async def test_stop_is_retried_until_the_machine_is_confirmed_off(sim: SimulatedGpu) -> None:
    provider = provider_for(sim, max_retries=0)  # every failed stop request reaches the provider
    await provider.start()
    await provider.wait_ready(5, lambda state: None)
    sim.set_faults(["stop_500"])
    states: list[str] = []
    await provider.stop(states.append)
    await provider.aclose()
    assert sim.faults.hits("stop_500") == 4  # three refusals, then accepted
    assert states[-1] == "off"
    await sim.machine.wait_for("off")


async def test_stop_gives_up_after_the_stop_timeout_and_says_so(sim: SimulatedGpu) -> None:
    # The first stop request fails at once; the next waits out a backoff of at least half a poll period.
    provider = provider_for(sim, max_retries=0, stop_timeout=0.6, poll_every=2.0)
    await provider.start()
    sim.set_faults(["stop_500"])
    with pytest.raises(MachineError, match=f"could not confirm that {label(sim)} stopped") as failure:
        await provider.stop(lambda state: None)
    await provider.aclose()
    assert "500" in str(failure.value) and "stop it by hand" in str(failure.value)


async def test_stopping_an_off_machine_is_harmless(sim: SimulatedGpu) -> None:
    provider = provider_for(sim)
    states: list[str] = []
    await provider.stop(states.append)
    await provider.aclose()
    assert states == ["off"]


async def test_api_failures_become_machine_errors_without_the_key(sim: SimulatedGpu) -> None:
    provider = api_provider(GPU, sim.api, api_url=sim.api_url, api_key=Secret("wrong-key-123"),
                            machine_id=sim.machine_id, sd_url=sim.sd_url, backoff=0.01)
    with pytest.raises(MachineUnusable, match="401 UNAUTHORIZED"):
        await provider.check()
    with pytest.raises(MachineError, match="401 UNAUTHORIZED"):
        await provider.machine_state()
    assert "wrong-key-123" not in repr(provider)
    await provider.aclose()


async def test_a_wrong_machine_id_is_unusable_at_once_not_retried(sim: SimulatedGpu) -> None:
    provider = api_provider(GPU, sim.api, api_url=sim.api_url, api_key=Secret(sim.api_key), machine_id="nope42",
                            sd_url=sim.sd_url, backoff=30)
    started = time.monotonic()
    with pytest.raises(MachineUnusable, match="404") as failure:
        await provider.check()
    await provider.aclose()
    assert time.monotonic() - started < 5  # not retried: a first backoff alone would be 15 s or more
    assert ("gpu.runpod.pod_id" if sim.api == "runpod" else "gpu.paperspace.machine_id") in str(failure.value)


async def test_sd_url_may_use_the_machine_address(sim: SimulatedGpu) -> None:
    port = sim.sd_url.rsplit(":", 1)[1]
    template = ADDRESS[sim.api].replace("%s", port)
    provider = provider_for(sim, sd_url=template)
    with pytest.raises(MachineError, match="address"):
        provider.sd_url()
    await provider.start()
    await provider.wait_ready(5, lambda state: None)
    assert provider.sd_url() == sim.sd_url
    await provider.stop(lambda state: None)
    await provider.aclose()


async def test_runpod_zero_gpu_resume_fails_the_wait_at_once_with_the_owner_s_fix() -> None:
    async with SimulatedGpu(sim_settings(api="runpod", faults=("zero_gpu",))) as sim:
        provider = provider_for(sim)
        await provider.start()
        started = time.monotonic()
        with pytest.raises(MachineError) as failure:
            await provider.wait_ready(30, lambda state: None)
        assert time.monotonic() - started < 5  # far from the 30 s timeout
        await provider.stop(lambda state: None)
        await provider.aclose()
        await sim.machine.wait_for("off")
        assert sim.sd.completed == []
    message = str(failure.value)
    assert "without its GPU" in message and "network volume" in message and "gpu.runpod.pod_id" in message


async def test_runpod_terminated_pod_is_unusable_and_stopping_it_is_harmless() -> None:
    async with SimulatedGpu(sim_settings(api="runpod")) as sim:
        provider = provider_for(sim)
        sim.machine.terminate()
        for attempt in (provider.check, provider.start):
            with pytest.raises(MachineUnusable, match="TERMINATED: it can never start again"):
                await attempt()
        states: list[str] = []
        await provider.stop(states.append)  # nothing to stop: a terminated pod bills nothing
        await provider.aclose()
    assert states == ["terminated"]


async def test_runpod_rate_comes_from_the_pod_and_the_volume_is_a_note() -> None:
    async with SimulatedGpu(sim_settings(api="runpod"), hourly_price=0.69) as sim:
        provider = provider_for(sim)
        assert (provider.hourly_rate().amount, provider.hourly_rate().source) == (0.76, "config")  # not asked yet
        notes = await provider.check()
        assert (provider.hourly_rate().amount, provider.hourly_rate().source) == (0.69, "provider")
        await provider.aclose()
    assert len(notes) == 1 and "50 GB volume while stopped" in notes[0] and "10.00 a month" in notes[0]


async def test_paperspace_rate_is_the_configured_one() -> None:
    async with SimulatedGpu(sim_settings(api="paperspace"), hourly_price=0.69) as sim:
        provider = provider_for(sim)
        assert await provider.check() == []  # its auto-shutdown is on
        assert (provider.hourly_rate().amount, provider.hourly_rate().source) == (0.76, "config")
        await provider.aclose()


async def test_paperspace_auto_shutdown_off_is_a_note_and_the_setting_turns_it_on() -> None:
    async with SimulatedGpu(sim_settings(api="paperspace")) as sim, httpx.AsyncClient(
            base_url=sim.api_url, headers={"Authorization": f"Bearer {sim.api_key}"}) as owner:
        await owner.put(f"/machines/{sim.machine_id}", json={"autoShutdownEnabled": False})  # from the console
        provider = provider_for(sim)
        notes = await provider.check()
        assert len(notes) == 1 and "auto-shutdown is off" in notes[0] and "gpu.paperspace.auto_shutdown" in notes[0]
        await provider.aclose()
        backstop = replace(GPU, paperspace=PaperspaceSettings(auto_shutdown=3 * 3600))
        provider = sim.provider(backstop)
        assert await provider.check() == []
        await provider.aclose()
        machine = (await owner.get(f"/machines/{sim.machine_id}")).json()
    assert (machine["autoShutdownEnabled"], machine["autoShutdownTimeout"]) == (True, 3)


async def test_always_on_is_ready_costs_nothing_and_is_never_stopped() -> None:
    provider = AlwaysOnProvider("http://gpu.example:7860")
    states: list[str] = []
    assert await provider.check() == []
    await provider.start()
    await provider.wait_ready(1, states.append)
    await provider.stop(states.append)
    assert (provider.name, provider.bills, provider.sd_url()) == ("always_on", False, "http://gpu.example:7860")
    assert provider.hourly_rate().amount == 0
    assert await provider.machine_state() == "ready"
    assert states == ["ready"]
    await provider.aclose()


async def test_make_provider_picks_by_gpu_provider(sim: SimulatedGpu, monkeypatch: pytest.MonkeyPatch) -> None:
    always_on = make_provider(settings_with("always_on"))
    assert isinstance(always_on, AlwaysOnProvider)
    assert always_on.sd_url() == Settings().sd.url

    simulated = sim.provider(settings_with("simulated").gpu)
    assert (simulated.name, simulated.bills) == ("simulated", True)
    assert await simulated.machine_state() == "off"
    await simulated.aclose()
    with pytest.raises(ValueError, match=r"SimulatedGpu\.provider"):
        make_provider(settings_with("simulated"))

    monkeypatch.setenv("TEST_GPU_KEY", "key-from-env")
    for name, kind, machine in (("paperspace", PaperspaceProvider, {"machine_id": "psx"}),
                                ("runpod", RunPodProvider, {"pod_id": "podx"})):
        provider = make_provider(settings_with(name, api_key_env="TEST_GPU_KEY", **machine))
        assert isinstance(provider, kind)
        assert (provider.name, provider.bills) == (name, True)
        assert "key-from-env" not in repr(provider)
        await provider.aclose()


@pytest.mark.parametrize(("provider", "machine"), [("paperspace", {"machine_id": "psx"}), ("runpod", {"pod_id": "p"})])
def test_make_provider_needs_the_key_in_the_environment(monkeypatch: pytest.MonkeyPatch, provider: str,
                                                        machine: dict[str, str]) -> None:
    monkeypatch.delenv("TEST_GPU_KEY", raising=False)
    with pytest.raises(ConfigError) as failure:
        make_provider(settings_with(provider, api_key_env="TEST_GPU_KEY", **machine))
    assert failure.value.key == f"gpu.{provider}.api_key_env"
    assert "TEST_GPU_KEY" in str(failure.value)
