"""Providers as the refill engine drives them, against the simulated machine over loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from avatargen.config import ConfigError, GpuSettings, PaperspaceSettings, Secret, Settings
from avatargen.gpu import (
    AlwaysOnProvider,
    MachineError,
    MachineTimeout,
    PaperspaceClient,
    PaperspaceProvider,
    make_provider,
)
from avatargen.simulator import SimulatedGpu
from tests.simhelpers import sim_settings


@pytest.fixture
async def sim() -> AsyncIterator[SimulatedGpu]:
    async with SimulatedGpu(sim_settings()) as gpu:
        yield gpu


def provider_for(sim: SimulatedGpu, *, stop_timeout: float = 5.0, sd_url: str | None = None,
                 max_retries: int = 6) -> PaperspaceProvider:
    client = PaperspaceClient(sim.api_url, Secret(sim.api_key), max_retries=max_retries, backoff=0.01)
    return PaperspaceProvider(client, sim.machine_id, sd_url=sd_url or sim.sd_url, poll_every=0.02,
                              stop_timeout=stop_timeout, name="simulated")


def settings_with(provider: str, **paperspace: str) -> Settings:
    gpu = GpuSettings(provider=provider, poll_every=0.02, paperspace=PaperspaceSettings(**paperspace))
    return replace(Settings(), gpu=gpu)


async def test_a_full_cycle_waits_for_ready_not_serviceready_and_confirms_off(sim: SimulatedGpu) -> None:
    provider = provider_for(sim)
    states: list[str] = []
    try:
        assert await provider.machine_state() == "off"
        await provider.start()
        await provider.wait_ready(5, states.append)
        assert sim.machine.state == "ready"
        assert states == ["starting", "serviceready", "ready"]
        states.clear()
        await provider.stop(states.append)
    finally:
        await provider.aclose()
    assert sim.machine.state == "off"
    assert states == ["stopping", "off"]
    assert 0.4 <= sim.machine.billed_seconds < 1.0


async def test_a_start_that_fails_ends_the_wait_at_once_with_the_reason(sim: SimulatedGpu) -> None:
    sim.set_faults(["start_error"])
    provider = provider_for(sim)
    started = time.monotonic()
    async with asyncio.timeout(5):
        await provider.start()
        with pytest.raises(MachineError) as failure:
            await provider.wait_ready(30, lambda state: None)
    await provider.aclose()
    assert not isinstance(failure.value, MachineTimeout)
    assert "could not start" in str(failure.value) and "capacity" in str(failure.value)
    assert time.monotonic() - started < 1  # the event said so after 0.09 s, far from the 30 s timeout


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
    assert sim.machine.state == "off"


async def test_a_machine_stopped_by_someone_else_while_booting_ends_the_wait(sim: SimulatedGpu) -> None:
    provider = provider_for(sim)
    await provider.start()
    sim.machine.stop()
    with pytest.raises(MachineError, match="cancelled or someone stopped it"):
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
    assert sim.machine.state == "off"


async def test_stop_gives_up_after_the_stop_timeout_and_says_so(sim: SimulatedGpu) -> None:
    provider = provider_for(sim, max_retries=0, stop_timeout=0.1)
    await provider.start()
    sim.set_faults(["stop_500"])
    with pytest.raises(MachineError, match="could not confirm that machine pssim42 stopped") as failure:
        await provider.stop(lambda state: None)
    await provider.aclose()
    assert "500 INTERNAL_SERVER_ERROR" in str(failure.value)
    assert "stop it by hand" in str(failure.value)


async def test_stopping_an_off_machine_is_harmless(sim: SimulatedGpu) -> None:
    provider = provider_for(sim)
    states: list[str] = []
    await provider.stop(states.append)
    await provider.aclose()
    assert states == ["off"]


async def test_api_failures_become_machine_errors(sim: SimulatedGpu) -> None:
    client = PaperspaceClient(sim.api_url, Secret("wrong-key-123"), backoff=0.01)
    provider = PaperspaceProvider(client, sim.machine_id, sd_url=sim.sd_url, poll_every=0.02, stop_timeout=1)
    with pytest.raises(MachineError, match="401 UNAUTHORIZED"):
        await provider.start()
    with pytest.raises(MachineError, match="cannot read machine"):
        await provider.machine_state()
    assert "wrong-key-123" not in repr(provider)
    await provider.aclose()


async def test_sd_url_may_use_the_machine_public_address(sim: SimulatedGpu) -> None:
    port = sim.sd_url.rsplit(":", 1)[1]
    provider = provider_for(sim, sd_url=f"http://{{public_ip}}:{port}")
    with pytest.raises(MachineError, match="no public address"):
        provider.sd_url()
    await provider.start()
    await provider.wait_ready(5, lambda state: None)
    assert provider.sd_url() == sim.sd_url
    await provider.stop(lambda state: None)
    await provider.aclose()


async def test_always_on_is_ready_costs_nothing_and_is_never_stopped() -> None:
    provider = AlwaysOnProvider("http://gpu.example:7860")
    states: list[str] = []
    await provider.start()
    await provider.wait_ready(1, states.append)
    await provider.stop(states.append)
    assert (provider.name, provider.bills, provider.sd_url()) == ("always_on", False, "http://gpu.example:7860")
    assert await provider.machine_state() == "ready"
    assert states == ["ready"]
    await provider.aclose()


async def test_make_provider_picks_by_gpu_provider(sim: SimulatedGpu, monkeypatch: pytest.MonkeyPatch) -> None:
    always_on = make_provider(settings_with("always_on"))
    assert isinstance(always_on, AlwaysOnProvider)
    assert always_on.sd_url() == Settings().sd.url

    simulated = sim.provider(settings_with("simulated").gpu)
    assert (simulated.name, simulated.bills, simulated.sd_url()) == ("simulated", True, sim.sd_url)
    assert await simulated.machine_state() == "off"
    await simulated.aclose()
    with pytest.raises(ValueError, match=r"SimulatedGpu\.provider"):
        make_provider(settings_with("simulated"))

    monkeypatch.setenv("TEST_PAPERSPACE_KEY", "key-from-env")
    paperspace = make_provider(settings_with("paperspace", api_key_env="TEST_PAPERSPACE_KEY", machine_id="psx"))
    assert isinstance(paperspace, PaperspaceProvider)
    assert (paperspace.name, paperspace.bills) == ("paperspace", True)
    assert "key-from-env" not in repr(paperspace)
    await paperspace.aclose()


def test_make_provider_needs_the_paperspace_key_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_PAPERSPACE_KEY", raising=False)
    with pytest.raises(ConfigError) as failure:
        make_provider(settings_with("paperspace", api_key_env="TEST_PAPERSPACE_KEY", machine_id="psx"))
    assert failure.value.key == "gpu.paperspace.api_key_env"
    assert "TEST_PAPERSPACE_KEY" in str(failure.value)
